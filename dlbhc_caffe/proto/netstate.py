"""Which layers a net has in a state: Caffe's Net::FilterNet and its NetStateRule semantics.

>>> from dlbhc_caffe import proto
>>> net = proto.parse_text('''
...   layer { name: "d" type: "Input" top: "x" }
...   layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "x" top: "acc"
...           include { phase: TEST } }''', proto.pb.NetParameter())
>>> [l.name for l in filter_net(net, "TRAIN").layer]
['d']
"""
from . import dlbhc_caffe_pb2 as pb
from .io import ProtoError

PHASES = {"TRAIN": pb.TRAIN, "TEST": pb.TEST, pb.TRAIN: pb.TRAIN, pb.TEST: pb.TEST}


def phase_value(phase):
    """pb.TRAIN / pb.TEST from "TRAIN", "TEST" (any case) or the enum value itself (0 or 1):
    the one phase reader of the package (pycaffe's Net(file, phase) and every tool use it).

    >>> phase_value("test"), phase_value(0)
    (1, 0)
    """
    if isinstance(phase, str):
        phase = phase.upper()
    try:
        return PHASES[phase]
    except (KeyError, TypeError):
        raise ProtoError(f"phase must be TRAIN or TEST (0 or 1), got {phase!r}") from None


def state_meets_rule(state, rule):
    """Caffe's StateMeetsRule: does NetState `state` satisfy NetStateRule `rule`?"""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(stage not in stages for stage in rule.stage):
        return False
    if any(stage in stages for stage in rule.not_stage):
        return False
    return True


def filter_net(net, state="TRAIN"):
    """A copy of NetParameter `net` holding only the layers that exist in `state`.

    state: a phase ("TRAIN"/"TEST"/pb.TRAIN/pb.TEST) or a pb.NetState. As in Caffe, the net's own
    `state` field is merged under the one given, and a layer with `include` rules exists when one
    of them is met, one with `exclude` rules when none is.
    """
    if isinstance(state, pb.NetState):
        wanted = state
    else:
        wanted = pb.NetState(phase=phase_value(state))
    merged = pb.NetState()
    merged.CopyFrom(net.state)
    merged.MergeFrom(wanted)
    merged.phase = wanted.phase
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    out.state.CopyFrom(merged)
    for layer in net.layer:
        if layer.include and layer.exclude:
            raise ProtoError(f"layer '{layer.name}': specify either include rules or "
                                   f"exclude rules, not both")
        if layer.include:
            keep = any(state_meets_rule(merged, rule) for rule in layer.include)
        else:
            keep = not any(state_meets_rule(merged, rule) for rule in layer.exclude)
        if keep:
            out.layer.add().CopyFrom(layer)
    return out
