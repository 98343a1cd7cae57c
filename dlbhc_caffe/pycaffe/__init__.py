"""pycaffe on the torch backend: `import dlbhc_caffe.pycaffe as caffe` in new code, or run an
existing pycaffe script unchanged with `python -m dlbhc_caffe.pycaffe script.py args...` (which
binds `import caffe` and its submodules to this module, then runs the script as __main__).

The surface itself (Net, the solvers, Layer, io, proto.caffe_pb2, net_spec, coord_map,
Classifier, ...) is the torch engine's, :mod:`dlbhc_caffe.backends.torch.pycaffe_api`; a
`type: "Python"` layer's module gets the same one when the engine imports it.

>>> import dlbhc_caffe.pycaffe as caffe
>>> caffe.params.Pooling.MAX, caffe.TEST
(0, 1)
"""
from ..backends.torch.pycaffe_api import *  # noqa: F401,F403 - the whole surface, re-exported
from ..backends.torch.pycaffe_api import __all__, __version__, bind  # noqa: F401
