"""Caffe's weight fillers (include/caffe/filler.hpp): same distributions, torch's random stream.

>>> import torch
>>> from dlbhc_caffe.proto import pb
>>> g = torch.Generator().manual_seed(0)
>>> w = fill((4, 3, 2, 2), pb.FillerParameter(type="xavier"), g)
>>> bound = (3 / 12) ** 0.5          # fan_in = 3*2*2
>>> bool(w.abs().max() <= bound), tuple(w.shape)
(True, (4, 3, 2, 2))
"""
import math

import torch

from ...proto import pb

FILLER_TYPES = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra",
                "bilinear")


def _fans(shape):
    count = math.prod(shape)
    fan_in = count // shape[0] if shape and shape[0] else count
    channels = shape[1] if len(shape) > 1 else 1
    fan_out = count // channels if channels else count
    return fan_in, fan_out


def _variance_n(param, shape):
    fan_in, fan_out = _fans(shape)
    if param.variance_norm == pb.FillerParameter.FAN_OUT:
        return float(fan_out)
    if param.variance_norm == pb.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return float(fan_in)


def fill(shape, param, generator, where="filler"):
    """A float32 CPU tensor of `shape` drawn as Caffe's filler `param` (a FillerParameter)
    would; `where` names the layer in errors."""
    shape = tuple(int(d) for d in shape)
    kind = param.type
    out = torch.empty(shape, dtype=torch.float32)
    if kind == "constant":
        return out.fill_(param.value)
    if kind == "uniform":
        return out.uniform_(param.min, param.max, generator=generator)
    if kind == "gaussian":
        out.normal_(param.mean, param.std, generator=generator)
        if param.sparse >= 0:
            if not shape:
                raise ValueError(f"{where}: a sparse gaussian filler needs a blob with axes")
            keep = min(1.0, param.sparse / shape[0])
            mask = torch.empty(shape).bernoulli_(keep, generator=generator)
            out.mul_(mask)
        return out
    if kind == "positive_unitball":
        out.uniform_(0, 1, generator=generator)
        rows = out.reshape(shape[0] if shape else 1, -1)
        rows.div_(rows.sum(dim=1, keepdim=True))
        return out
    if kind == "xavier":
        scale = math.sqrt(3.0 / _variance_n(param, shape))
        return out.uniform_(-scale, scale, generator=generator)
    if kind == "msra":
        std = math.sqrt(2.0 / _variance_n(param, shape))
        return out.normal_(0.0, std, generator=generator)
    if kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise ValueError(f"{where}: the bilinear filler needs a 4-D blob with square kernels, "
                             f"got shape {shape}")
        f = math.ceil(shape[3] / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        x = torch.arange(shape[3], dtype=torch.float64)
        weights = 1 - (x / f - c).abs()
        kernel = (weights[:, None] * weights[None, :]).float()
        out.copy_(kernel.expand(shape))
        return out
    raise ValueError(f"{where}: unknown filler type '{kind}' (known: {', '.join(FILLER_TYPES)})")


def default_filler(value=0.0):
    """The filler Caffe uses when a layer names none: constant `value`."""
    return pb.FillerParameter(type="constant", value=value)
