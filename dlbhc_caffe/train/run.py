"""A training run in its folder: the nets written, weights resolved, training, and the record.

`train_run(plan, ...)` is what `tools/train.py` does without --dry-run: it writes the run
folder's train_val / deploy / solver (dlbhc_caffe.runs), resolves the pretrained weights
(`--weights caffenet|PATH|none`), trains with `loop.train`, and keeps the run's record:

    log.txt    Caffe-style log (glog prefix), appended to by a resumed run
    run.json   command line, versions, git commit, dataset manifest, bits, classes, net, backend,
               mean, crop, seed, weights copied, final model, snapshots, status
    loss.png   training loss and test outputs against iterations
    final.caffemodel, <prefix>_iter_N.caffemodel / .solverstate

`--resume` continues a run from a .solverstate (by default its latest) with the folder's own
solver.prototxt and nets, as written when the run started.
"""
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy
from google import protobuf

from .. import backends, proto, runs
from ..datasets.manifest import MANIFEST
from ..datasets.weights import caffenet_paths
from ..fileio import output_lock
from ..runs import DEPLOY, FINAL_MODEL, LOG, LOSS_PLOT, RUN_JSON, SOLVER, TRAIN_VAL
from .log import console, parse_log
from .snapshots import localize_solver, snapshot_problem
from .loop import DATA_CURSOR_NOTE, TrainError, train
from .plot import plot_history

WEIGHT_CHOICES = ("caffenet", "none")
FORMAT_VERSION = 1
_SNAPSHOT = re.compile(r"_iter_(\d+)\.solverstate$")


def default_weights(net):
    """--weights by default: CaffeNet's for KevinNet (the paper fine-tunes them), none for the
    small net (trained from scratch)."""
    return "caffenet" if net == "kevinnet" else "none"


def resolve_weights(choice, net="kevinnet", root="data"):
    """The caffemodel `choice` names ("caffenet", "none", a path; None: the net's default), or
    None for no pretrained weights. Raises TrainError saying how to get a missing file."""
    choice = default_weights(net) if choice is None else str(choice)
    if choice.lower() == "none":
        return None
    if choice.lower() == "caffenet":
        path = caffenet_paths(root)["weights"]
        if not path.is_file():
            raise TrainError(f"--weights caffenet: {path} does not exist; get it with "
                             f"`python tools/prepare.py --weights caffenet --root {root}` (or "
                             f"--weights none to train from the fillers)")
        return path.resolve()
    path = Path(choice)
    if not path.is_file():
        raise TrainError(f"--weights {choice}: no such caffemodel (give caffenet, none, or a "
                         f"path)")
    return path.resolve()


def snapshots_in(folder):
    """[(iteration, caffemodel, solverstate)] of the snapshots in a run folder, by iteration."""
    found = []
    for state in Path(folder).glob("*_iter_*.solverstate"):
        match = _SNAPSHOT.search(state.name)
        if match:
            model = state.with_name(state.name[:-len(".solverstate")] + ".caffemodel")
            found.append((int(match.group(1)), model if model.is_file() else None, state))
    return sorted(found, key=lambda item: item[0])


def resume_state(folder, resume, log=print):
    """The .solverstate to resume from: `resume` as a path, or (True / "latest") the folder's
    newest snapshot that loads (an older one, said through `log`, when the newest is damaged).
    Raises TrainError when there is none."""
    if resume in (True, "latest", "", None):
        found = snapshots_in(folder)
        if not found:
            raise TrainError(f"{folder}: no snapshot to resume from (*_iter_N.solverstate); "
                             f"start the run again with --force")
        skipped = []
        for _, _, state in reversed(found):
            problem = snapshot_problem(state)
            if problem is None:
                if skipped:
                    log(f"resuming from {state.name}, the newest snapshot that loads "
                        f"(skipped: {'; '.join(skipped)})")
                return state
            skipped.append(f"{state.name}: {problem}")
        raise TrainError(f"{folder}: no snapshot loads ({'; '.join(skipped)}); start the run "
                         f"again with --force")
    path = Path(resume)
    if not path.is_file():
        raise TrainError(f"--resume {resume}: no such solverstate")
    return path.resolve()


def git_commit(repo=None):
    """{"commit": sha, "dirty": bool} of the repository holding this package (None: not a git
    checkout, or git missing)."""
    repo = Path(repo) if repo else Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def versions(engine):
    """Versions of what a run depends on."""
    try:
        ours = metadata.version("dlbhc-caffe")
    except metadata.PackageNotFoundError:
        ours = None
    out = {"python": platform.python_version(), "dlbhc_caffe": ours, "numpy": numpy.__version__,
           "protobuf": protobuf.__version__, "platform": platform.platform()}
    out[getattr(engine, "name", "backend")] = getattr(engine, "__version__", "unknown")
    return out


def _manifest(spec):
    path = Path(spec.train_db).parent / MANIFEST
    if not path.is_file():
        return None, None
    try:
        return json.loads(path.read_text()), str(path)
    except (OSError, ValueError):
        return None, str(path)


def _write_json(path, record):
    proto.atomic_write_bytes(path, (json.dumps(record, indent=2, default=str) + "\n").encode())


def _solver_summary(solver_path):
    solver = proto.read_solver(solver_path)
    fields = ("base_lr", "lr_policy", "gamma", "stepsize", "max_iter", "momentum",
              "weight_decay", "test_interval", "snapshot", "display", "random_seed")
    out = {name: getattr(solver, name) for name in fields if solver.HasField(name)}
    out["test_iter"] = list(solver.test_iter)
    return out


def _new_record(plan, engine, weights, gpu, command):
    spec = plan.spec
    manifest, manifest_path = _manifest(spec)
    files = plan.files
    return {
        "format_version": FORMAT_VERSION,
        "status": "running",
        "command": command,
        "command_line": shlex.join(command),
        "cwd": os.getcwd(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(engine),
        "git": git_commit(),
        "dataset": spec.dataset,
        "dataset_manifest_path": manifest_path,
        "dataset_manifest": manifest,
        "net": spec.net,
        "net_name": spec.name,
        "bits": spec.bits,
        "classes": spec.classes,
        "backend": engine.name,
        "device": f"GPU {gpu}" if gpu is not None else "CPU",
        "record_shape": list(spec.record_shape),
        "crop": spec.crop,
        "mirror": spec.mirror,
        "mean": {"file": spec.mean_file, "values": list(spec.mean_value or []) or None,
                 "scale": spec.scale if spec.scale is not None else 1.0},
        "batch_size": spec.batch_size,
        "seed": plan.solver.random_seed,
        "solver_settings": _solver_summary(files[SOLVER]),
        "weights": {"source": str(weights) if weights else None},
        "train_val": str(files[TRAIN_VAL]),
        "deploy": str(files[DEPLOY]),
        "solver": str(files[SOLVER]),
        "log": str(plan.folder / LOG),
        "loss_plot": str(plan.folder / LOSS_PLOT),
        "final_model": None,
        "snapshots": [],
        "resumes": [],
        "notes": [DATA_CURSOR_NOTE],
    }


def exit_code(result):
    """The process exit status for a TrainResult: 0 when training completed, 128 + the signal
    number when a signal stopped it (130 SIGINT, 143 SIGTERM)."""
    if result.interrupted is None:
        return 0
    return 128 + int(getattr(signal, result.interrupted, signal.SIGINT))


def train_run(plan, **options):
    """Train the run `plan` in its folder (see `_train_run` for the options), holding the run
    folder's write lock: a second process training into the same folder is refused."""
    with output_lock(plan.folder, "run folder"):
        return _train_run(plan, **options)


def _train_run(plan, *, weights=None, backend="auto", gpu=None, resume=None, force=False,
               root="data", argv=None, progress=True, verbose=False, echo=console):
    """Train the run `plan` (dlbhc_caffe.runs.RunPlan) in its folder; returns the TrainResult.

    weights: "caffenet", "none", a caffemodel path, or None for the net's default (caffenet for
        KevinNet, none for the small net); resolved against `root` (the data folder).
    resume: None to start the run (the folder must be new, or `force` to start it over); a
        .solverstate path, or True for the folder's latest snapshot, to continue it with the
        folder's own nets and solver (data is read again from the first record: a .solverstate
        holds no data cursor).
    gpu: device id, or None for the CPU. argv: the command line recorded in run.json.
    """
    engine = backends.get(backend) if isinstance(backend, str) else backend
    if hasattr(engine, "check_device"):
        engine.check_device(gpu)  # before anything is written
    folder = Path(plan.folder)
    command = list(argv) if argv is not None else list(sys.argv)
    record_path = folder / RUN_JSON
    if resume:
        runs.check_run_folder(folder, resume=True)
        if weights not in (None, "none"):
            raise TrainError("--resume continues from the snapshot's weights; drop --weights")
        state = resume_state(folder, resume, log=echo or (lambda *_: None))
        localize_solver(folder, log=echo or (lambda *_: None))
        weights_path = None
        record = runs.read_record(folder) if record_path.is_file() else \
            _new_record(plan, engine, None, gpu, command)
        record["status"] = "running"
        record.setdefault("resumes", []).append({"command": command, "from": str(state),
                                  "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "backend": engine.name, "git": git_commit()})
    else:
        weights_path = resolve_weights(weights, plan.spec.net, root)
        state = None
        runs.write_net_files(plan, force=force)
        record = _new_record(plan, engine, weights_path, gpu, command)
    _write_json(record_path, record)

    solver_path = folder / SOLVER
    seed = record.get("seed")
    result = None
    try:
        result = train(solver_path, backend=engine, weights=weights_path, resume=state,
                       final_model=folder / FINAL_MODEL, log_path=folder / LOG, seed=seed,
                       gpu=gpu, progress=progress, verbose=verbose, echo=echo)
    except BaseException as err:
        record["status"] = "failed"
        record["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        record["snapshots"] = [{"iteration": it, "caffemodel": str(model) if model else None,
                                "solverstate": str(state_path)}
                               for it, model, state_path in snapshots_in(folder)]
        log_path = folder / LOG
        if log_path.is_file():
            history = parse_log(log_path)
            if history.train_loss or history.test:
                plot_history(history, folder / LOSS_PLOT,
                             title=f"{plan.spec.name}, {plan.spec.bits} bits")
            record["test"] = {name: values[-1][1] for name, values in history.test.items()}
            record["train_loss"] = history.train_loss[-1][1] if history.train_loss else None
        if result is not None:
            record["iteration"] = result.iteration
            earlier = record.get("seconds") or 0 if resume else 0
            record["seconds"] = round(earlier + result.seconds, 1)
            if result.weights is not None:
                record["weights"].update(copied=result.weights.copied, kept=result.weights.kept,
                                         ignored=result.weights.ignored)
            if result.final_model is not None:
                record["final_model"] = str(result.final_model)
            if result.interrupted:
                record["status"] = "interrupted"
                last = result.last_snapshot
                if last is not None:
                    record["resume_command"] = resume_command(command, last[1])
                    if echo is not None:
                        echo(f"Continue with: {record['resume_command']}")
            else:
                record["status"] = "completed"
        _write_json(record_path, record)
    return result


def resume_command(command, state, cwd=None):
    """A shell command line that continues the run: `command` (an argv whose first item is the
    script) with --resume STATE instead of --force / --resume X / --weights X (a resumed run
    takes the snapshot's weights), run by this Python from `cwd` (default: here), so it works
    as printed from anywhere."""
    out, args = [], list(command)
    while args:
        arg = args.pop(0)
        if arg in ("--resume", "--weights") and args and not args[0].startswith("-"):
            args.pop(0)
        if arg in ("--force", "--resume", "--weights") or arg.startswith(("--resume=",
                                                                           "--weights=")):
            continue
        out.append(arg)
    if out and out[0].endswith(".py"):
        out.insert(0, sys.executable)
    return (f"cd {shlex.quote(str(cwd or os.getcwd()))} && "
            + shlex.join(out + ["--resume", str(state)]))
