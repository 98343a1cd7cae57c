"""InnerProduct, Softmax, Concat, Flatten, Reshape, Split, Eltwise, Silence."""
import torch
import torch.nn.functional as F

from ....proto import pb
from .base import Layer, canonical_axis, count, filler_or_none
from . import register


@register("InnerProduct")
class InnerProduct(Layer):
    """top = bottom (flattened from `axis`) x W^T + b; W is (num_output, K), or (K, num_output)
    with transpose."""

    bottoms = (1, 1)
    tops = (1, 1)

    def setup(self, bottom_shapes):
        ip = self.param.inner_product_param
        if not ip.HasField("num_output") or ip.num_output <= 0:
            self.fail("num_output must be given and positive")
        shape = bottom_shapes[0]
        self.axis = canonical_axis(ip.axis, len(shape), self.where)
        self.outputs = int(ip.num_output)
        self.inputs = count(shape, self.axis)
        self.transpose = ip.transpose
        weight_shape = ((self.inputs, self.outputs) if self.transpose
                        else (self.outputs, self.inputs))
        specs = [(weight_shape, filler_or_none(ip, "weight_filler"), 0.0)]
        if ip.bias_term:
            specs.append(((self.outputs,), filler_or_none(ip, "bias_filler"), 0.0))
        self.make_params(specs)

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        axis = canonical_axis(self.param.inner_product_param.axis, len(shape), self.where)
        if count(shape, axis) != self.inputs:
            self.fail(f"input size {count(shape, axis)} (shape {tuple(shape)} from axis {axis}) "
                      f"is incompatible with the weights' {self.inputs}")
        return [tuple(shape[:axis]) + (self.outputs,)]

    def forward(self, bottoms, params):
        x = bottoms[0]
        lead = tuple(x.shape[:self.axis])
        flat = x.reshape(count(lead), self.inputs)
        weight = params[0].t() if self.transpose else params[0]
        bias = params[1] if len(params) > 1 else None
        return [F.linear(flat, weight, bias).reshape(lead + (self.outputs,))]


@register("Softmax")
class Softmax(Layer):
    bottoms = (1, 1)
    tops = (1, 1)

    def reshape(self, bottom_shapes):
        self.axis = canonical_axis(self.param.softmax_param.axis, len(bottom_shapes[0]),
                                   self.where)
        return [tuple(bottom_shapes[0])]

    def forward(self, bottoms, params):
        return [torch.softmax(bottoms[0], dim=self.axis)]


@register("Concat")
class Concat(Layer):
    bottoms = (1, None)
    tops = (1, 1)

    def reshape(self, bottom_shapes):
        cp = self.param.concat_param
        first = tuple(bottom_shapes[0])
        if cp.HasField("concat_dim"):
            self.axis = int(cp.concat_dim)
            if self.axis >= len(first):
                self.fail(f"concat_dim {self.axis} out of range for a {len(first)}-D blob")
        else:
            self.axis = canonical_axis(cp.axis, len(first), self.where)
        total = 0
        for shape in bottom_shapes:
            shape = tuple(shape)
            if len(shape) != len(first) or any(a != b for i, (a, b) in enumerate(zip(shape, first))
                                               if i != self.axis):
                self.fail(f"bottom shapes {first} and {shape} differ outside axis {self.axis}")
            total += shape[self.axis]
        return [first[:self.axis] + (total,) + first[self.axis + 1:]]

    def forward(self, bottoms, params):
        return [torch.cat(bottoms, dim=self.axis)]


@register("Flatten")
class Flatten(Layer):
    bottoms = (1, 1)
    tops = (1, 1)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        fp = self.param.flatten_param
        start = canonical_axis(fp.axis, len(shape), self.where)
        end = canonical_axis(fp.end_axis, len(shape), self.where)
        if end < start:
            self.fail(f"end_axis {fp.end_axis} comes before axis {fp.axis}")
        return [shape[:start] + (count(shape, start, end + 1),) + shape[end + 1:]]

    def forward(self, bottoms, params):
        return [bottoms[0].reshape(self.reshape([tuple(bottoms[0].shape)])[0])]


@register("Reshape")
class Reshape(Layer):
    """Caffe's Reshape: 0 copies the bottom's dimension, -1 is inferred; `axis`/`num_axes`
    choose the span of bottom axes replaced."""

    bottoms = (1, 1)
    tops = (1, 1)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        rp = self.param.reshape_param
        dims = [int(d) for d in rp.shape.dim]
        if dims.count(-1) > 1:
            self.fail("the new shape has more than one -1 dimension")
        if any(d < -1 for d in dims):
            self.fail(f"dimensions must be >= -1, got {dims}")
        start = rp.axis if rp.axis >= 0 else len(shape) + rp.axis + 1
        if not 0 <= start <= len(shape):
            self.fail(f"axis {rp.axis} out of range for a {len(shape)}-D bottom")
        if rp.num_axes < -1:
            self.fail("num_axes must be >= 0, or -1 for all")
        end = len(shape) if rp.num_axes == -1 else start + rp.num_axes
        if end > len(shape):
            self.fail(f"axis + num_axes = {end} is out of range for a {len(shape)}-D bottom")
        top = list(shape[:start]) + dims + list(shape[end:])
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= len(shape):
                    self.fail("the new shape has a 0 without a bottom axis to copy")
                top[start + i] = shape[start + i]
        if -1 in dims:
            known = count([d for j, d in enumerate(top) if j != start + dims.index(-1)])
            total = count(shape)
            if known == 0 or total % known:
                self.fail(f"bottom count ({total}) must be divisible by the product of the "
                          f"specified dimensions ({known})")
            top[start + dims.index(-1)] = total // known
        if count(top) != count(shape):
            self.fail(f"output count {count(top)} must match input count {count(shape)}")
        return [tuple(top)]

    def forward(self, bottoms, params):
        return [bottoms[0].reshape(self.reshape([tuple(bottoms[0].shape)])[0])]


@register("Split")
class Split(Layer):
    """One blob under several names (Caffe inserts it where a blob feeds several layers; here
    the net sums the gradients of a blob consumed twice itself, so Split only runs when a net
    names it)."""

    bottoms = (1, 1)
    tops = (1, None)

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])] * len(self.param.top)

    def forward(self, bottoms, params):
        x = bottoms[0]
        return [x.view(x.shape) for _ in self.param.top]


class _EltwiseMax(torch.autograd.Function):
    """Caffe's Eltwise MAX: between the first two bottoms a tie goes to the second, later bottoms
    win only when strictly greater; the gradient flows to the winner alone."""

    @staticmethod
    def forward(ctx, *bottoms):
        winner = torch.where(bottoms[0] > bottoms[1], 0, 1).to(torch.uint8)
        top = torch.where(winner == 0, bottoms[0], bottoms[1])
        for i, b in enumerate(bottoms[2:], start=2):
            better = b > top
            top = torch.where(better, b, top)
            winner = torch.where(better, torch.full_like(winner, i), winner)
        ctx.save_for_backward(winner)
        ctx.count = len(bottoms)
        return top

    @staticmethod
    def backward(ctx, grad):
        (winner,) = ctx.saved_tensors
        return tuple(grad * (winner == i) for i in range(ctx.count))


@register("Eltwise")
class Eltwise(Layer):
    bottoms = (2, None)
    tops = (1, 1)

    def setup(self, bottom_shapes):
        ep = self.param.eltwise_param
        self.operation = ep.operation
        self.coeff = list(ep.coeff)
        if self.coeff and len(self.coeff) != len(bottom_shapes):
            self.fail(f"takes one coeff per bottom ({len(bottom_shapes)}), got {len(self.coeff)}")
        if self.coeff and self.operation != pb.EltwiseParameter.SUM:
            self.fail("coeff is only allowed with operation SUM")

    def reshape(self, bottom_shapes):
        first = tuple(bottom_shapes[0])
        for shape in bottom_shapes[1:]:
            if tuple(shape) != first:
                self.fail(f"bottom shapes differ: {first} and {tuple(shape)}")
        return [first]

    def forward(self, bottoms, params):
        if self.operation == pb.EltwiseParameter.SUM:
            coeff = self.coeff or [1.0] * len(bottoms)
            top = bottoms[0] * coeff[0] if coeff[0] != 1.0 else bottoms[0]
            for c, b in zip(coeff[1:], bottoms[1:]):
                top = top + (b * c if c != 1.0 else b)
            return [top]
        if self.operation == pb.EltwiseParameter.PROD:
            top = bottoms[0]
            for b in bottoms[1:]:
                top = top * b
            return [top]
        return [_EltwiseMax.apply(*bottoms)]


@register("Silence")
class Silence(Layer):
    bottoms = (1, None)
    tops = (0, 0)

    def reshape(self, bottom_shapes):
        return []

    def forward(self, bottoms, params):
        return []
