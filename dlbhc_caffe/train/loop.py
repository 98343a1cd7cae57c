"""The training loop shared by every backend: Caffe's solver, driven from Python.

`train(solver_path, ...)` does what `caffe train --solver S [-weights W | -snapshot STATE]` does,
with the engine of the chosen backend doing every forward, backward and update (its own
`Solver::Step`, one iteration at a time), and Python doing what the `caffe` tool's loop does around
it: testing every test_interval, displaying the loss and learning rate every `display` iterations
in Caffe's words, snapshotting every `snapshot` iterations and at the end. In addition it shows a
progress bar with an ETA, writes the log with glog's prefix to a file, and stops cleanly on
Ctrl-C or SIGTERM: the iteration in progress completes, a snapshot is written, and the result says
which signal stopped it (a second Ctrl-C aborts at once, without a snapshot).

The engine gets a copy of the solver that never tests, displays or snapshots by itself (the loop
does those); everything else -- the net, lr policy, momentum,
weight decay, solver type, snapshot_prefix -- is the file's.

Resuming (`resume=STATE`) is Caffe's Solver::Restore: the iteration, the learning-rate schedule's
step and the momentum history come back from the .solverstate, the weights from the caffemodel it
names. A .solverstate holds no data cursor, so a resumed Data layer starts again from the first
record of its database.
"""
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import backends, proto
from ..errors import DlbhcError
from ..fileio import atomic_path
from ..proto import filter_net, pb
from ..rules.outputs import fmt, loss_outputs, net_outputs, output_lines
from ..rules.schedule import learning_rate
from ..rules.solver import SolverError, check_history, check_snapshot_prefix, check_solver, \
    due, final_snapshot_due, learnable_shapes, snapshot_paths, solver_nets, test_due
from ..rules.weights import copy_weights, param_shapes, plan_weight_copy
from .log import CaffeLog, History, console
from .snapshots import finish_snapshot, localize_state, staging_prefix
from ..rules.validate import check_training_data

NEVER = 2 ** 31 - 1  # an iteration count the engine never reaches
DATA_CURSOR_NOTE = ("a .solverstate holds no data cursor: the resumed Data layer reads its "
                    "database from the first record again")


class TrainError(DlbhcError):
    """A solver, snapshot or weights file that cannot be trained with; names the file."""


@dataclass
class TrainResult:
    """What a call of `train` did."""
    iteration: int                                  # the solver's iteration when it returned
    max_iter: int
    final_model: Path = None                        # written when training completed
    snapshots: list = field(default_factory=list)   # [(caffemodel, solverstate)] written
    interrupted: str = None                         # "SIGINT" / "SIGTERM" when stopped early
    weights: object = None                          # the WeightPlan of `weights`, if any
    resumed_from: Path = None
    history: History = field(default_factory=History)
    seconds: float = 0.0
    backend: str = ""

    @property
    def completed(self):
        return self.interrupted is None and self.iteration >= self.max_iter

    @property
    def last_snapshot(self):
        return self.snapshots[-1] if self.snapshots else None


def engine_solver(solver_param, seed=None, gpu=None):
    """The SolverParameter given to the engine: the loop, not the engine, tests, displays and
    snapshots (display and snapshot 0, no test before NEVER, no snapshot after training)."""
    engine = pb.SolverParameter()
    engine.CopyFrom(solver_param)
    # Caffe requires test_interval > 0 when there are test nets: the largest int32 never comes
    # (and test_initialization false skips iteration 0).
    engine.test_interval = NEVER
    engine.test_initialization = False
    engine.display = 0
    engine.snapshot = 0
    engine.snapshot_after_train = False
    if solver_param.snapshot_format != pb.SolverParameter.HDF5 and solver_param.snapshot_prefix:
        engine.snapshot_prefix = str(staging_prefix(solver_param.snapshot_prefix))
    if seed is not None:
        engine.random_seed = int(seed)
    engine.solver_mode = pb.SolverParameter.GPU if gpu is not None else pb.SolverParameter.CPU
    if gpu is not None:
        engine.device_id = int(gpu)
    return engine


def check_solverstate(path, train_param, net, solver_type="SGD"):
    """Raise TrainError unless .solverstate `path` can restore `net` (pycaffe-shaped, built from
    NetParameter `train_param`) in a solver of `solver_type`: its learned_net exists and fits,
    its history matches the net's learnable blobs (rules.solver.check_history). Returns the
    SolverState."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: no such solverstate")
    if path.suffix == ".h5":
        return None  # HDF5 states: Caffe checks them itself
    try:
        state = proto.read_solverstate(path)
    except proto.ProtoError as err:
        raise TrainError(str(err)) from None
    if state.learned_net:
        learned = Path(state.learned_net)
        if not learned.is_file():
            raise TrainError(f"{path}: its learned_net {learned} does not exist (Caffe reads the "
                             f"path written in the solverstate; keep the snapshot pair together "
                             f"where it was written)")
        try:
            plan_weight_copy(param_shapes(net), learned)
        except ValueError as err:
            raise TrainError(f"{path}: {err}") from None
    try:
        check_history(state.history, learnable_shapes(train_param, net.params), solver_type,
                      path)
    except SolverError as err:
        raise TrainError(str(err)) from None
    return state


class _StopRequest:
    """SIGINT/SIGTERM -> a flag the loop polls; a second SIGINT aborts at once."""

    def __init__(self, log, enabled=True):
        self.log = log
        self.signal = None
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signal is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.signal = name
        self.log.info(f"{name} received: stopping after this iteration with a snapshot "
                      f"(Ctrl-C again aborts without one)")

    def __enter__(self):
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _share_weights(test_net, train_net):
    """Make a test net use the training net's current weights (Caffe's Solver::Test does
    ShareTrainedLayersWith before testing)."""
    if hasattr(test_net, "share_with"):
        test_net.share_with(train_net)
        return
    for name, blobs in test_net.params.items():
        source = train_net.params.get(name) if hasattr(train_net.params, "get") else None
        if source is None:
            continue
        for target, blob in zip(blobs, source):
            target.data[...] = blob.data


def _net_loss(net, losses):
    return float(sum(weight * float(np.sum(net.blobs[top].data)) for top, weight in losses.items()))


class _Loop:
    def __init__(self, solver, solver_param, nets, log, stop, result, bar):
        self.solver = solver
        self.param = solver_param
        self.train_param = nets[0]
        self.test_params = nets[1:]
        self.train_losses = loss_outputs(self.train_param)
        self.train_outputs = net_outputs(self.train_param)
        self.log = log
        self.stop = stop
        self.result = result
        self.bar = bar
        self.window = []
        self.current_step = 0
        self.snapshot_iter = None

    # -- Caffe's Solver::TestAll
    def test_all(self):
        it = self.solver.iter
        for i, (test_net, test_param) in enumerate(zip(self.solver.test_nets, self.test_params)):
            self.log.info(f"Iteration {it}, Testing net (#{i})")
            _share_weights(test_net, self.solver.net)
            outputs = net_outputs(test_param)
            losses = loss_outputs(test_param)
            sums = None
            for _ in range(self.param.test_iter[i]):
                if self.stop.signal:
                    return False
                test_net.forward()
                values = [np.array(test_net.blobs[name].data, dtype=np.float64).ravel()
                          for name in outputs]
                sums = values if sums is None else [s + v for s, v in zip(sums, values)]
            means = {name: total / self.param.test_iter[i]
                     for name, total in zip(outputs, sums or [])}
            for line in output_lines("Test", means, losses):
                self.log.info(line)
            for name, mean in means.items():
                if mean.size == 1:
                    self.result.history.test.setdefault(name, []).append((it, float(mean[0])))
        return True

    def snapshot(self):
        it = self.solver.iter
        if self.snapshot_iter == it:
            return
        model, state = snapshot_paths(self.param, it)
        kind = "HDF5" if model.suffix == ".h5" else "binary proto"
        self.log.info(f"Snapshotting to {kind} file {model}")
        self.solver.snapshot()
        if model.suffix != ".h5":  # written under a hidden name, renamed when whole
            finish_snapshot(self.param, it)
        self.log.info(f"Snapshotting solver state to {kind} file {state}")
        self.snapshot_iter = it
        self.result.snapshots.append((model, state))

    def display_due(self, it):
        return due(self.param.display, it)

    def test_due(self, it):
        return bool(self.solver.test_nets) and test_due(self.param, it)

    def step(self):
        """One iteration of Caffe's Solver::Step, the engine doing forward/backward/update."""
        it = self.solver.iter
        if self.test_due(it) and not self.test_all():
            return False
        rate, self.current_step = learning_rate(self.param, it, self.current_step)
        self.solver.step(1)
        loss = _net_loss(self.solver.net, self.train_losses)
        self.window.append(loss)
        del self.window[:-max(1, self.param.average_loss)]
        smoothed = float(np.mean(self.window))
        if self.display_due(it):
            self.log.info(f"Iteration {it}, loss = {fmt(smoothed)}")
            self.result.history.train_loss.append((it, smoothed))
            values = {name: np.asarray(self.solver.net.blobs[name].data).ravel()
                      for name in self.train_outputs}
            for line in output_lines("Train", values, self.train_losses):
                self.log.info(line)
            self.log.info(f"Iteration {it}, lr = {fmt(rate)}")
            self.result.history.lr.append((it, rate))
        self.bar.set_postfix(loss=f"{smoothed:.4g}", lr=f"{rate:.3g}", refresh=False)
        self.bar.update(1)
        if due(self.param.snapshot, self.solver.iter):
            self.snapshot()
        return True

    def finish(self):
        """What Caffe's Solver::Solve does after the last step."""
        it = self.solver.iter
        if final_snapshot_due(self.param, it):
            self.snapshot()
        if self.display_due(it):
            self.solver.net.forward()
            loss = _net_loss(self.solver.net, self.train_losses)
            self.log.info(f"Iteration {it}, loss = {fmt(loss)}")
            self.result.history.train_loss.append((it, loss))
        if due(self.param.test_interval, it):
            self.test_all()
        self.log.info("Optimization Done.")


def _progress(total, initial, enabled):
    from tqdm import tqdm  # noqa: PLC0415

    # disable=None: tqdm shows the bar on a terminal only (no \r floods in CI logs).
    return tqdm(total=total, initial=initial, unit="iter", desc="train",
                disable=None if enabled else True,
                dynamic_ncols=True, mininterval=0.5, smoothing=0.1)


def train(solver_path, *, backend="auto", weights=None, resume=None, final_model=None,
          log_path=None, seed=None, gpu=None, progress=True, verbose=False, echo=console,
          handle_signals=True):
    """Train the solver at `solver_path` with `backend`; returns a TrainResult.

    backend: "auto", "caffe", "torch", or a backend module (dlbhc_caffe.backends.get(...)).
    weights: a caffemodel copied into the nets by layer name before training, as
        `caffe train -weights` does (a layer of another shape is an error naming it; the net's
        layers the caffemodel lacks keep their fillers and are listed in the log).
    resume: a .solverstate to continue from (iteration, lr schedule, momentum history and the
        weights it names); not together with `weights`. Note: the data cursor is not restored.
    final_model: where to save the trained weights when training completes.
    log_path: a file the Caffe-style log is appended to (glog prefix); `echo` gets each line
        (None: silent).
    seed: the solver's random_seed (fillers, dropout, data shuffling of crops/mirrors).
    gpu: a device id for GPU mode; None trains on the CPU.
    handle_signals: stop cleanly on SIGINT/SIGTERM with a snapshot (main thread only).

    Paths inside the solver and net files are read against the working directory, as Caffe reads
    them.
    """
    started = time.time()
    if weights is not None and resume is not None:  # arguments first, before an engine loads
        raise TrainError("give weights to fine-tune or a solverstate to resume, not both "
                         "(as `caffe train` requires)")
    engine = backends.get(backend) if isinstance(backend, str) else backend
    if verbose and hasattr(engine, "set_verbose"):
        engine.set_verbose(True)
    solver_path = Path(solver_path)
    if not solver_path.is_file():
        raise TrainError(f"{solver_path}: no such solver file")
    if weights is not None and not Path(weights).is_file():
        raise TrainError(f"{weights}: no such weights file")
    try:
        solver_param = proto.read_solver(solver_path)
    except proto.ProtoError as err:
        raise TrainError(f"{solver_path}: {err}") from None
    if not solver_param.max_iter:
        raise TrainError(f"{solver_path}: max_iter is not set")
    if not solver_param.snapshot_prefix:
        raise TrainError(f"{solver_path}: snapshot_prefix is not set")
    try:  # what real Caffe would abort on, checked before it sees the file
        check_solver(solver_param)
        check_snapshot_prefix(solver_param)
        solver_nets_ = solver_nets(solver_param)
    except SolverError as err:
        raise TrainError(f"{solver_path}: {err}") from None
    for phase, net, source in solver_nets_:
        where = f"{source} ({'TRAIN' if phase == pb.TRAIN else 'TEST'})"
        try:
            if hasattr(engine, "validate_net"):
                engine.validate_net(net, net.state, source=where)
            # every record, before either engine reads one (Caffe checks none but the first)
            check_training_data(filter_net(net, net.state), where)
        except ValueError as err:
            raise TrainError(str(err)) from None
    nets = [n.filtered() for n in solver_nets_]

    if hasattr(engine, "check_device"):
        engine.check_device(gpu)
    result = TrainResult(iteration=0, max_iter=solver_param.max_iter,
                         backend=getattr(engine, "name", str(backend)))
    log = CaffeLog(log_path, echo=None).open()
    try:
        if gpu is None:
            engine.set_mode_cpu()
        else:
            engine.set_mode_gpu()
            engine.set_device(int(gpu))
        if seed is not None:
            engine.set_random_seed(int(seed))
        fd, tmp = tempfile.mkstemp(prefix=".engine-solver-", suffix=".prototxt")
        os.close(fd)
        try:
            proto.write_text(engine_solver(solver_param, seed, gpu), tmp)
            solver = engine.get_solver(tmp)
        finally:
            os.unlink(tmp)

        bar_total = solver_param.max_iter
        if resume is not None:
            try:
                local = localize_state(resume)
            except proto.ProtoError as err:
                raise TrainError(str(err)) from None
            try:
                state = check_solverstate(local, nets[0], solver.net, solver_param.type)
                solver.restore(str(local))
            finally:
                if local != Path(resume):
                    local.unlink()
            result.resumed_from = Path(resume)
        bar = _progress(bar_total, solver.iter, progress)
        # Console lines go through tqdm.write while the bar is shown, so they do not tear it.
        log.echo = (lambda line: bar.write(line)) if progress and echo is console else echo
        log.info(f"Solver: {solver_path} (backend {result.backend}"
                 f"{', GPU ' + str(gpu) if gpu is not None else ', CPU'}"
                 f"{', seed ' + str(seed) if seed is not None else ''})")
        loop = _Loop(solver, solver_param, nets, log, None, result, bar)
        if resume is not None:
            log.info(f"Restoring previous solver status from {resume}: iteration {solver.iter}")
            log.info(f"Note: {DATA_CURSOR_NOTE}")
            loop.current_step = state.current_step if state is not None else 0
        if weights is not None:
            try:
                result.weights = copy_weights([solver.net] + list(solver.test_nets), weights)
            except ValueError as err:
                raise TrainError(str(err)) from None
            for line in result.weights.summary():
                log.info(line)
        log.info(f"Solving {nets[0].name or solver_path}")
        log.info(f"Learning Rate Policy: {solver_param.lr_policy or 'fixed'}")
        with _StopRequest(log, enabled=handle_signals) as stop:
            loop.stop = stop
            while solver.iter < solver_param.max_iter and not stop.signal:
                if not loop.step():
                    break
            if stop.signal:
                loop.snapshot()
                _, state_path = snapshot_paths(solver_param, solver.iter)
                log.info(f"Stopped by {stop.signal} at iteration {solver.iter}; resume with "
                         f"--resume {state_path}")
                result.interrupted = stop.signal
            else:
                loop.finish()
        bar.close()
        result.iteration = solver.iter
        if result.completed and final_model is not None:
            final_model = Path(final_model)
            with atomic_path(final_model) as tmp_model:
                solver.net.save(str(tmp_model))
            result.final_model = final_model
            log.info(f"Final model: {final_model}")
    finally:
        log.close()
    result.seconds = time.time() - started
    return result
