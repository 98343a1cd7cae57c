"""Caffe's Python layer: `type: "Python"` with python_param { module layer param_str } runs a
class the user wrote by subclassing `caffe.Layer` (here: `PythonLayer`).

As in Caffe, the class is imported from `module` (found on sys.path) and instantiated once per
layer; it gets `param_str` and `phase` before `setup(bottom, top)`, sizes its tops in
`reshape(bottom, top)` (called before every forward), writes `top[i].data` in
`forward(bottom, top)` and `bottom[i].diff` in `backward(top, propagate_down, bottom)`. Its
learnable blobs are `self.blobs` (`self.blobs.add_blob(*shape)`); it writes their diffs itself.
Exceptions the user's code raises propagate unchanged (Caffe re-raises them to Python too).

>>> class Twice(PythonLayer):
...     def reshape(self, bottom, top): top[0].reshape(*bottom[0].data.shape)
...     def forward(self, bottom, top): top[0].data[...] = 2 * bottom[0].data
>>> Twice().param_str
''
"""
import importlib

import torch

from ..blob import Blob
from .base import Layer
from . import register


class BlobVec(list):
    """A layer's blobs, as pycaffe's BlobVec: a list with `add_blob(*shape)`."""

    def add_blob(self, *shape):
        self.append(Blob.zeros(tuple(int(d) for d in shape)))


class PythonLayer:
    """Base class of user layers (pycaffe's `caffe.Layer`); override setup, reshape, forward,
    backward."""

    def __init__(self, param=None):
        self.param_str = ""
        self.phase = 0
        self.blobs = BlobVec()
        self.type = "Python"

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


class _Call(torch.autograd.Function):
    """The user's forward and backward as one autograd node over the layer's bottoms."""

    # The params are inputs only so that a layer whose bottoms need no gradient still has its
    # backward called when its params learn (the user writes their diffs itself).
    @staticmethod
    def forward(ctx, adapter, num_bottoms, *inputs):
        ctx.adapter, ctx.num_bottoms = adapter, num_bottoms
        return tuple(adapter.run_forward(inputs[:num_bottoms]))

    @staticmethod
    def backward(ctx, *top_diffs):
        need = list(ctx.needs_input_grad[2:2 + ctx.num_bottoms])
        grads = ctx.adapter.run_backward(top_diffs, need)
        return (None, None) + tuple(grads) + (None,) * (len(ctx.needs_input_grad) - 2 -
                                                        ctx.num_bottoms)


def _user_class(module_name, layer_name):
    """The user's layer class, its module imported with `caffe` bound to this engine's pycaffe
    (in a process that also imported real Caffe's, `caffe.Layer` would be a C++ class this
    engine cannot build); a module imported earlier under another `caffe` is imported again."""
    from ..pycaffe_api import bound  # noqa: PLC0415 - pycaffe_api imports this module

    with bound():
        module = importlib.import_module(module_name)
        cls = getattr(module, layer_name)
        if isinstance(cls, type) and not issubclass(cls, PythonLayer):
            cls = getattr(importlib.reload(module), layer_name)
    return cls


@register("Python")
class Python(Layer):
    """Runs a user's PythonLayer; attributes the adapter lacks are the user layer's."""

    def setup(self, bottom_shapes):
        pp = self.param.python_param
        if not pp.module or not pp.layer:
            self.fail("python_param needs module and layer")
        try:
            cls = _user_class(pp.module, pp.layer)
        except (ImportError, AttributeError) as err:
            self.fail(f"cannot load python_param layer '{pp.layer}' from module "
                      f"'{pp.module}': {err}")
        self.user = cls(self.param)
        if not hasattr(self.user, "blobs"):  # an __init__ that skipped PythonLayer's
            self.user.blobs = BlobVec()
        self.user.param_str = pp.param_str
        self.user.phase = self.phase
        self._bottoms = [Blob.zeros(shape, self.context.device) for shape in bottom_shapes]
        self._tops = [Blob.zeros((0,), self.context.device) for _ in self.param.top]
        self.user.setup(self._bottoms, self._tops)
        self.blobs = self.user.blobs

    def __getattr__(self, name):
        if name == "user":  # not set yet: no recursion into __getattr__
            raise AttributeError(name)
        return getattr(self.user, name)

    def _bind_bottoms(self, tensors):
        for blob, tensor in zip(self._bottoms, tensors):
            blob.set_tensor(tensor.detach())

    def reshape(self, bottom_shapes):
        for i, shape in enumerate(bottom_shapes):
            if self._bottoms[i].shape != tuple(shape):
                self._bottoms[i] = Blob.zeros(shape, self.context.device)
        self.user.reshape(self._bottoms, self._tops)
        return [blob.shape for blob in self._tops]

    def run_forward(self, bottoms):
        self._bind_bottoms(bottoms)
        self.user.reshape(self._bottoms, self._tops)
        self.user.forward(self._bottoms, self._tops)
        return [blob.tensor().clone() for blob in self._tops]

    def run_backward(self, top_diffs, propagate_down):
        for blob, diff in zip(self._tops, top_diffs):
            blob.set_diff(diff if diff is not None else torch.zeros(blob.shape, device=blob.device))
        for blob in self._bottoms:
            blob.fill_diff(0.0)
        self.user.backward(self._tops, propagate_down, self._bottoms)
        return [blob.diff_tensor().clone() if need else None
                for blob, need in zip(self._bottoms, propagate_down)]

    def forward(self, bottoms, params):
        if not bottoms and not params:
            with torch.no_grad():
                return self.run_forward([])
        return list(_Call.apply(self, len(bottoms), *bottoms, *params))
