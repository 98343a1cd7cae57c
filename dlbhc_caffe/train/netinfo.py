"""What a net or solver definition says, read with our schema and Caffe's rules, without an engine.

- `filter_net(net, state)`: the layers a net has in a phase (Caffe's Net::FilterNet and its
  NetStateRule semantics: phase, min/max level, stage, not_stage; include and exclude).
- `loss_outputs(net)`: the loss tops and their loss weights (Caffe's rule: a `*Loss` layer's first
  top weighs 1 unless loss_weight says otherwise).
- `solver_nets(solver)`: the training net and the test nets a solver builds, as Caffe's Solver
  resolves them (`net`/`net_param` for both phases, or `train_net*` and `test_net*`).

>>> from dlbhc_caffe import proto
>>> net = proto.parse_text('''
...   layer { name: "d" type: "Input" top: "x" }
...   layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "x" top: "acc"
...           include { phase: TEST } }
...   layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "x" top: "loss" }''',
...   proto.pb.NetParameter())
>>> [l.name for l in filter_net(net, "TRAIN").layer]
['d', 'loss']
>>> loss_outputs(filter_net(net, "TEST"))
{'loss': 1.0}
"""

from .. import proto
from ..proto import filter_net, pb, phase_value  # noqa: F401 (re-exported)

def loss_outputs(net):
    """{top name: loss weight} of the tops that count in the net's loss (weight != 0).

    `net` should be filtered to one phase first (filter_net).
    """
    losses = {}
    for layer in net.layer:
        weights = list(layer.loss_weight)
        if not weights and layer.type.endswith("Loss") and layer.top:
            weights = [1.0] + [0.0] * (len(layer.top) - 1)
        for top, weight in zip(layer.top, weights):
            if weight:
                losses[top] = losses.get(top, 0.0) + float(weight)
    return losses


def net_outputs(net):
    """The tops no later layer consumes, sorted by name: Caffe's output blobs and their order
    (Net::Init keeps them in a std::set), so output #i here is Caffe's "output #i"."""
    available = set()
    for layer in net.layer:
        available.difference_update(layer.bottom)
        available.update(layer.top)
    return sorted(available)


def solver_nets(solver):
    """[(phase, NetParameter filtered to its state, source)] of a SolverParameter's nets.

    The first entry is the training net; the others are the test nets in Caffe's order
    (test_net_param, test_net, then `net`/`net_param` once per remaining test_iter). Relative
    paths are read against the working directory, as Caffe does.
    """
    train_state = pb.NetState(phase=pb.TRAIN)
    train_state.MergeFrom(solver.train_state)
    train_state.phase = pb.TRAIN
    if solver.HasField("train_net_param"):
        train, source = solver.train_net_param, "train_net_param in the solver"
    elif solver.HasField("train_net"):
        train, source = proto.read_net(solver.train_net), solver.train_net
    elif solver.HasField("net_param"):
        train, source = solver.net_param, "net_param in the solver"
    elif solver.HasField("net"):
        train, source = proto.read_net(solver.net), solver.net
    else:
        raise proto.ProtoError("the solver names no training net (net, net_param, train_net or "
                               "train_net_param)")
    nets = [("TRAIN", filter_net(train, train_state), source)]

    test_nets = [(n, "test_net_param in the solver") for n in solver.test_net_param]
    test_nets += [(proto.read_net(path), path) for path in solver.test_net]
    remaining = len(solver.test_iter) - len(test_nets)
    if remaining > 0:
        if solver.HasField("net_param"):
            test_nets += [(solver.net_param, "net_param in the solver")] * remaining
        elif solver.HasField("net"):
            general = proto.read_net(solver.net)
            test_nets += [(general, solver.net)] * remaining
    if len(solver.test_iter) < len(test_nets):
        raise proto.ProtoError(f"the solver has {len(test_nets)} test nets but "
                               f"{len(solver.test_iter)} test_iter values: one per test net")
    for i, (net, source) in enumerate(test_nets):
        state = pb.NetState(phase=pb.TEST)
        if i < len(solver.test_state):
            state.MergeFrom(solver.test_state[i])
        state.phase = pb.TEST
        nets.append(("TEST", filter_net(net, state), source))
    return nets
