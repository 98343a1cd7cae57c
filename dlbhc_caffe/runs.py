"""Run folders: runs/<dataset>_<net>_<bits>/ with the nets, the solver, snapshots and logs.

This module is the one owner of a run folder's layout: every other module takes the file names
below from here, and reads a run through `read_record` / `run_settings` / `is_finished`.
A run folder holds train_val.prototxt, deploy.prototxt, solver.prototxt (absolute paths inside,
since Caffe resolves them against its working directory), the snapshots
<prefix>_iter_N.caffemodel / .solverstate, final.caffemodel, log.txt, run.json and loss.png.
An existing folder is refused unless the user asks to start it over (force) or to continue
it (resume). docs/run-folder.md describes run.json.

>>> default_run_name("cifar10", "kevinnet", 48)
'cifar10_kevinnet_48'
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import netgen
from .errors import DlbhcError
from .proto import ProtoError, filter_net, read_net

RUNS_ROOT = Path("runs")
REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_VAL, DEPLOY, SOLVER = netgen.NET_FILES  # written by netgen.write_net_files
RUN_JSON = "run.json"
LOG = "log.txt"
LOSS_PLOT = "loss.png"
FINAL_MODEL = "final.caffemodel"
# Files a run writes; --force removes exactly these (and snapshots), nothing else.
RUN_FILES = netgen.NET_FILES + (RUN_JSON, LOG, LOSS_PLOT, FINAL_MODEL)
SNAPSHOT_PATTERNS = ("*_iter_*.caffemodel", "*_iter_*.solverstate")


class RunFolderError(DlbhcError):
    """A run folder that cannot be used as asked; the message says what to do."""


def default_run_name(dataset, net, bits):
    """runs/<name>: dataset, net and bits, e.g. cifar10_kevinnet_48."""
    return f"{dataset}_{net}_{bits}"


def run_artifacts(folder):
    """The files in `folder` that a run writes (nets, solver, snapshots, logs, run.json)."""
    folder = Path(folder)
    found = [folder / name for name in RUN_FILES if (folder / name).is_file()]
    for pattern in SNAPSHOT_PATTERNS:
        found += sorted(p for p in folder.glob(pattern) if p.is_file())
    return found


def check_run_folder(folder, *, force=False, resume=False):
    """Raise RunFolderError unless `folder` may be used: new or empty, or force / resume given.

    Never a folder inside the repository's prototxt/ (the committed reference files).
    """
    folder = Path(folder)
    reference = REPO_ROOT / "prototxt"
    resolved = folder.resolve()
    if resolved == reference or reference in resolved.parents:
        raise RunFolderError(f"{folder}: run folders never go in {reference} (the committed "
                             "reference files live there); choose another --out")
    if force and resume:
        raise RunFolderError("--force starts a run over and --resume continues it: give one")
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{folder} exists and is not a folder; choose another --out")
    if resume:
        if not (folder / SOLVER).is_file():
            raise RunFolderError(f"{folder}: nothing to resume (no solver.prototxt there); "
                                 "start the run without --resume")
        return folder
    if folder.is_dir() and any(folder.iterdir()) and not force:
        earlier = earlier_run(folder)
        if earlier is None:
            raise RunFolderError(f"run folder {folder} already exists; use --force to start it "
                                 "over (its run files are replaced) or --resume to continue it")
        raise RunFolderError(f"run folder {folder} holds a run that {earlier}")
    return folder


def earlier_run(folder):
    """How the run in `folder` ended and how to go on, from its run.json's status (None when
    it has no readable run.json): the words after "holds a run that"."""
    import json  # noqa: PLC0415

    try:
        record = json.loads((Path(folder) / "run.json").read_text())
        status = str(record.get("status"))
    except (OSError, ValueError, AttributeError):
        return None
    can_resume = any(Path(folder).glob("*_iter_*.solverstate"))
    ended = {"failed": "failed" + (f" ({record['error']})" if record.get("error") else ""),
             "interrupted": "was interrupted",
             "running": "stopped without finishing (run.json says running: killed, or still "
                        "training elsewhere?)",
             "completed": "completed"}.get(status, f"ended with status {status}")
    if status == "completed":
        return f"{ended}; use --force to train it again (its run files are replaced)"
    if can_resume:
        return (f"{ended}; continue it from its latest snapshot with --resume, or start it over "
                f"with --force (its run files are replaced)")
    return f"{ended} before its first snapshot; start it over with --force"


def clear_run_folder(folder):
    """Remove the run files of `folder` (see run_artifacts); other files stay. Returns them."""
    removed = run_artifacts(folder)
    for path in removed:
        path.unlink()
    return removed


@dataclass
class RunPlan:
    """A run, before anything is written: its folder, nets, solver, and what was assumed."""

    folder: Path
    spec: netgen.NetSpec
    solver: netgen.SolverSpec
    notes: list = field(default_factory=list)

    @property
    def files(self):
        """{file name: path} of the net files in the run folder."""
        return {name: self.folder / name for name in netgen.NET_FILES}


def plan_run(*, dataset="cifar10", root="data", net="kevinnet", bits=48, classes=None, db=None,
             batch_size=None, test_batch_size=None, crop=None, mean_file=None, mean_value=None,
             base_lr=None, max_iter=None, test_iter=None, test_interval=None, snapshot=None,
             seed=None, solver_mode="CPU", out=None, runs_root=RUNS_ROOT):
    """A RunPlan with absolute paths; raises netgen.NetSpecError for choices that cannot work.

    The folder is `out`, or runs_root/<dataset>_<net>_<bits>; nothing is written yet.
    """
    spec = netgen.plan_net(dataset, root=root, net=net, bits=bits, classes=classes, db=db,
                           batch_size=batch_size, test_batch_size=test_batch_size, crop=crop,
                           mean_file=mean_file, mean_value=mean_value, absolute=True)
    solver = netgen.plan_solver(spec, base_lr=base_lr, max_iter=max_iter, test_iter=test_iter,
                                test_interval=test_interval, snapshot=snapshot, seed=seed,
                                solver_mode=solver_mode)
    folder = Path(out) if out is not None else Path(runs_root) / default_run_name(dataset, net,
                                                                                 bits)
    return RunPlan(folder=folder.resolve(), spec=spec, solver=solver, notes=list(spec.notes))


def write_net_files(plan, *, force=False):
    """Check the run folder, clear its run files when `force`, and write the three net files.

    Returns {file name: absolute path}.
    """
    check_run_folder(plan.folder, force=force)
    if force and plan.folder.is_dir():
        clear_run_folder(plan.folder)
    return netgen.write_net_files(plan.spec, plan.solver, plan.folder)


# ---------------------------------------------------------------- reading a run

def read_record(run_dir):
    """The parsed run.json of `run_dir`; RunFolderError when it is missing or not JSON."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_JSON
    if not path.is_file():
        raise RunFolderError(f"{run_dir}: not a training run (no {RUN_JSON}); train one with "
                             f"tools/train.py, or give the deploy, model and mean")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunFolderError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(record, dict):
        raise RunFolderError(f"{path}: not a run record (a JSON object)")
    return record


def is_finished(run_dir):
    """True when `run_dir` holds a finished training run (run.json and the final model)."""
    run_dir = Path(run_dir)
    return (run_dir / RUN_JSON).is_file() and (run_dir / FINAL_MODEL).is_file()


def _first(mapping, *keys):
    for key in keys:
        if isinstance(mapping, dict) and mapping.get(key) not in (None, ""):
            return mapping[key]
    return None


def data_transform_param(train_val, phase="TEST"):
    """The transform_param of a train_val's data layer in `phase` (None when there is none):
    the first layer with one among the layers the net has in that phase (proto.filter_net)."""
    for layer in filter_net(read_net(train_val), phase).layer:
        if layer.HasField("transform_param"):
            return layer.transform_param
    return None


def run_settings(run_dir):
    """What encoding needs from a training run folder.

    The net is run.json's deploy and final_model (by default deploy.prototxt and
    final.caffemodel in the folder); the transform is the TEST-phase data layer's transform_param
    in its train_val (mean file or values, scale) -- what the net saw while it was tested -- or
    else run.json's ``mean`` ({file, values, scale}). Image files are resized to the mean file's
    size, else to the dataset's record size (run.json's ``record_shape``).

    Returns a dict: deploy, weights, mean (a path or None), mean_values, resize, scale, backend,
    bits, run (the parsed run.json).
    """
    run_dir = Path(run_dir)
    run = read_record(run_dir)

    def resolve(value):
        if value in (None, ""):
            return None
        path = Path(str(value))
        return path if path.is_absolute() else run_dir / path

    deploy = resolve(_first(run, "deploy")) or run_dir / DEPLOY
    weights = resolve(_first(run, "final_model")) or run_dir / FINAL_MODEL
    if not Path(weights).is_file():
        status = run.get("status")
        raise RunFolderError(f"{weights}: no such caffemodel; the run in {run_dir} has not "
                             f"finished" + (f" (status: {status})" if status else ""))
    train_val = resolve(_first(run, "train_val")) or run_dir / TRAIN_VAL
    try:
        param = data_transform_param(train_val) if train_val.is_file() else None
    except ProtoError as err:
        raise RunFolderError(f"{run_dir}: {err}") from None
    if param is not None:
        mean_file = param.mean_file or None
        mean_values = tuple(param.mean_value) or None
        scale = param.scale
    else:  # run.json's record of it
        mean = run.get("mean") if isinstance(run.get("mean"), dict) else {}
        mean_file = _first(mean, "file")
        mean_values = _first(mean, "values")
        scale = float(_first(mean, "scale") or 1.0)
    if mean_file is not None:
        mean_file = resolve(mean_file)
    manifest = run.get("dataset_manifest") if isinstance(run.get("dataset_manifest"), dict) else {}
    resize = None
    shape = _first(run, "record_shape") or _first(manifest, "record_shape")
    if mean_file is None and shape is not None and len(shape) == 3:
        resize = (int(shape[1]), int(shape[2]))
    return {"deploy": Path(deploy), "weights": Path(weights), "mean": mean_file,
            "mean_values": mean_values, "resize": resize, "scale": scale,
            "backend": run.get("backend") or "auto", "bits": run.get("bits"), "run": run}
