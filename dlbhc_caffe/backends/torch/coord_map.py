"""pycaffe's `caffe.coord_map`: how the spatial coordinates of one top map onto another's through
a NetSpec graph, and `crop(top_from, top_to)` to align them with a Crop layer (as FCN does).

A map is (axis, scale a, shift b): output coordinate i * a + b comes from input coordinate i.
Convolution and Pooling divide by the stride and shift by (pad - (extent - 1) / 2) / stride;
Deconvolution multiplies by the stride and shifts by (extent - 1) / 2 - pad; Crop shifts by
-offset; element-wise layers map the identity (axis None). Maps compose along the graph; the
mapping between two tops goes through their nearest common ancestor.

>>> from .net_spec import NetSpec, layers as L
>>> n = NetSpec()
>>> n.data = L.Input(shape=dict(dim=[1, 1, 32, 32]))
>>> n.conv = L.Convolution(n.data, num_output=1, kernel_size=3, pad=1)
>>> coord_map_from_to(n.conv, n.data)
(1, array([1.]), array([0.]))
"""
import numpy as np

from .net_spec import layers as L

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log",
                       "LRN", "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid",
                       "Split", "TanH", "Threshold"]


class UndefinedMapException(Exception):
    """The layer has no coordinate mapping (it is not spatial)."""


class AxisMismatchException(Exception):
    """Two maps act on different axes."""


def conv_params(fn):
    """(axis, stride, kernel extent, pad) of a Convolution/Deconvolution/Pooling/Im2col layer."""
    params = fn.params.get("convolution_param", fn.params)
    legacy = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(fn.params)
    assert not legacy, "cropping does not support legacy _h/_w params"
    kernel = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (params.get("axis", 1), np.array(params.get("stride", 1), ndmin=1),
            (kernel - 1) * dilation + 1, np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn):
    """(axis, offset) of a Crop layer, with Caffe's defaults (axis 2, offset 0)."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn):
    """The (axis, scale, shift) map of one layer, from its bottom to its top."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, extent, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # axis - 1: the last non-coordinate axis
    raise UndefinedMapException(fn.type_name)


def compose(base_map, next_map):
    """`next_map` applied after `base_map`: scales multiply, the later shift is scaled."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        axis = ax2
    elif ax2 is None or ax1 == ax2:
        axis = ax1
    else:
        raise AxisMismatchException
    return axis, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    """The map back from top to bottom."""
    axis, a, b = coord_map
    return axis, 1 / a, -b / a


def _mappable_bottoms(top):
    # Crop maps only its first bottom; the second only gives the size.
    inputs = top.fn.inputs
    return inputs[:1] if top.fn.type_name == "Crop" else inputs


def _walk(start, found=None):
    """Maps from `start` back to each ancestor; with `found` (ancestor maps of another top),
    stop at the first shared ancestor and return (ancestor, map to it)."""
    maps = {start: (None, 1, 0)}
    frontier = {start}
    while frontier:
        top = frontier.pop()
        if found is not None and top in found:
            return top, maps[top]
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(top):
            maps[bottom] = compose(maps[top], step)
            frontier.add(bottom)
    return maps if found is None else None


def coord_map_from_to(top_from, top_to):
    """The (axis, scale, shift) map from the coordinates of `top_from` to those of `top_to`."""
    from_maps = _walk(top_from)
    meeting = _walk(top_to, from_maps)
    if meeting is None:
        raise RuntimeError("Could not compute map between tops; are they connected by spatial "
                           "layers?")
    common, to_map = meeting
    return compose(to_map, inverse(from_maps[common]))


def crop(top_from, top_to):
    """A Crop layer cropping `top_from` to the extent of `top_to`, at the offset their
    coordinate map gives (same scale, non-negative integer offsets required)."""
    axis, a, b = coord_map_from_to(top_from, top_to)
    assert (a == 1).all(), f"scale mismatch on crop (a = {a})"
    assert (b <= 0).all(), f"cannot crop negative offset (b = {b})"
    assert (np.round(b) == b).all(), f"cannot crop noninteger offset (b = {b})"
    return L.Crop(top_from, top_to, crop_param=dict(
        axis=axis + 1, offset=list(-np.round(b).astype(int))))


__all__ = ["coord_map", "coord_map_from_to", "crop", "compose", "inverse", "conv_params",
           "crop_params", "UndefinedMapException", "AxisMismatchException",
           "PASS_THROUGH_LAYERS"]
