"""What a solver file makes Caffe build and check, read without an engine (solver.cpp,
sgd_solvers.hpp): the nets, their NetStates, the parameter checks, the snapshot names and the
solver state's history.

- `solver_nets(solver)`: the training net and the test nets, as Solver::InitTrainNet and
  InitTestNets resolve them (exactly one of net / net_param / train_net / train_net_param; the
  test nets from test_net_param, then test_net, then `net`/`net_param` once for each remaining
  test_iter), each with its NetState merged as Caffe merges it: the phase first, then the net's
  own `state`, then `train_state` / `test_state[i]` -- so a state in the file may even change the
  phase, as in Caffe.
- `check_solver(solver)`: what Caffe's Solver and SGDSolver constructors CHECK, and the lr policy.
- `snapshot_paths(solver, iteration)`: Solver::Snapshot's file names; `due`, `test_due`,
  `final_snapshot_due`: when Solver::Step and Solver::Solve display, test and snapshot.
- `history_count(solver_type, n)` and `check_history(...)`: the solver state's history blobs
  (two a param for Adam and AdaDelta), as SGDSolver::RestoreSolverStateFromBinaryProto checks
  them.

>>> from dlbhc_caffe import proto
>>> solver = proto.parse_text('''
...   net_param { layer { name: "d" type: "Input" top: "x" }
...               layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "x" top: "acc"
...                       include { phase: TEST } } }
...   test_iter: 2 test_interval: 5''', proto.pb.SolverParameter())
>>> [(n.phase_name, [l.name for l in n.filtered().layer]) for n in solver_nets(solver)]
[('TRAIN', ['d']), ('TEST', ['d', 'acc'])]
"""
import os
from pathlib import Path
from typing import NamedTuple

from .. import proto
from ..errors import DlbhcError
from ..proto import filter_net, pb
from .schedule import ScheduleError, check_policy

TYPES = ("SGD", "Nesterov", "Adam", "AdaGrad", "RMSProp", "AdaDelta")
TWO_HISTORIES = ("Adam", "AdaDelta")  # their history holds m and v (or two running means)


class SolverError(DlbhcError):
    """A solver file or state Caffe would refuse; the message names the field or file."""


class SolverNet(NamedTuple):
    """One net a solver builds: its phase, the NetParameter with Caffe's merged `state` (not
    yet filtered: an engine filters it when it builds the net), and where it came from."""
    phase: int
    net: pb.NetParameter
    source: str

    @property
    def phase_name(self):
        return "TRAIN" if self.phase == pb.TRAIN else "TEST"

    def filtered(self):
        """The net's layers in its state (Caffe's Net::FilterNet)."""
        return filter_net(self.net, self.net.state)


def merged_state(phase, net, extra=None):
    """NetState of a solver's net: `phase`, then the net's own state, then `extra` (train_state
    or test_state[i]), each merged over the one before (NetState::MergeFrom)."""
    state = pb.NetState(phase=phase)
    state.MergeFrom(net.state)
    if extra is not None:
        state.MergeFrom(extra)
    return state


def _with_state(net, phase, extra):
    out = proto.upgrade_net(net, source=net.name or "<net>")
    out.state.CopyFrom(merged_state(phase, out, extra))
    return out


def solver_nets(solver, read_net=proto.read_net):
    """[SolverNet] of SolverParameter `solver`: the training net first, then the test nets.

    Relative paths are read against the working directory, as Caffe reads them (`read_net` reads
    one). Raises SolverError for what Caffe's InitTrainNet / InitTestNets CHECK.
    """
    given = [f for f in ("net", "net_param", "train_net", "train_net_param")
             if solver.HasField(f)]
    if len(given) != 1:
        raise SolverError("specify the train net with exactly one of net, net_param, train_net, "
                          f"train_net_param (found {', '.join(given) or 'none'})")

    def load(field):
        if field.endswith("_param"):
            return getattr(solver, field), f"{field} in the solver"
        try:
            return read_net(getattr(solver, field)), getattr(solver, field)
        except proto.ProtoError as err:
            raise SolverError(f"{field}: {err}") from None

    train, source = load(given[0])
    train_state = solver.train_state if solver.HasField("train_state") else None
    nets = [SolverNet(pb.TRAIN, _with_state(train, pb.TRAIN, train_state), source)]

    generic = [f for f in ("net", "net_param") if solver.HasField(f)]
    listed = [(n, "test_net_param in the solver") for n in solver.test_net_param]
    for path in solver.test_net:
        try:
            listed.append((read_net(path), path))
        except proto.ProtoError as err:
            raise SolverError(f"test_net: {err}") from None
    if generic and len(solver.test_iter) < len(listed) or \
            not generic and len(solver.test_iter) != len(listed):
        raise SolverError(f"test_iter must be specified for each test network ({len(listed)} "
                          f"test nets, {len(solver.test_iter)} test_iter)")
    if len(solver.test_iter) > len(listed):
        listed += [load(generic[0])] * (len(solver.test_iter) - len(listed))
    if len(solver.test_state) and len(solver.test_state) != len(listed):
        raise SolverError("test_state must be unspecified or specified once per test net")
    if listed and solver.test_interval <= 0:
        raise SolverError("test nets need a positive test_interval")
    for i, (net, source) in enumerate(listed):
        state = solver.test_state[i] if len(solver.test_state) else None
        nets.append(SolverNet(pb.TEST, _with_state(net, pb.TEST, state), source))
    return nets


def check_solver(solver, solver_type=None):
    """Raise SolverError for what Caffe's solver constructors CHECK (or LOG(FATAL) on later):
    the lr policy, regularization_type, iter_size, average_loss, snapshot without a prefix, and
    the AdaGrad / RMSProp momentum and rms_decay rules. `solver_type` defaults to the file's."""
    solver_type = solver_type or solver.type
    if solver_type not in TYPES:
        raise SolverError(f"unknown solver type '{solver_type}' (known: {', '.join(TYPES)})")
    try:
        check_policy(solver)
    except ScheduleError as err:
        raise SolverError(str(err)) from None
    if solver.regularization_type not in ("L1", "L2"):
        raise SolverError(f"unknown regularization_type '{solver.regularization_type}' "
                          "(L1 or L2)")
    if solver.iter_size < 1 or solver.average_loss < 1:
        raise SolverError("iter_size and average_loss must be at least 1")
    if solver.snapshot > 0 and not solver.HasField("snapshot_prefix"):
        raise SolverError("snapshot is specified but snapshot_prefix is not")
    if solver_type in ("AdaGrad", "RMSProp") and solver.momentum != 0:
        raise SolverError(f"momentum cannot be used with {solver_type}")
    if solver_type == "RMSProp" and not 0 <= solver.rms_decay <= 1:
        raise SolverError("rms_decay must be in [0, 1]")


def due(every, iteration):
    """Caffe's `every && iteration % every == 0`: display, snapshot and test_interval."""
    return bool(every) and iteration % every == 0


def test_due(solver, iteration):
    """Solver::Step tests before the iteration when test_interval divides it (iteration 0 only
    with test_initialization); Solver::Solve tests after the last one when it divides it."""
    return due(solver.test_interval, iteration) and (iteration > 0 or solver.test_initialization)


def final_snapshot_due(solver, iteration):
    """Solver::Solve snapshots after training unless the last step has just done so."""
    return solver.snapshot_after_train and not due(solver.snapshot, iteration)


def check_snapshot_prefix(solver):
    """Raise SolverError unless snapshots can be written with the solver's snapshot_prefix
    (Caffe's CheckSnapshotWritePermissions: its folder exists and is writable)."""
    folder = Path(f"{solver.snapshot_prefix}_iter_0").parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise SolverError(f"cannot write snapshots with prefix '{solver.snapshot_prefix}': "
                          f"folder '{folder}' does not exist or is not writable")


def snapshot_paths(solver, iteration):
    """(caffemodel, solverstate) Caffe writes for a snapshot at `iteration` (Solver::Snapshot)."""
    prefix = f"{solver.snapshot_prefix}_iter_{iteration}"
    if solver.snapshot_format == pb.SolverParameter.HDF5:
        return Path(prefix + ".caffemodel.h5"), Path(prefix + ".solverstate.h5")
    return Path(prefix + ".caffemodel"), Path(prefix + ".solverstate")


def history_count(solver_type, learnable):
    """How many history blobs a solver of `solver_type` keeps for `learnable` params."""
    return learnable * (2 if solver_type in TWO_HISTORIES else 1)


def learnable_shapes(net_param, params):
    """Shapes of the learnable blobs in Caffe's order (Net::learnable_params: by layer, then
    blob; a blob shared through a named ParamSpec counts once). `params` is a pycaffe-shaped
    `net.params` ({layer: [blob with .data]}); `net_param` the filtered NetParameter."""
    specs = {layer.name: list(layer.param) for layer in net_param.layer}
    seen, shapes = set(), []
    for layer_name, blobs in params.items():
        for i, blob in enumerate(blobs):
            spec = specs.get(layer_name, [])
            shared = i < len(spec) and spec[i].name
            if shared and shared in seen:
                continue
            if shared:
                seen.add(shared)
            shapes.append(tuple(blob.data.shape))
    return shapes


def check_history(history, shapes, solver_type, where):
    """Raise SolverError unless a solver state's `history` (BlobProtos) fits a solver of
    `solver_type` over learnable params of `shapes` (Caffe CHECKs the count; a blob of another
    size would be read into the wrong param). `where` names the state file."""
    expected = list(shapes) * (2 if solver_type in TWO_HISTORIES else 1)
    if len(history) != len(expected):
        raise SolverError(f"{where}: incorrect length of history blobs: the state has "
                          f"{len(history)}, this {solver_type} solver needs {len(expected)} (a "
                          f"snapshot of another net or solver type?)")
    for i, (blob, shape) in enumerate(zip(history, expected)):
        have = proto.blob_shape(blob)
        if _count(have) != _count(shape):
            raise SolverError(f"{where}: history blob {i} has shape {tuple(have)}, the param "
                              f"{tuple(shape)}")
        try:  # Caffe's Blob::FromProto aborts on a value count that differs from the shape
            proto.check_blob_values(blob, f"{where}: history blob {i}")
        except proto.ProtoError as err:
            raise SolverError(str(err)) from None


def _count(shape):
    total = 1
    for d in shape:
        total *= int(d)
    return total
