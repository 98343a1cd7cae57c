"""Layers that cut, repeat, reduce or index blobs: Crop, Slice, Tile, Reduction, ArgMax, Embed.

Crop: the tops take bottom 1's size on every axis from `axis` on, starting at `offset` (one value
for all cropped axes, or one per axis); only bottom 0 gets a gradient. Slice: along `axis` (or
the legacy `slice_dim`) at `slice_point`s, or in equal parts. Tile: the whole block from `axis`
on repeated `tiles` times. Reduction: SUM, ASUM, SUMSQ or MEAN over every axis from `axis` on,
times `coeff`. ArgMax: the top_k indices (and values with out_max_val) over `axis`, or over each
item's flattened values; ties rank the higher index first (Caffe's partial_sort of (value,
index) pairs); no gradient. Embed: rows of a (input_dim, num_output) table picked by integer
inputs, plus a bias; no gradient to the indices.
"""
import torch

from ....proto import pb
from .base import Layer, canonical_axis, count, filler_or_none
from . import register


@register("Crop")
class Crop(Layer):
    bottoms = (2, 2)
    tops = (1, 1)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottom_shapes):
        shape, like = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        cp = self.param.crop_param
        start = canonical_axis(cp.axis, len(shape), self.where)
        offsets = list(cp.offset)
        if len(offsets) > 1 and len(offsets) != len(shape) - start:
            self.fail(f"give one offset, or one per cropped axis ({len(shape) - start}), got "
                      f"{len(offsets)}")
        if len(like) != len(shape):
            self.fail(f"bottoms {shape} and {like} have different numbers of axes")
        self.slices, top = [], []
        for i, size in enumerate(shape):
            offset, new = 0, size
            if i >= start:
                new = like[i]
                offset = offsets[0] if len(offsets) == 1 else (offsets[i - start] if offsets
                                                               else 0)
                if size - offset < new:
                    self.fail(f"the crop for axis {i} is out of bounds with size {new} and "
                              f"offset {offset} (bottom size {size})")
            self.slices.append(slice(offset, offset + new))
            top.append(new)
        return [tuple(top)]

    def forward(self, bottoms, params):
        self.reshape([tuple(b.shape) for b in bottoms])
        return [bottoms[0][tuple(self.slices)]]


@register("Slice")
class Slice(Layer):
    bottoms = (1, 1)
    tops = (1, None)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        sp = self.param.slice_param
        if sp.HasField("axis") and sp.HasField("slice_dim"):
            self.fail("give either axis or slice_dim, not both")
        if sp.HasField("slice_dim"):
            self.axis = int(sp.slice_dim)
            if self.axis >= len(shape):
                self.fail(f"slice_dim {self.axis} out of range for a {len(shape)}-D bottom")
        else:
            self.axis = canonical_axis(sp.axis, len(shape), self.where)
        size, tops = shape[self.axis], len(self.param.top)
        points = [int(p) for p in sp.slice_point]
        if points:
            if len(points) != tops - 1:
                self.fail(f"{len(points)} slice_point(s) for {tops} tops (need tops - 1)")
            bounds = [0] + points + [size]
            if any(b >= a for a, b in zip(bounds[1:], bounds)) or points[-1] >= size:
                self.fail(f"slice points {points} must increase strictly within 1..{size - 1}")
            self.sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        else:
            if size % tops:
                self.fail(f"number of top blobs ({tops}) should evenly divide input slice axis "
                          f"({size})")
            self.sizes = [size // tops] * tops
        return [shape[:self.axis] + (s,) + shape[self.axis + 1:] for s in self.sizes]

    def forward(self, bottoms, params):
        self.reshape([tuple(bottoms[0].shape)])
        return list(torch.split(bottoms[0], self.sizes, dim=self.axis))


@register("Tile")
class Tile(Layer):
    bottoms = (1, 1)
    tops = (1, 1)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        tp = self.param.tile_param
        self.axis = canonical_axis(tp.axis, len(shape), self.where)
        if not tp.HasField("tiles") or tp.tiles <= 0:
            self.fail("tiles must be given and positive")
        self.tiles = int(tp.tiles)
        return [shape[:self.axis] + (shape[self.axis] * self.tiles,) + shape[self.axis + 1:]]

    def forward(self, bottoms, params):
        x = bottoms[0]
        reps = [1] * x.dim()
        reps[self.axis] = self.tiles
        return [x.repeat(*reps)]


@register("Reduction")
class Reduction(Layer):
    bottoms = (1, 1)
    tops = (1, 1)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        self.axis = canonical_axis(self.param.reduction_param.axis, len(shape), self.where)
        return [shape[:self.axis]]

    def forward(self, bottoms, params):
        rp = self.param.reduction_param
        x = bottoms[0]
        lead = tuple(x.shape[:self.axis])
        flat = x.reshape(lead + (-1,))
        op = rp.operation
        if op == pb.ReductionParameter.ASUM:
            flat = flat.abs()
        elif op == pb.ReductionParameter.SUMSQ:
            flat = flat * flat
        total = flat.sum(dim=-1)
        if op == pb.ReductionParameter.MEAN:
            total = total / max(1, count(tuple(x.shape), self.axis))
        return [total * float(rp.coeff) if rp.coeff != 1.0 else total]


@register("ArgMax")
class ArgMax(Layer):
    bottoms = (1, 1)
    tops = (1, 1)
    has_backward = False

    def allow_force_backward(self, bottom_index):
        return False

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        ap = self.param.argmax_param
        self.top_k = int(ap.top_k)
        self.axis = (canonical_axis(ap.axis, len(shape), self.where) if ap.HasField("axis")
                     else None)
        if self.top_k < 1:
            self.fail("top_k must be at least 1")
        if self.axis is not None:
            if self.top_k > shape[self.axis]:
                self.fail(f"top_k {self.top_k} exceeds axis {self.axis}'s size "
                          f"{shape[self.axis]}")
            return [shape[:self.axis] + (self.top_k,) + shape[self.axis + 1:]]
        if self.top_k > count(shape, 1):
            self.fail(f"top_k {self.top_k} exceeds the {count(shape, 1)} values per item")
        top = [1] * max(3, len(shape))
        top[0], top[2] = shape[0], self.top_k
        if ap.out_max_val:
            top[1] = 2
        return [tuple(top)]

    def forward(self, bottoms, params):
        x = bottoms[0].detach()
        shape = tuple(x.shape)
        (top_shape,) = self.reshape([shape])
        values = x.movedim(self.axis, -1) if self.axis is not None else x.reshape(shape[0], -1)
        size = values.shape[-1]
        # Descending by value, then by index: sort the reversed values stably, map back.
        order = torch.sort(values.flip(-1), dim=-1, descending=True, stable=True).indices
        index = (size - 1 - order[..., :self.top_k])
        best = values.gather(-1, index)
        if self.axis is not None:
            out = best if self.param.argmax_param.out_max_val else index.to(x.dtype)
            return [out.movedim(-1, self.axis).reshape(top_shape)]
        parts = [index.to(x.dtype)] + ([best] if self.param.argmax_param.out_max_val else [])
        return [torch.stack(parts, dim=1).reshape(top_shape)]


@register("Embed")
class Embed(Layer):
    bottoms = (1, 1)
    tops = (1, 1)

    def allow_force_backward(self, bottom_index):
        return False

    def setup(self, bottom_shapes):
        ep = self.param.embed_param
        if ep.num_output <= 0 or ep.input_dim <= 0:
            self.fail("num_output and input_dim must be positive")
        self.outputs, self.inputs = int(ep.num_output), int(ep.input_dim)
        specs = [((self.inputs, self.outputs), filler_or_none(ep, "weight_filler"), 0.0)]
        if ep.bias_term:
            specs.append(((self.outputs,), filler_or_none(ep, "bias_filler"), 0.0))
        self.make_params(specs)

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0]) + (self.outputs,)]

    def forward(self, bottoms, params):
        values = bottoms[0].detach()
        index = values.to(torch.int64)
        if bool(((index < 0) | (index >= self.inputs) | (index.to(values.dtype) != values))
                .any()):
            self.fail(f"inputs must be integers in [0, {self.inputs}) (input_dim)")
        top = params[0][index.reshape(-1)].reshape(tuple(values.shape) + (self.outputs,))
        return [top + params[1] if len(params) > 1 else top]
