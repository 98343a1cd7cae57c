"""Caffe's shape rules for Convolution, Deconvolution, Pooling, LRN and Crop (see rules.shapes).

Convolution's output is (size + 2 pad - dilated kernel) / stride + 1; Pooling's is Caffe's ceil
mode with the last window dropped when it would start in the padding; both refuse a kernel larger
than the padded input, which Caffe turns into a negative blob dimension and an abort.
"""
from ..proto import pb
from .shapes import ShapeError, _rule, canonical_axis


def _dims(param, name, h_field, w_field, spatial, default):
    """A conv geometry field: its _h/_w pair (2-D only), or the repeated field given once or once
    per spatial axis."""
    has_hw = h_field and (param.HasField(h_field) or param.HasField(w_field))
    values = list(getattr(param, name))
    if has_hw:
        if spatial != 2:
            raise ShapeError(f"{h_field} & {w_field} can only be used for 2-D convolution")
        if values:
            raise ShapeError(f"give either {name} or {h_field}/{w_field}, not both")
        return [int(getattr(param, h_field)), int(getattr(param, w_field))]
    if not values:
        if default is None:
            raise ShapeError(f"{name} is required")
        return [default] * spatial
    if len(values) not in (1, spatial):
        raise ShapeError(f"{name} must be given once or once per spatial axis ({spatial}), "
                         f"got {len(values)}")
    return [int(values[0 if len(values) == 1 else i]) for i in range(spatial)]


def _conv_setup(layer, bottoms):
    cp = layer.convolution_param
    axis = canonical_axis(cp.axis, len(bottoms[0]))
    spatial = len(bottoms[0]) - axis - 1
    if spatial < 1:
        raise ShapeError(f"needs spatial axes after the channel axis {axis}, got a "
                         f"{len(bottoms[0])}-D bottom")
    kernel = _dims(cp, "kernel_size", "kernel_h", "kernel_w", spatial, None)
    stride = _dims(cp, "stride", "stride_h", "stride_w", spatial, 1)
    pad = _dims(cp, "pad", "pad_h", "pad_w", spatial, 0)
    dilation = _dims(cp, "dilation", None, None, spatial, 1)
    if min(kernel) <= 0:
        raise ShapeError(f"kernel size must be positive, got {kernel}")
    if min(stride) <= 0:
        raise ShapeError(f"stride must be positive, got {stride}")
    if min(dilation) <= 0:
        raise ShapeError(f"dilation must be positive, got {dilation}")
    if cp.num_output <= 0:
        raise ShapeError(f"num_output must be positive, got {cp.num_output}")
    channels, outputs, group = bottoms[0][axis], cp.num_output, cp.group
    if group <= 0 or channels % group or outputs % group:
        raise ShapeError(f"group {group} must divide the input channels ({channels}) and "
                         f"num_output ({outputs})")
    for shape in bottoms[1:]:
        if shape != bottoms[0]:
            raise ShapeError(f"all bottoms must have the same shape: {bottoms[0]} and {shape}")
    if len(layer.top) != len(bottoms):
        raise ShapeError(f"needs one top per bottom ({len(bottoms)}), got {len(layer.top)}")
    return axis, kernel, stride, pad, dilation, channels, outputs, group


@_rule("Convolution", "Deconvolution", bottoms=(1, None), tops=(1, None))
def _convolution(layer, bottoms):
    axis, kernel, stride, pad, dilation, channels, outputs, group = _conv_setup(layer, bottoms)
    shape = bottoms[0]
    out = []
    for size, k, s, p, d in zip(shape[axis + 1:], kernel, stride, pad, dilation):
        extent = d * (k - 1) + 1
        if layer.type == "Deconvolution":
            out.append(s * (size - 1) + extent - 2 * p)
            continue
        if extent > size + 2 * p:
            raise ShapeError(f"kernel {kernel} (dilated extent {extent}) is larger than the "
                             f"input {tuple(shape[axis + 1:])} with pad {pad}")
        out.append((size + 2 * p - extent) // s + 1)
    if min(out) <= 0:
        raise ShapeError(f"output size {out} is empty for input {tuple(shape[axis + 1:])}")
    top = shape[:axis] + (outputs,) + tuple(out)
    weight = ((outputs, channels // group) if layer.type == "Convolution"
              else (channels, outputs // group)) + tuple(kernel)
    params = [weight] + ([(outputs,)] if layer.convolution_param.bias_term else [])
    return [top] * len(bottoms), params


def pooled_size(size, kernel, pad, stride):
    """Caffe's pooled output size along one axis (ceil mode; the last window must start inside
    the image or its padding)."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@_rule("Pooling", bottoms=(1, 1), tops=(1, 2))
def _pooling(layer, bottoms):
    pp = layer.pooling_param
    has = {f: pp.HasField(f) for f in ("kernel_size", "kernel_h", "kernel_w", "pad", "pad_h",
                                       "pad_w", "stride", "stride_h", "stride_w")}
    if len(layer.top) == 2 and pp.pool != pb.PoolingParameter.MAX:
        raise ShapeError("only MAX pooling has a second (mask) top")
    shape = bottoms[0]
    if len(shape) != 4:
        raise ShapeError(f"needs a 4-D bottom (N, C, H, W), got shape {shape}")
    if pp.global_pooling:
        if has["kernel_size"] or has["kernel_h"] or has["kernel_w"]:
            raise ShapeError("with global_pooling the kernel size cannot be given")
        kernel = list(shape[2:])
    else:
        if has["kernel_size"] == (has["kernel_h"] and has["kernel_w"]):
            raise ShapeError("give kernel_size, or kernel_h and kernel_w (not both, not neither)")
        kernel = ([pp.kernel_size] * 2 if has["kernel_size"] else [pp.kernel_h, pp.kernel_w])
    pair = {}
    for name, default in (("pad", 0), ("stride", 1)):
        if has[name] and (has[name + "_h"] or has[name + "_w"]) or \
                has[name + "_h"] != has[name + "_w"]:
            raise ShapeError(f"give {name}, or {name}_h and {name}_w")
        pair[name] = ([getattr(pp, name + "_h"), getattr(pp, name + "_w")]
                      if has[name + "_h"] else [getattr(pp, name)] * 2)
    pad, stride = pair["pad"], pair["stride"]
    if min(kernel) <= 0:
        raise ShapeError(f"kernel size must be positive, got {kernel}")
    if min(stride) <= 0:
        raise ShapeError(f"stride must be positive, got {stride}")
    if pp.global_pooling and (any(pad) or stride != [1, 1]):
        raise ShapeError("with global_pooling, pad must be 0 and stride 1")
    if any(pad):
        if pp.pool not in (pb.PoolingParameter.MAX, pb.PoolingParameter.AVE):
            raise ShapeError("padding is implemented only for MAX and AVE pooling")
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise ShapeError(f"pad {pad} must be smaller than the kernel {kernel}")
    out = [pooled_size(shape[2 + i], kernel[i], pad[i], stride[i]) for i in range(2)]
    if min(out) <= 0:
        raise ShapeError(f"kernel {kernel} is larger than the input {shape[2:]} with pad {pad}")
    return [shape[:2] + tuple(out)] * len(layer.top), []


@_rule("LRN")
def _lrn(layer, bottoms):
    size = layer.lrn_param.local_size
    if size % 2 == 0:
        raise ShapeError(f"local_size must be odd, got {size}")
    if len(bottoms[0]) != 4:
        raise ShapeError(f"needs a 4-D bottom (N, C, H, W), got shape {bottoms[0]}")
    return [bottoms[0]], []


@_rule("Crop", bottoms=(2, 2))
def _crop(layer, bottoms):
    cp = layer.crop_param
    big, ref = bottoms
    if len(big) != len(ref):
        raise ShapeError(f"bottoms must have the same number of axes: {big} and {ref}")
    start = canonical_axis(cp.axis, len(big))
    offsets = list(cp.offset)
    if len(offsets) not in (0, 1, len(big) - start):
        raise ShapeError(f"crop_param offset must be given 0, 1 or {len(big) - start} times, "
                         f"got {len(offsets)}")
    top = list(big)
    for i in range(start, len(big)):
        offset = offsets[0 if len(offsets) == 1 else i - start] if offsets else 0
        if big[i] - offset < ref[i]:
            raise ShapeError(f"cannot crop axis {i}: size {big[i]} with offset {offset} is "
                             f"smaller than the reference's {ref[i]}")
        top[i] = ref[i]
    return [tuple(top)], []
