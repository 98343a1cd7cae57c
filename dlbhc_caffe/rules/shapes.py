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

# The types Caffe's layer factory picks an engine for (SoftmaxWithLoss builds a Softmax from its
# softmax_param). This project's builds have no cuDNN, so engine CUDNN is Caffe's LOG(FATAL)
# "has unknown engine".
ENGINE_PARAMS = {"Convolution": "convolution_param", "Pooling": "pooling_param",
                 "LRN": "lrn_param", "ReLU": "relu_param", "Sigmoid": "sigmoid_param",
                 "TanH": "tanh_param", "Softmax": "softmax_param",
                 "SoftmaxWithLoss": "softmax_param"}


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
    _check_engine(layer)
    _counts("bottom", len(bottoms), *bottom_range)
    _counts("top", len(layer.top), *top_range)
    tops, params = function(layer, [tuple(int(d) for d in b) for b in bottoms])
    tops = [tuple(int(d) for d in t) for t in tops]
    for name, shape in zip(layer.top, tops):
        _check_blob(shape, f"top '{name}'")
    for i, shape in enumerate(params):
        _check_blob(shape, f"param {i}")
    return tops, [tuple(int(d) for d in p) for p in params]


def _check_engine(layer):
    field = ENGINE_PARAMS.get(layer.type)
    if field is None or not layer.HasField(field):
        return
    param = getattr(layer, field)
    if param.engine not in (param.DEFAULT, param.CAFFE):
        raise ShapeError(f"{field}.engine {param.Engine.Name(param.engine)} needs a Caffe built "
                         f"with cuDNN (this project's builds have none): use engine CAFFE or "
                         f"leave it out")


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


# The vision layers' rules live beside this module (it registers them on import).
from . import shapes_vision  # noqa: E402,F401
