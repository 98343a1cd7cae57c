"""Caffe's shape rules, engine-free: what each layer makes of its bottoms, which learnable blobs
it creates, and which parameters make Caffe abort (a failed CHECK kills the whole process).

`layer_shapes(layer, bottoms)` returns (tops, params) for one LayerParameter and its bottom
shapes, or raises ShapeError with Caffe's reason; a type without a rule here raises
UnknownShapeRule, so the caller can try the net in a child process instead. The rules are Caffe
1.0's LayerSetUp/Reshape checks, plus two Caffe leaves to debug builds or skips (a dropout_ratio
outside [0, 1), an Eltwise of unequal shapes), which this project refuses.

>>> from dlbhc_caffe.proto import parse_text, pb
>>> conv = parse_text('name: "c" type: "Convolution" top: "c" convolution_param { num_output: 8 '
...                   'kernel_size: 3 stride: 2 }', pb.LayerParameter())
>>> layer_shapes(conv, [(1, 3, 9, 9)])
([(1, 8, 4, 4)], [(8, 3, 3, 3), (8,)])
>>> conv.convolution_param.group = 2
>>> layer_shapes(conv, [(1, 3, 9, 9)])
Traceback (most recent call last):
...
dlbhc_caffe.rules.shapes.ShapeError: group 2 must divide the input channels (3) and num_output (8)
"""
import math

from ..errors import DlbhcError
from ..proto import pb

INT_MAX = 2 ** 31 - 1  # Caffe's Blob counts are int: a larger blob is a failed CHECK


class ShapeError(DlbhcError):
    """A layer Caffe would refuse (or abort on); the caller adds the file and the layer."""


class UnknownShapeRule(ShapeError):
    """No engine-free rule for this layer type: only building the net can tell."""


_RULES = {}


def _rule(*types, bottoms=(1, 1), tops=(1, 1)):
    def register(function):
        for name in types:
            _RULES[name] = (function, bottoms, tops)
        return function
    return register


def known_types():
    """The layer types with an engine-free rule."""
    return sorted(_RULES)


def count(shape):
    return math.prod(int(d) for d in shape)


def canonical_axis(axis, num_axes):
    """Caffe's CanonicalAxisIndex: a negative axis counts from the end."""
    if not -num_axes <= axis < max(num_axes, 1) or (num_axes == 0 and axis != 0):
        raise ShapeError(f"axis {axis} out of range for a {num_axes}-D blob")
    return axis + num_axes if axis < 0 else axis


def _counts(kind, n, low, high):
    if n < low or (high is not None and n > high):
        want = str(low) if low == high else (f"at least {low}" if high is None else
                                             f"{low} to {high}")
        raise ShapeError(f"takes {want} {kind} blob(s), got {n}")


def layer_shapes(layer, bottoms):
    """([top shape, ...], [param shape, ...]) of LayerParameter `layer` given its bottom shapes.

    Raises ShapeError with the reason Caffe would refuse it, UnknownShapeRule for a type without
    a rule here.
    """
    entry = _RULES.get(layer.type)
    if entry is None:
        raise UnknownShapeRule(f"no engine-free shape rule for type '{layer.type}'")
    function, bottom_range, top_range = entry
    _counts("bottom", len(bottoms), *bottom_range)
    _counts("top", len(layer.top), *top_range)
    tops, params = function(layer, [tuple(int(d) for d in b) for b in bottoms])
    tops = [tuple(int(d) for d in t) for t in tops]
    for name, shape in zip(layer.top, tops):
        _check_blob(shape, f"top '{name}'")
    for i, shape in enumerate(params):
        _check_blob(shape, f"param {i}")
    return tops, [tuple(int(d) for d in p) for p in params]


def _check_blob(shape, what):
    if any(d < 0 for d in shape):
        raise ShapeError(f"{what} would have shape {shape}: a negative dimension")
    if count(shape) > INT_MAX:
        raise ShapeError(f"{what} would have shape {shape}: {count(shape)} values, more than "
                         f"Caffe's limit of {INT_MAX} per blob")


# ---------------------------------------------------------------- inputs

def _input_shapes(layer, shapes, what):
    n = len(layer.top)
    if len(shapes) not in (0, 1, n):
        raise ShapeError(f"give {what} once, once per top ({n}), or not at all; got "
                         f"{len(shapes)}")
    return [tuple(shapes[0 if len(shapes) == 1 else i]) if shapes else () for i in range(n)]


@_rule("Input", bottoms=(0, 0), tops=(1, None))
def _input(layer, bottoms):
    shapes = [tuple(s.dim) for s in layer.input_param.shape]
    return _input_shapes(layer, shapes, "input_param shape"), []


@_rule("DummyData", bottoms=(0, 0), tops=(1, None))
def _dummy(layer, bottoms):
    dp = layer.dummy_data_param
    legacy = [list(getattr(dp, f)) for f in ("num", "channels", "height", "width")]
    if len(dp.shape) and any(legacy):
        raise ShapeError("give shape or the legacy num/channels/height/width, not both")
    if len(dp.shape) or not any(legacy):
        return _input_shapes(layer, [tuple(s.dim) for s in dp.shape], "shape"), []
    n = len(layer.top)
    for name, values in zip(("num", "channels", "height", "width"), legacy):
        if len(values) not in (1, n):
            raise ShapeError(f"give {name} once or once per top ({n}), got {len(values)}")
    return [tuple(v[0 if len(v) == 1 else i] for v in legacy) for i in range(n)], []


@_rule("MemoryData", bottoms=(0, 0), tops=(2, 2))
def _memory(layer, bottoms):
    mp = layer.memory_data_param
    if min(mp.batch_size, mp.channels, mp.height, mp.width) <= 0:
        raise ShapeError("memory_data_param batch_size, channels, height and width must all be "
                         "positive")
    return [(mp.batch_size, mp.channels, mp.height, mp.width), (mp.batch_size,)], []


# ---------------------------------------------------------------- vision

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


# ---------------------------------------------------------------- common

@_rule("InnerProduct")
def _inner_product(layer, bottoms):
    ip = layer.inner_product_param
    if ip.num_output <= 0:
        raise ShapeError(f"num_output must be positive, got {ip.num_output}")
    shape = bottoms[0]
    axis = canonical_axis(ip.axis, len(shape))
    inputs = count(shape[axis:])
    weight = (inputs, ip.num_output) if ip.transpose else (ip.num_output, inputs)
    params = [weight] + ([(ip.num_output,)] if ip.bias_term else [])
    return [shape[:axis] + (ip.num_output,)], params


_NEURONS = ("ReLU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "ELU", "Threshold")


@_rule("Exp", "Log")
def _exp_log(layer, bottoms):
    base = (layer.exp_param if layer.type == "Exp" else layer.log_param).base
    if base != -1 and not base > 0:
        raise ShapeError(f"base must be strictly positive (or -1 for e), got {base}")
    return [bottoms[0]], []


@_rule(*_NEURONS)
def _neuron(layer, bottoms):
    return [bottoms[0]], []


@_rule("Dropout")
def _dropout(layer, bottoms):
    ratio = layer.dropout_param.dropout_ratio
    if not 0.0 <= ratio < 1.0:  # Caffe checks this only in debug builds (DCHECK)
        raise ShapeError(f"dropout_ratio must be in [0, 1), got {ratio}")
    return [bottoms[0]], []


@_rule("Softmax")
def _softmax(layer, bottoms):
    canonical_axis(layer.softmax_param.axis, len(bottoms[0]))
    return [bottoms[0]], []


@_rule("Concat", bottoms=(1, None))
def _concat(layer, bottoms):
    cp = layer.concat_param
    first = bottoms[0]
    if cp.HasField("axis") and cp.HasField("concat_dim"):
        raise ShapeError("give axis or concat_dim, not both")
    if cp.HasField("concat_dim"):
        axis = cp.concat_dim
        if axis >= len(first):
            raise ShapeError(f"concat_dim {axis} out of range for a {len(first)}-D blob")
    else:
        axis = canonical_axis(cp.axis, len(first))
    total = 0
    for shape in bottoms:
        if len(shape) != len(first) or any(a != b for i, (a, b) in enumerate(zip(shape, first))
                                           if i != axis):
            raise ShapeError(f"bottom shapes {first} and {shape} differ outside axis {axis}")
        total += shape[axis]
    return [first[:axis] + (total,) + first[axis + 1:]], []


@_rule("Flatten")
def _flatten(layer, bottoms):
    shape, fp = bottoms[0], layer.flatten_param
    start = canonical_axis(fp.axis, len(shape))
    end = canonical_axis(fp.end_axis, len(shape))
    if end < start:
        raise ShapeError(f"end_axis {fp.end_axis} comes before axis {fp.axis}")
    return [shape[:start] + (count(shape[start:end + 1]),) + shape[end + 1:]], []


@_rule("Reshape")
def _reshape(layer, bottoms):
    shape, rp = bottoms[0], layer.reshape_param
    dims = [int(d) for d in rp.shape.dim]
    if dims.count(-1) > 1:
        raise ShapeError("the new shape has more than one -1 dimension")
    if any(d < -1 for d in dims):
        raise ShapeError(f"dimensions must be >= -1, got {dims}")
    start = rp.axis if rp.axis >= 0 else len(shape) + rp.axis + 1
    if not 0 <= start <= len(shape):
        raise ShapeError(f"axis {rp.axis} out of range for a {len(shape)}-D bottom")
    if rp.num_axes < -1:
        raise ShapeError("num_axes must be >= 0, or -1 for all")
    end = len(shape) if rp.num_axes == -1 else start + rp.num_axes
    if end > len(shape):
        raise ShapeError(f"axis + num_axes = {end} is out of range for a {len(shape)}-D bottom")
    top = list(shape[:start]) + dims + list(shape[end:])
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= len(shape):
                raise ShapeError("the new shape has a 0 without a bottom axis to copy")
            top[start + i] = shape[start + i]
    if -1 in dims:
        at = start + dims.index(-1)
        known = count(d for j, d in enumerate(top) if j != at)
        if known == 0 or count(shape) % known:
            raise ShapeError(f"bottom count ({count(shape)}) must be divisible by the product of "
                             f"the specified dimensions ({known})")
        top[at] = count(shape) // known
    if count(top) != count(shape):
        raise ShapeError(f"output count {count(top)} must match input count {count(shape)}")
    return [tuple(top)], []


@_rule("Split", tops=(1, None))
def _split(layer, bottoms):
    return [bottoms[0]] * len(layer.top), []


@_rule("Silence", bottoms=(1, None), tops=(0, 0))
def _silence(layer, bottoms):
    return [], []


@_rule("Eltwise", bottoms=(2, None))
def _eltwise(layer, bottoms):
    ep = layer.eltwise_param
    if len(ep.coeff) and len(ep.coeff) != len(bottoms):
        raise ShapeError(f"takes one coeff per bottom ({len(bottoms)}), got {len(ep.coeff)}")
    if len(ep.coeff) and ep.operation != pb.EltwiseParameter.SUM:
        raise ShapeError("coeff is only allowed with operation SUM")
    for shape in bottoms[1:]:
        if shape != bottoms[0]:  # this Caffe build does not check; it reads past the end
            raise ShapeError(f"bottom shapes differ: {bottoms[0]} and {shape}")
    return [bottoms[0]], []


# ---------------------------------------------------------------- normalization

@_rule("BatchNorm")
def _batch_norm(layer, bottoms):
    shape = bottoms[0]
    for i, spec in enumerate(layer.param):
        if i < 3 and spec.lr_mult != 0.0:
            raise ShapeError(f"cannot configure batch normalization statistics as layer "
                             f"parameters (param {i} has lr_mult {spec.lr_mult}, must be 0)")
    if len(shape) < 2:  # Caffe reads shape(1) of the bottom
        raise ShapeError(f"needs a bottom with a channel axis (2-D or more), got shape {shape}")
    return [shape], [(shape[1],), (shape[1],), (1,)]


def _span(shape, axis, num_axes):
    axis = canonical_axis(axis, len(shape)) if shape else 0
    if num_axes < -1:
        raise ShapeError("num_axes must be non-negative, or -1 to extend to the end")
    end = len(shape) if num_axes == -1 else axis + num_axes
    if end > len(shape):
        raise ShapeError(f"axis {axis} + num_axes {num_axes} exceeds the bottom's "
                         f"{len(shape)} axes")
    return axis, tuple(shape[axis:end])


def _operand(bottoms, axis, num_axes):
    """(axis, shape) of a Scale/Bias operand: a learned blob, or the second bottom."""
    if len(bottoms) == 1:
        return _span(bottoms[0], axis, num_axes)
    operand = bottoms[1]
    axis = 0 if not operand else canonical_axis(axis, len(bottoms[0]))
    if bottoms[0][axis:axis + len(operand)] != operand:
        raise ShapeError(f"operand shape {operand} does not match bottom {bottoms[0]} at axis "
                         f"{axis}")
    return axis, operand


@_rule("Scale", bottoms=(1, 2))
def _scale(layer, bottoms):
    sp = layer.scale_param
    _, shape = _operand(bottoms, sp.axis, sp.num_axes)
    params = [shape] if len(bottoms) == 1 else []
    return [bottoms[0]], params + ([shape] if sp.bias_term else [])


@_rule("Bias", bottoms=(1, 2))
def _bias(layer, bottoms):
    bp = layer.bias_param
    _, shape = _operand(bottoms, bp.axis, bp.num_axes)
    return [bottoms[0]], [shape] if len(bottoms) == 1 else []


# ---------------------------------------------------------------- losses

def _outer_inner(shape, axis):
    axis = canonical_axis(axis, len(shape))
    return count(shape[:axis]), count(shape[axis + 1:]), axis


@_rule("SoftmaxWithLoss", bottoms=(2, 2), tops=(1, 2))
def _softmax_loss(layer, bottoms):
    scores, labels = bottoms
    outer, inner, axis = _outer_inner(scores, layer.softmax_param.axis)
    if outer * inner != count(labels):
        raise ShapeError(f"number of labels ({count(labels)}) must match the number of "
                         f"predictions ({outer * inner}) for scores {scores}, axis {axis}")
    return [()] + [scores] * (len(layer.top) - 1), []


@_rule("EuclideanLoss", bottoms=(2, 2))
def _euclidean(layer, bottoms):
    a, b = bottoms
    if not a or not b or a[0] != b[0] or count(a[1:]) != count(b[1:]):
        raise ShapeError(f"bottoms {a} and {b} must have the same first dimension and count")
    return [()], []


@_rule("Accuracy", bottoms=(2, 2), tops=(1, 2))
def _accuracy(layer, bottoms):
    scores, labels = bottoms
    ap = layer.accuracy_param
    outer, inner, axis = _outer_inner(scores, ap.axis)
    if outer * inner != count(labels):
        raise ShapeError(f"number of labels ({count(labels)}) must match the number of "
                         f"predictions ({outer * inner})")
    classes = scores[axis]
    if ap.top_k > classes:
        raise ShapeError(f"top_k {ap.top_k} is larger than the number of classes ({classes})")
    return [()] + [(classes,)] * (len(layer.top) - 1), []
