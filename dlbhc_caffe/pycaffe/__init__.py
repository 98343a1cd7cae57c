"""pycaffe on the torch backend: `import dlbhc_caffe.pycaffe as caffe` in new code, or run an
existing pycaffe script unchanged with `python -m dlbhc_caffe.pycaffe script.py args...` (which
binds `import caffe` and its submodules to this module, then runs the script as __main__).

What `caffe` offers here, as BVLC Caffe's python/caffe does: Net, SGDSolver and the other
solvers, get_solver, set_mode_cpu / set_mode_gpu / set_device / set_random_seed,
layer_type_list, TRAIN / TEST, Layer (base class of `type: "Python"` layers), io (Transformer,
load_image, ...), proto.caffe_pb2 (this project's caffe.proto-compatible schema), NetSpec /
layers / params / to_proto (net_spec), coord_map, Classifier.

>>> import dlbhc_caffe.pycaffe as caffe
>>> caffe.params.Pooling.MAX, caffe.TEST
(0, 1)
"""
import sys
import types

from .. import backends
from ..backends.torch import caffe_io as io, coord_map, net_spec
from ..backends.torch.layers.python import PythonLayer as Layer
from ..backends.torch.net_spec import NetSpec, layers, params, to_proto
from ..proto import dlbhc_caffe_pb2 as caffe_pb2

_engine = backends.get("torch")

Net = _engine.Net
SGDSolver, NesterovSolver, AdaGradSolver = (_engine.SGDSolver, _engine.NesterovSolver,
                                            _engine.AdaGradSolver)
RMSPropSolver, AdaDeltaSolver, AdamSolver = (_engine.RMSPropSolver, _engine.AdaDeltaSolver,
                                             _engine.AdamSolver)
get_solver, layer_type_list = _engine.get_solver, _engine.layer_type_list
set_mode_cpu, set_mode_gpu, set_device = (_engine.set_mode_cpu, _engine.set_mode_gpu,
                                          _engine.set_device)
set_random_seed = _engine.set_random_seed
TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
__version__ = "1.0.0"  # the pycaffe interface presented (BVLC Caffe 1.0's)

proto = types.ModuleType("caffe.proto", "Caffe's protobuf schema (this project's copy).")
proto.caffe_pb2 = caffe_pb2

from .classifier import Classifier  # noqa: E402 - it builds on Net and io above


def bind():
    """Make `import caffe` (and caffe.io, caffe.proto.caffe_pb2, caffe.net_spec,
    caffe.coord_map, caffe.classifier) give this module and its parts, for this process."""
    this = sys.modules[__name__]
    parts = {"": this, ".io": io, ".proto": proto, ".proto.caffe_pb2": caffe_pb2,
             ".net_spec": net_spec, ".coord_map": coord_map,
             ".classifier": sys.modules[f"{__name__}.classifier"], ".pycaffe": this}
    for suffix, module in parts.items():
        sys.modules["caffe" + suffix] = module
    return this


__all__ = ["Net", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "get_solver", "layer_type_list", "set_mode_cpu",
           "set_mode_gpu", "set_device", "set_random_seed", "TRAIN", "TEST", "Layer", "io",
           "proto", "NetSpec", "layers", "params", "to_proto", "coord_map", "net_spec",
           "Classifier", "bind"]
