"""Snapshots written whole and resumed from anywhere.

- The engine (either) writes a snapshot under a hidden `staging_prefix`; `finish_snapshot`
  re-points the solver state at the final caffemodel and renames the caffemodel, then the state,
  into Caffe's names: neither file is ever seen half written.
- `snapshot_problem` says why a snapshot would not load (for `--resume` without a path, which
  falls back to the newest that loads).
- A run folder copied or moved keeps working on its own files: `localize_state` re-points a
  state's learned_net at the caffemodel beside it, `localize_solver` re-roots solver.prototxt's
  net files and snapshot_prefix into the folder.
"""
import os
from pathlib import Path

from .. import proto
from ..fileio import partial_path, remove_stale_partials
from ..proto import pb
from ..rules.solver import snapshot_paths

# The files a staged snapshot adds to its prefix (Caffe's names: _iter_N.caffemodel/.solverstate).
STAGED_TAIL = r"_iter_\d+\.(?:caffemodel|solverstate)(?:\.h5)?"


def staging_prefix(snapshot_prefix, log=print):
    """The hidden prefix the engine writes a snapshot under before it is renamed into place;
    what a killed run left staged under this prefix is removed first."""
    remove_stale_partials(snapshot_prefix, log=log, tail=STAGED_TAIL)
    return partial_path(snapshot_prefix)


def finish_snapshot(solver_param, iteration):
    """Move the snapshot the engine wrote under `staging_prefix` to Caffe's names: the solver
    state re-pointed at the final caffemodel, the caffemodel renamed first, so a solver state
    always names a whole caffemodel and neither file is ever seen half written."""
    model, state_path = snapshot_paths(solver_param, iteration)
    staged = pb.SolverParameter(snapshot_prefix=str(partial_path(solver_param.snapshot_prefix)))
    tmp_model, tmp_state = snapshot_paths(staged, iteration)
    state = proto.read_solverstate(tmp_state)
    state.learned_net = str(model)
    proto.write_binary(state, tmp_state)
    os.replace(tmp_model, model)
    os.replace(tmp_state, state_path)
    return model, state_path


def localize_state(path):
    """`path`, or a hidden copy of it whose learned_net names the caffemodel beside it when the
    one it recorded is elsewhere (a run folder copied or moved: Caffe would read, and a resumed
    run would then overwrite, the original folder's files). The caller removes a copy; raises
    ProtoError for an unreadable state."""
    path = Path(path)
    if path.suffix == ".h5":
        return path
    state = proto.read_solverstate(path)
    if not state.learned_net:
        return path
    beside = path.with_name(Path(state.learned_net).name)
    if not beside.is_file() or Path(state.learned_net).resolve() == beside.resolve():
        return path
    state.learned_net = str(beside)
    copy = path.with_name(f".{path.stem}.resume-{os.getpid()}.solverstate")
    proto.write_binary(state, copy)
    return copy


def snapshot_problem(state_path):
    """Why the snapshot ending in .solverstate `state_path` would not load (None when it would):
    the state and the caffemodel beside it parse, and every blob holds the values its shape says
    (what Caffe would abort on)."""
    state_path = Path(state_path)
    try:
        state = proto.read_solverstate(state_path)
        for i, blob in enumerate(state.history):
            proto.check_blob_values(blob, f"history blob {i}")
        model = state_path.with_name(Path(state.learned_net).name) if state.learned_net \
            else state_path.with_suffix(".caffemodel")
        if not model.is_file():
            return f"its caffemodel {model.name} is missing"
        net = proto.read_net(model, upgrade=False)
        for layer in list(net.layer) + list(net.layers):
            for i, blob in enumerate(layer.blobs):
                proto.check_blob_values(blob, f"{model.name}: layer '{layer.name}', blob {i}")
    except proto.ProtoError as err:
        return str(err)
    return None


def localize_solver(folder, log=print):
    """Re-root solver.prototxt's net files and snapshot_prefix into `folder` when they point
    into another folder (a copied or moved run), so a resumed copy reads and writes only its
    own files; says what it changed through `log`."""
    folder = Path(folder).resolve()
    path = folder / "solver.prototxt"
    solver = proto.read_solver(path, upgrade=False)
    changed = []
    for name in ("net", "train_net", "snapshot_prefix"):
        value = getattr(solver, name)
        if value and Path(value).is_absolute() and Path(value).parent != folder:
            setattr(solver, name, str(folder / Path(value).name))
            changed.append(name)
    for i, value in enumerate(solver.test_net):
        if Path(value).is_absolute() and Path(value).parent != folder:
            solver.test_net[i] = str(folder / Path(value).name)
            changed.append(f"test_net[{i}]")
    if changed:
        proto.write_text(solver, path)
        log(f"{path}: {', '.join(changed)} pointed outside the run folder (copied or moved); "
            f"now inside {folder}")
    return changed
