"""Element-wise (neuron) layers: ReLU (negative_slope), Sigmoid, TanH, Dropout, PReLU, ELU, Power,
Exp, Log, AbsVal, BNLL, Threshold.

Dropout is Caffe's: at training time a kept unit is scaled by 1 / (1 - ratio) (Caffe scales when
training, not when testing); at test time it passes values through. A test may pin the mask
through `layer.fixed_mask` (1 = kept), for instance one recovered from real Caffe's output.
"""
import math

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


@register("PReLU")
class PReLU(_Neuron):
    """top = max(0, x) + a * min(0, x), a learned per channel (axis 1), or one a shared by all
    channels (a 0-axis blob); default filler constant 0.25."""

    def setup(self, bottom_shapes):
        pp = self.param.prelu_param
        shape = tuple(bottom_shapes[0])
        if len(shape) < 2:
            self.fail(f"needs a bottom with at least 2 axes, got shape {shape}")
        self.shared = pp.channel_shared
        filler = pp.filler if pp.HasField("filler") else None
        self.make_params([((() if self.shared else (shape[1],)), filler, 0.25)])

    def forward(self, bottoms, params):
        x, slope = bottoms[0], params[0]
        if not self.shared:
            slope = slope.reshape((1, -1) + (1,) * (x.dim() - 2))
        return [torch.where(x > 0, x, x * slope)]


@register("ELU")
class ELU(_Neuron):
    """top = x (x > 0) or alpha * (exp(x) - 1)."""

    def forward(self, bottoms, params):
        x = bottoms[0]
        alpha = float(self.param.elu_param.alpha)
        return [torch.where(x > 0, x, alpha * (torch.exp(torch.clamp(x, max=0.0)) - 1.0))]


@register("Power")
class Power(_Neuron):
    """top = (shift + scale * x) ^ power."""

    def forward(self, bottoms, params):
        pp = self.param.power_param
        inner = bottoms[0] * float(pp.scale) + float(pp.shift)
        return [inner if pp.power == 1.0 else torch.pow(inner, float(pp.power))]


def _log_base(base):
    """Caffe's log of a base given as -1 (meaning e) or a positive number."""
    if base == -1.0:
        return 1.0
    if base <= 0:
        raise ValueError(f"base must be strictly positive (or -1 for e), got {base}")
    return math.log(base)


@register("Exp")
class Exp(_Neuron):
    """top = base ^ (shift + scale * x), base -1 meaning e."""

    def setup(self, bottom_shapes):
        ep = self.param.exp_param
        try:
            log_base = _log_base(float(ep.base))
        except ValueError as err:
            self.fail(str(err))
        self.inner = log_base * float(ep.scale)
        self.outer = 1.0 if ep.shift == 0 else math.exp(log_base * float(ep.shift))

    def forward(self, bottoms, params):
        return [torch.exp(bottoms[0] * self.inner) * self.outer]


@register("Log")
class Log(_Neuron):
    """top = log_base(shift + scale * x), base -1 meaning e."""

    def setup(self, bottom_shapes):
        lp = self.param.log_param
        try:
            self.base_scale = 1.0 / _log_base(float(lp.base))
        except ValueError as err:
            self.fail(str(err))
        self.scale, self.shift = float(lp.scale), float(lp.shift)

    def forward(self, bottoms, params):
        return [torch.log(bottoms[0] * self.scale + self.shift) * self.base_scale]


@register("AbsVal")
class AbsVal(_Neuron):
    def forward(self, bottoms, params):
        return [torch.abs(bottoms[0])]


@register("BNLL")
class BNLL(_Neuron):
    """top = log(1 + exp(x)), computed as Caffe does for x > 0: x + log(1 + exp(-x))."""

    def forward(self, bottoms, params):
        x = bottoms[0]
        return [torch.where(x > 0, x + torch.log1p(torch.exp(-x.abs())),
                            torch.log1p(torch.exp(-x.abs())))]


@register("Threshold")
class Threshold(_Neuron):
    """top = 1 where x > threshold, else 0 (no backward, as in Caffe)."""

    has_backward = False

    def forward(self, bottoms, params):
        x = bottoms[0].detach()
        return [(x > float(self.param.threshold_param.threshold)).to(x.dtype)]
