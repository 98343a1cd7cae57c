"""The torch backend: Caffe's prototxt, caffemodel and solver files executed by PyTorch, behind
pycaffe's surface (`dlbhc_caffe.backends.get("torch")` returns this module).

    Net(prototxt, phase, weights=None, level=0, stages=None)  or  Net(prototxt, weights, phase)
    net.blobs[name].data / .diff (writable numpy), .reshape(*shape); net.params[layer][i]
    net.forward(start=, end=, **inputs) -> {blob: data}; net.backward(); net.reshape()
    net.copy_from(caffemodel or .h5); net.save(caffemodel); net.save_hdf5 / load_hdf5
    SGDSolver / NesterovSolver / AdamSolver / AdaGradSolver / RMSPropSolver / AdaDeltaSolver(path),
    get_solver(path): .net, .test_nets, .iter, .step(n), .solve(), .snapshot(), .restore(path)
    TRAIN, TEST, set_mode_cpu(), set_mode_gpu(), set_device(id), set_random_seed(seed),
    check_device(gpu) (raises BackendUnavailable when that CUDA device cannot be used)
    set_precision("float32" | "tf32" | "bf16") (float32 by default: exactness first)

Layers: Input, DummyData, Data (LevelDB/LMDB), ImageData, Convolution, Deconvolution, Pooling,
LRN, ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log, Threshold, Dropout,
InnerProduct, Embed, Softmax, SoftmaxWithLoss, EuclideanLoss, SigmoidCrossEntropyLoss,
ContrastiveLoss, HingeLoss, MultinomialLogisticLoss, InfogainLoss, Accuracy, ArgMax, Concat,
Slice, Crop, Tile, Reduction, Flatten, Reshape, Split, Eltwise, BatchNorm, Scale, Bias, MVN,
Silence, Python (a user's `caffe.Layer`). The whole pycaffe module (caffe.io, NetSpec, coord_map,
...) on this backend is `dlbhc_caffe.pycaffe`.

>>> from dlbhc_caffe.backends import torch as engine
>>> engine.name, engine.TRAIN, engine.TEST
('torch', 0, 1)
"""
import torch as _torch

from .blob import Blob
from .layers import layer_type_list
from .net import TEST, TRAIN, Net, NetError
from .runtime import (check_device, device, set_device, set_mode_cpu, set_mode_gpu,
                      set_precision, set_random_seed, set_verbose)
from .solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver,
                     SGDSolver, SolverError, get_solver)
from .layers.base import LayerError
from .data import DataError

name = "torch"
__version__ = _torch.__version__

__all__ = ["name", "Net", "Blob", "SGDSolver", "NesterovSolver", "AdamSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "get_solver", "TRAIN", "TEST", "set_mode_cpu",
           "set_mode_gpu", "set_device", "set_random_seed", "set_precision", "set_verbose",
           "device", "check_device", "layer_type_list", "NetError", "SolverError", "LayerError", "DataError"]
