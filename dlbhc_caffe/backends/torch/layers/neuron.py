"""Element-wise layers: ReLU (negative_slope), Sigmoid, TanH, Dropout.

Dropout is Caffe's: at training time a kept unit is scaled by 1 / (1 - ratio) (Caffe scales when
training, not when testing); at test time it passes values through. A test may pin the mask
through `layer.fixed_mask` (1 = kept), for instance one recovered from real Caffe's output.
"""
import torch
import torch.nn.functional as F

from ....proto import pb
from .base import Layer
from . import register


class _Neuron(Layer):
    bottoms = (1, 1)
    tops = (1, 1)

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]


@register("ReLU")
class ReLU(_Neuron):
    def setup(self, bottom_shapes):
        self.slope = float(self.param.relu_param.negative_slope)

    def forward(self, bottoms, params):
        x = bottoms[0]
        if self.slope == 0.0:
            return [F.relu(x)]
        return [F.leaky_relu(x, self.slope)]


@register("Sigmoid")
class Sigmoid(_Neuron):
    def forward(self, bottoms, params):
        return [torch.sigmoid(bottoms[0])]


@register("TanH")
class TanH(_Neuron):
    def forward(self, bottoms, params):
        return [torch.tanh(bottoms[0])]


@register("Dropout")
class Dropout(_Neuron):
    def setup(self, bottom_shapes):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            self.fail(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)
        self.fixed_mask = None
        self.mask = None

    def forward(self, bottoms, params):
        x = bottoms[0]
        if self.phase != pb.TRAIN:
            return [x.view(x.shape)]
        if self.fixed_mask is not None:
            mask = torch.as_tensor(self.fixed_mask, dtype=x.dtype, device=x.device)
            if tuple(mask.shape) != tuple(x.shape):
                self.fail(f"fixed_mask has shape {tuple(mask.shape)}, the bottom {tuple(x.shape)}")
        else:
            mask = torch.empty_like(x).bernoulli_(1.0 - self.ratio,
                                                  generator=self.context.generator(x.device))
        self.mask = mask
        return [x * mask * self.scale]
