"""The train stage: Caffe's solver driven from Python, the same loop for every backend.

    train(solver_path, backend=..., weights=..., resume=...)   what `caffe train` does, plus a
        progress bar, a Caffe-style log file and a clean stop on Ctrl-C / SIGTERM (loop.py)
    train_run(plan, ...)   a run folder: nets written, weights resolved, run.json, log.txt,
        loss.png, snapshots, final.caffemodel (run.py; tools/train.py calls it)
    parse_log / plot_history          log.txt (ours or Caffe's) -> series -> loss.png

Caffe's own rules that the loop follows (lr policies, the nets a solver builds, the weights-copy
plan, loss and output bookkeeping) live in `dlbhc_caffe.rules`, shared with both engines; the
names below re-export the ones this stage's callers use.

A .solverstate holds the iteration, the lr schedule's step and the momentum history, not a data
cursor: a resumed Data layer reads its database from the first record again.
"""
from ..proto import filter_net
from ..rules.outputs import loss_outputs, net_outputs
from ..rules.schedule import learning_rate
from ..rules.solver import snapshot_paths, solver_nets
from ..rules.weights import WeightPlan, WeightsError, copy_weights, param_shapes, plan_weight_copy
from .log import CaffeLog, History, parse_log
from .loop import DATA_CURSOR_NOTE, TrainError, TrainResult, train
from .plot import plot_history
from .run import exit_code, resolve_weights, resume_state, snapshots_in, train_run

__all__ = [
    "train", "train_run", "TrainResult", "TrainError", "DATA_CURSOR_NOTE", "snapshot_paths",
    "exit_code", "resolve_weights", "resume_state", "snapshots_in", "copy_weights",
    "plan_weight_copy", "param_shapes", "WeightPlan", "WeightsError", "learning_rate",
    "CaffeLog", "History", "parse_log", "plot_history", "filter_net", "loss_outputs",
    "net_outputs", "solver_nets",
]
