"""Caffe's schema and artifacts, without Caffe.

`pb` is our caffe.proto-compatible protobuf module (package `dlbhc_caffe`, so it can live beside
pycaffe's `caffe_pb2` in one process). The helpers read and write Caffe's files by extension and
upgrade V0/V1 nets as Caffe does on load.

>>> from dlbhc_caffe import proto
>>> net = proto.parse_text('layer { name: "d" type: "Input" top: "data" }', proto.pb.NetParameter())
>>> net.layer[0].type
'Input'
"""
from . import dlbhc_caffe_pb2 as pb
from .io import (ProtoError, array_to_blob, atomic_write_bytes, blob_shape, blob_to_array,
                 check_blob_values,
                 datum_from_array, datum_to_array, format_text, is_binary_path, parse_text,
                 read_binary, read_blob, read_mean, read_message, read_text, write_binary,
                 write_blob, write_message, write_text)
from .netstate import filter_net, phase_value, state_meets_rule
from .upgrade import (KNOWN_LAYER_TYPES, UpgradeWarning, check_layer_types, net_needs_upgrade, upgrade_net,
                      solver_needs_upgrade, text_kind, upgrade_solver)


def read_net(path, upgrade=True):
    """A NetParameter from a prototxt or caffemodel, upgraded to the current format."""
    net = read_message(path, pb.NetParameter)
    return upgrade_net(net, source=str(path)) if upgrade else net


def read_solver(path, upgrade=True):
    """A SolverParameter from a solver prototxt (solver_type upgraded to `type`)."""
    solver = read_message(path, pb.SolverParameter)
    return upgrade_solver(solver, source=str(path)) if upgrade else solver


def read_solverstate(path):
    """A SolverState from a .solverstate file."""
    return read_binary(path, pb.SolverState)


__all__ = [
    "pb", "ProtoError", "read_net", "read_solver", "read_solverstate", "read_text", "read_binary",
    "read_message", "write_text", "write_binary", "write_message", "parse_text", "format_text",
    "read_blob", "write_blob", "check_blob_values", "read_mean", "blob_to_array", "array_to_blob", "blob_shape",
    "datum_from_array", "datum_to_array", "atomic_write_bytes", "is_binary_path", "upgrade_net",
    "upgrade_solver", "solver_needs_upgrade", "text_kind", "UpgradeWarning", "filter_net", "phase_value", "state_meets_rule", "net_needs_upgrade", "check_layer_types", "KNOWN_LAYER_TYPES",
]
