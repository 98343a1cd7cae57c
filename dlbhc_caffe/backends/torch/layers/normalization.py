"""BatchNorm, Scale and Bias as Caffe splits them, and MVN: BatchNorm only normalizes (its three blobs are
the running mean, the running variance and the moving-average factor, never learned), Scale
multiplies by a learned per-channel factor and adds an optional bias.
"""
import torch

from ....proto import pb
from .base import Layer, canonical_axis, filler_or_none
from . import register


@register("BatchNorm")
class BatchNorm(Layer):
    bottoms = (1, 1)
    tops = (1, 1)

    def setup(self, bottom_shapes):
        bp = self.param.batch_norm_param
        self.fraction = float(bp.moving_average_fraction)
        self.use_global_stats = (bp.use_global_stats if bp.HasField("use_global_stats")
                                 else self.phase == pb.TEST)
        self.eps = float(bp.eps)
        shape = bottom_shapes[0]
        self.channels = 1 if len(shape) == 1 else shape[1]
        self.make_params([((self.channels,), None, 0.0), ((self.channels,), None, 0.0),
                          ((1,), None, 0.0)])
        # Caffe masks the statistics from the solver: lr_mult 0 for each of the three blobs.
        for i in range(len(self.blobs)):
            if len(self.param.param) == i:
                self.param.param.add().lr_mult = 0.0
            elif self.param.param[i].lr_mult != 0.0:
                self.fail("cannot configure batch normalization statistics as layer parameters "
                          f"(param {i} has lr_mult {self.param.param[i].lr_mult}, must be 0)")

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) > 1 and shape[1] != self.channels:
            self.fail(f"bottom has {shape[1]} channels, the layer {self.channels}")
        return [shape]

    def _broadcast(self, values, ndim):
        return values.reshape((1, -1) + (1,) * (ndim - 2)) if ndim >= 2 else values

    def forward(self, bottoms, params):
        x = bottoms[0]
        ndim = x.dim()
        dims = [d for d in range(ndim) if d != 1] if ndim >= 2 else [0]
        if self.use_global_stats:
            with torch.no_grad():
                factor = params[2].reshape(())
                scale = torch.where(factor == 0, torch.zeros_like(factor), 1.0 / factor)
                mean = params[0] * scale
                variance = params[1] * scale
            centered = x - self._broadcast(mean, ndim)
        else:
            mean = x.mean(dim=dims)
            centered = x - self._broadcast(mean, ndim)
            variance = (centered * centered).mean(dim=dims)
            with torch.no_grad():
                m = x.numel() // self.channels
                correction = m / (m - 1) if m > 1 else 1.0
                stats = [b.tensor() for b in self.blobs]
                stats[2].mul_(self.fraction).add_(1.0)
                stats[0].mul_(self.fraction).add_(mean.detach())
                stats[1].mul_(self.fraction).add_(correction * variance.detach())
        std = torch.sqrt(variance + self.eps)
        return [centered / self._broadcast(std, ndim)]


def _param_shape(bottom_shape, axis, num_axes, where, fail):
    axis = canonical_axis(axis, len(bottom_shape), where) if bottom_shape else 0
    if num_axes < -1:
        fail("num_axes must be non-negative, or -1 to extend to the end of the bottom")
    end = len(bottom_shape) if num_axes == -1 else axis + num_axes
    if end > len(bottom_shape):
        fail(f"axis {axis} + num_axes {num_axes} exceeds the bottom's {len(bottom_shape)} axes")
    return axis, tuple(bottom_shape[axis:end])


def _broadcast_to(values, axis, ndim):
    return values.reshape((1,) * axis + tuple(values.shape) +
                          (1,) * (ndim - axis - values.dim()))


@register("Scale")
class Scale(Layer):
    """top = bottom * scale (+ bias), the scale a learned blob (one bottom; default filler
    constant 1) or the second bottom."""

    bottoms = (1, 2)
    tops = (1, 1)

    def setup(self, bottom_shapes):
        sp = self.param.scale_param
        specs = []
        if len(bottom_shapes) == 1:
            self.axis, shape = _param_shape(bottom_shapes[0], sp.axis, sp.num_axes, self.where,
                                            self.fail)
            specs.append((shape, filler_or_none(sp, "filler"), 1.0))
        else:
            self.axis = canonical_axis(sp.axis, len(bottom_shapes[0]), self.where)
            shape = tuple(bottom_shapes[1])
        self.bias_term = sp.bias_term
        if self.bias_term:
            specs.append((shape, filler_or_none(sp, "bias_filler"), 0.0))
        self.make_params(specs)

    def reshape(self, bottom_shapes):
        bottom = tuple(bottom_shapes[0])
        scale_shape = (tuple(bottom_shapes[1]) if len(bottom_shapes) == 2
                       else tuple(self.blobs[0].shape))
        if bottom[self.axis:self.axis + len(scale_shape)] != scale_shape:
            self.fail(f"scale shape {scale_shape} does not match bottom {bottom} at axis "
                      f"{self.axis}")
        return [bottom]

    def forward(self, bottoms, params):
        x = bottoms[0]
        scale = bottoms[1] if len(bottoms) == 2 else params[0]
        top = x * _broadcast_to(scale, self.axis, x.dim())
        if self.bias_term:
            top = top + _broadcast_to(params[-1], self.axis, x.dim())
        return [top]


@register("Bias")
class Bias(Layer):
    """top = bottom + bias, the bias a learned blob (one bottom) or the second bottom."""

    bottoms = (1, 2)
    tops = (1, 1)

    def setup(self, bottom_shapes):
        bp = self.param.bias_param
        if len(bottom_shapes) == 1:
            self.axis, shape = _param_shape(bottom_shapes[0], bp.axis, bp.num_axes, self.where,
                                            self.fail)
            self.make_params([(shape, filler_or_none(bp, "filler"), 0.0)])
        else:
            self.axis = canonical_axis(bp.axis, len(bottom_shapes[0]), self.where)

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, bottoms, params):
        x = bottoms[0]
        bias = bottoms[1] if len(bottoms) == 2 else params[0]
        return [x + _broadcast_to(bias, self.axis, x.dim())]


@register("MVN")
class MVN(Layer):
    """Mean-variance normalization per item and channel (or per item, across_channels):
    top = (x - mean) / (std + eps) with the population std, or x - mean without
    normalize_variance (eps is added to the std, not to the variance, as in Caffe)."""

    bottoms = (1, 1)
    tops = (1, 1)

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, bottoms, params):
        mp = self.param.mvn_param
        x = bottoms[0]
        groups = x.shape[0] if mp.across_channels else x.shape[0] * (x.shape[1] if x.dim() > 1
                                                                    else 1)
        flat = x.reshape(groups, -1)
        centered = flat - flat.mean(dim=1, keepdim=True)
        if mp.normalize_variance:
            std = (centered * centered).mean(dim=1, keepdim=True).sqrt()
            centered = centered / (std + float(mp.eps))
        return [centered.reshape(x.shape)]
