"""The `caffe` module this engine presents: BVLC pycaffe's surface over the torch backend, and
the binding of `import caffe` to it (what `dlbhc_caffe.pycaffe` re-exports, and what a
`type: "Python"` layer's own module sees when this engine loads it).

What `caffe` offers here, as BVLC Caffe's python/caffe does: Net, SGDSolver and the other
solvers, get_solver, set_mode_cpu / set_mode_gpu / set_device / set_random_seed,
layer_type_list, TRAIN / TEST, Layer (base class of `type: "Python"` layers), io (Transformer,
load_image, ...), proto.caffe_pb2 (this project's caffe.proto-compatible schema), NetSpec /
layers / params / to_proto (net_spec), coord_map, Classifier.

>>> from dlbhc_caffe.backends.torch import pycaffe_api as caffe
>>> caffe.params.Pooling.MAX, caffe.TEST
(0, 1)
"""
import contextlib
import sys
import types

from ...proto import dlbhc_caffe_pb2 as caffe_pb2
from . import caffe_io as io, classifier, coord_map, net_spec
from .classifier import Classifier
from .layers import layer_type_list
from .layers.python import PythonLayer as Layer
from .net import Net
from .net_spec import NetSpec, layers, params, to_proto
from .runtime import set_device, set_mode_cpu, set_mode_gpu, set_random_seed
from .solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver,
                     SGDSolver, get_solver)

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
__version__ = "1.0.0"  # the pycaffe interface presented (BVLC Caffe 1.0's)

proto = types.ModuleType("caffe.proto", "Caffe's protobuf schema (this project's copy).")
proto.caffe_pb2 = caffe_pb2


def _parts():
    this = sys.modules[__name__]
    return {"caffe": this, "caffe.io": io, "caffe.proto": proto, "caffe.proto.caffe_pb2": caffe_pb2,
            "caffe.net_spec": net_spec, "caffe.coord_map": coord_map,
            "caffe.classifier": classifier, "caffe.pycaffe": this}


def bind():
    """Make `import caffe` (and caffe.io, caffe.proto.caffe_pb2, caffe.net_spec,
    caffe.coord_map, caffe.classifier) give this module and its parts, for this process."""
    sys.modules.update(_parts())
    return sys.modules[__name__]


@contextlib.contextmanager
def bound():
    """`bind()` for the duration of a `with` block, then `caffe` is what it was (the real
    pycaffe, or nothing): how a Python layer's module is imported by this engine."""
    saved = {name: sys.modules.get(name) for name in _parts()}
    bind()
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


__all__ = ["Net", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "get_solver", "layer_type_list", "set_mode_cpu",
           "set_mode_gpu", "set_device", "set_random_seed", "TRAIN", "TEST", "Layer", "io",
           "proto", "NetSpec", "layers", "params", "to_proto", "coord_map", "net_spec",
           "Classifier", "bind", "bound"]
