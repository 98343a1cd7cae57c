"""Convolution, Deconvolution, Pooling and LRN with Caffe's shapes and arithmetic.

Pooling follows Caffe's output size (ceil mode, then the last window dropped when it would start
in the padding) and its edge rules: MAX takes the maximum over the window clipped to the image
(the first maximum in row-major order wins ties, as Caffe's strict `>`), AVE divides the sum by
the window size clipped to the padded image, not to the image. LRN is Caffe's: across channels
scale = k + alpha/n * sum of squares over n channels; within a channel scale = 1 + alpha/n^2 *
sum over an n x n window (Caffe builds that from its own layers and fixes the shift at 1).
"""
import functools

import torch
import torch.nn.functional as F

from ....proto import pb
from .base import Layer, filler_or_none
from . import register


def _pair(param, repeated, h_field, w_field, default):
    """(h, w) of a conv/pool geometry field, given as its _h/_w fields or as `repeated` values
    (one value for both axes, or two); raises ValueError naming the fields."""
    has_h = h_field is not None and param.HasField(h_field)
    has_w = w_field is not None and param.HasField(w_field)
    values = list(repeated) if repeated is not None else []
    if has_h or has_w:
        if not (has_h and has_w):
            raise ValueError(f"{h_field} and {w_field} must be given together")
        if values:
            raise ValueError(f"give either {h_field}/{w_field} or the plain field, not both")
        return int(getattr(param, h_field)), int(getattr(param, w_field))
    if not values:
        return default, default
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise ValueError(f"{len(values)} values given; only 2-D (h, w) is supported")


@register("Convolution")
class Convolution(Layer):
    """Caffe's Convolution: weights (num_output, C/group, kh, kw), optional bias (num_output);
    several bottom/top pairs share the weights."""

    bottoms = (1, None)
    tops = (1, None)

    def setup(self, bottom_shapes):
        cp = self.param.convolution_param
        if len(bottom_shapes) != len(self.param.top):
            self.fail("needs one top per bottom")
        if cp.axis not in (1, -3):
            self.fail(f"axis {cp.axis} is not supported (channels must be axis 1)")
        try:
            self.kernel = _pair(cp, cp.kernel_size, "kernel_h", "kernel_w", 0)
            self.pad = _pair(cp, cp.pad, "pad_h", "pad_w", 0)
            self.stride = _pair(cp, cp.stride, "stride_h", "stride_w", 1)
            self.dilation = _pair(cp, cp.dilation, None, None, 1)
        except ValueError as err:
            self.fail(str(err))
        if min(self.kernel) <= 0:
            self.fail(f"kernel size must be positive, got {self.kernel}")
        if min(self.stride) <= 0 or min(self.dilation) <= 0:
            self.fail("stride and dilation must be positive")
        if not cp.HasField("num_output") or cp.num_output <= 0:
            self.fail("num_output must be given and positive")
        shape = bottom_shapes[0]
        if len(shape) != 4:
            self.fail(f"needs a 4-D bottom (N, C, H, W), got shape {tuple(shape)}")
        self.group = int(cp.group)
        channels, outputs = shape[1], int(cp.num_output)
        if self.group <= 0 or channels % self.group or outputs % self.group:
            self.fail(f"group {self.group} must divide the input channels ({channels}) and "
                      f"num_output ({outputs})")
        self.channels = channels
        specs = [((outputs, channels // self.group) + self.kernel,
                  filler_or_none(cp, "weight_filler"), 0.0)]
        if cp.bias_term:
            specs.append(((outputs,), filler_or_none(cp, "bias_filler"), 0.0))
        self.make_params(specs)

    def reshape(self, bottom_shapes):
        tops = []
        for shape in bottom_shapes:
            if len(shape) != 4 or shape[1] != self.channels or shape != bottom_shapes[0]:
                self.fail(f"bottom shape {tuple(shape)} does not match the first bottom "
                          f"{tuple(bottom_shapes[0])} with {self.channels} channels")
            out = [shape[0], self.param.convolution_param.num_output]
            tops.append(tuple(out + [self.output_size(shape, i) for i in range(2)]))
        return tops

    def output_size(self, shape, i):
        """Caffe's output extent along spatial axis `i` of a bottom of `shape`."""
        extent = self.dilation[i] * (self.kernel[i] - 1) + 1
        size = (shape[2 + i] + 2 * self.pad[i] - extent) // self.stride[i] + 1
        if size <= 0:
            self.fail(f"kernel {self.kernel} does not fit input {tuple(shape[2:])} "
                      f"with pad {self.pad}")
        return size

    def forward(self, bottoms, params):
        weight = params[0]
        bias = params[1] if len(params) > 1 else None
        return [F.conv2d(x, weight, bias, self.stride, self.pad, self.dilation, self.group)
                for x in bottoms]


@register("Deconvolution")
class Deconvolution(Convolution):
    """Caffe's Deconvolution (the transpose of Convolution): weights (C, num_output/group, kh,
    kw), output size stride * (in - 1) + dilation * (kernel - 1) + 1 - 2 * pad."""

    def make_params(self, specs):
        (shape, filler, default), *rest = specs
        outputs = shape[0]
        transposed = (self.channels, outputs // self.group) + tuple(shape[2:])
        super().make_params([(transposed, filler, default)] + rest)

    def output_size(self, shape, i):
        extent = self.dilation[i] * (self.kernel[i] - 1) + 1
        size = self.stride[i] * (shape[2 + i] - 1) + extent - 2 * self.pad[i]
        if size <= 0:
            self.fail(f"output size {size} along axis {2 + i} is not positive")
        return size

    def forward(self, bottoms, params):
        weight = params[0]
        bias = params[1] if len(params) > 1 else None
        return [F.conv_transpose2d(x, weight, bias, self.stride, self.pad, 0, self.group,
                                   self.dilation) for x in bottoms]


def pooled_size(size, kernel, pad, stride, ceil_mode=True):
    """Caffe's pooled output size along one axis."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@functools.lru_cache(maxsize=64)
def _ave_divisor(size_h, size_w, kernel, pad, stride, out_h, out_w):
    """Caffe's AVE pool divisor per output cell: the window clipped to the padded image."""
    def one(size, k, p, s, out):
        start = torch.arange(out) * s - p
        end = torch.clamp(start + k, max=size + p)
        return (end - start).float()
    dh = one(size_h, kernel[0], pad[0], stride[0], out_h)
    dw = one(size_w, kernel[1], pad[1], stride[1], out_w)
    return dh[:, None] * dw[None, :]


@register("Pooling")
class Pooling(Layer):
    """Caffe's Pooling (MAX, AVE; global pooling) with its ceil-mode sizes and edge rules."""

    bottoms = (1, 1)
    tops = (1, 1)

    def setup(self, bottom_shapes):
        pp = self.param.pooling_param
        if pp.pool not in (pb.PoolingParameter.MAX, pb.PoolingParameter.AVE):
            self.fail("only MAX and AVE pooling are supported (STOCHASTIC is not)")
        self.method = pp.pool
        self.global_pooling = pp.global_pooling
        single = lambda field: [getattr(pp, field)] if pp.HasField(field) else []  # noqa: E731
        try:
            if self.global_pooling:
                if pp.HasField("kernel_size") or pp.HasField("kernel_h"):
                    raise ValueError("with global_pooling the kernel size cannot be given")
                self.kernel = None
            else:
                self.kernel = _pair(pp, single("kernel_size"), "kernel_h", "kernel_w", None)
                if self.kernel[0] is None:
                    self.kernel = None
            self.pad = _pair(pp, single("pad"), "pad_h", "pad_w", 0)
            self.stride = _pair(pp, single("stride"), "stride_h", "stride_w", 1)
        except ValueError as err:
            self.fail(str(err))
        if self.kernel is None and not self.global_pooling:
            self.fail("kernel_size (or kernel_h and kernel_w) is required")
        if self.kernel is not None and min(self.kernel) <= 0:
            self.fail(f"kernel size must be positive, got {self.kernel}")
        if self.global_pooling and (any(self.pad) or self.stride != (1, 1)):
            self.fail("with global_pooling, pad must be 0 and stride 1")
        if any(self.pad) and self.kernel is not None and (
                self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]):
            self.fail(f"pad {self.pad} must be smaller than the kernel {self.kernel}")
        if min(self.stride) <= 0:
            self.fail("stride must be positive")

    def _geometry(self, shape):
        if len(shape) != 4:
            self.fail(f"needs a 4-D bottom (N, C, H, W), got shape {tuple(shape)}")
        kernel = (shape[2], shape[3]) if self.global_pooling else self.kernel
        out = tuple(pooled_size(shape[2 + i], kernel[i], self.pad[i], self.stride[i])
                    for i in range(2))
        if min(out) <= 0:
            self.fail(f"kernel {kernel} does not fit input {tuple(shape[2:])}")
        return kernel, out

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        _, out = self._geometry(shape)
        return [(shape[0], shape[1]) + out]

    def forward(self, bottoms, params):
        x = bottoms[0]
        shape = tuple(x.shape)
        kernel, (out_h, out_w) = self._geometry(shape)
        is_max = self.method == pb.PoolingParameter.MAX
        # torch's ceil mode clips windows and divides AVE sums as Caffe does; its output size
        # differs from Caffe's only without padding and with stride > kernel, and it takes
        # padding up to half the kernel. Anything else pads explicitly.
        fits = all(2 * p <= k for p, k in zip(self.pad, kernel)) and \
            all(_torch_ceil_size(shape[2 + i], kernel[i], self.pad[i], self.stride[i]) == out
                for i, out in enumerate((out_h, out_w)))
        if fits:
            if is_max:
                return [F.max_pool2d(x, kernel, self.stride, self.pad, ceil_mode=True)]
            return [F.avg_pool2d(x, kernel, self.stride, self.pad, ceil_mode=True,
                                 count_include_pad=True)]
        # Pad so that every Caffe window lies inside: pad on the top/left, and on the bottom/right
        # as far as the last (ceil-mode) window reaches.
        extra = [max(0, (out - 1) * s + k - size - p) for out, s, k, size, p in
                 ((out_h, self.stride[0], kernel[0], shape[2], self.pad[0]),
                  (out_w, self.stride[1], kernel[1], shape[3], self.pad[1]))]
        padding = (self.pad[1], extra[1], self.pad[0], extra[0])
        if is_max:
            if any(padding):
                x = F.pad(x, padding, value=float("-inf"))
            y = F.max_pool2d(x, kernel, self.stride)
            return [y[:, :, :out_h, :out_w]]
        if any(padding):
            x = F.pad(x, padding, value=0.0)
        sums = F.avg_pool2d(x, kernel, self.stride, divisor_override=1)[:, :, :out_h, :out_w]
        divisor = _ave_divisor(shape[2], shape[3], tuple(kernel), self.pad, self.stride,
                               out_h, out_w).to(device=sums.device, dtype=sums.dtype)
        return [sums / divisor]


def _torch_ceil_size(size, kernel, pad, stride):
    """PyTorch's ceil-mode pooled size (pooling_output_shape)."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


@register("LRN")
class LRN(Layer):
    """Caffe's local response normalization: top = x * scale^-beta."""

    bottoms = (1, 1)
    tops = (1, 1)

    def setup(self, bottom_shapes):
        lp = self.param.lrn_param
        self.size = int(lp.local_size)
        if self.size % 2 == 0:
            self.fail(f"local_size must be odd, got {self.size}")
        self.alpha, self.beta, self.k = float(lp.alpha), float(lp.beta), float(lp.k)
        self.region = lp.norm_region

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) != 4:
            self.fail(f"needs a 4-D bottom (N, C, H, W), got shape {tuple(shape)}")
        return [tuple(shape)]

    def forward(self, bottoms, params):
        x = bottoms[0]
        half = (self.size - 1) // 2
        square = x * x
        if self.region == pb.LRNParameter.ACROSS_CHANNELS:
            # mean of squares over `size` channels, zero-padded: alpha * mean = alpha/n * sum
            mean = F.avg_pool3d(square.unsqueeze(1), (self.size, 1, 1), stride=1,
                                padding=(half, 0, 0), count_include_pad=True).squeeze(1)
            scale = self.k + self.alpha * mean
        else:
            mean = F.avg_pool2d(square, self.size, 1, half, count_include_pad=True)
            scale = 1.0 + self.alpha * mean
        return [x * scale.pow(-self.beta)]
