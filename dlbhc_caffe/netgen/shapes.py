"""Blob shapes of a net, computed in Python with Caffe's rules, before Caffe ever sees the net.

Caffe's CHECK failures abort the whole process, so the generators check here that every blob
has a positive size (a crop too small for three poolings, say) and tell the user which layer
would fail. Only the layer types the generators write are known; others raise.

>>> from dlbhc_caffe.netgen import kevinnet
>>> shapes = blob_shapes(kevinnet.deploy_net(48))
>>> shapes["fc7"], shapes["fc8_kevin_encode"]
((10, 4096), (10, 48))
"""
import math

from ..proto import ProtoError, filter_net

_ELEMENTWISE = {"ReLU", "Sigmoid", "TanH", "Dropout", "LRN", "Softmax", "AbsVal", "BNLL", "Power"}


def _pair(repeated, single_h, single_w, default):
    if single_h or single_w:
        return single_h, single_w
    values = list(repeated)
    if not values:
        return default, default
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _conv(shape, p, name):
    if len(shape) != 4:
        raise ProtoError(f"layer '{name}': a convolution needs a 4-D bottom, got {shape}")
    kh, kw = _pair(p.kernel_size, p.kernel_h, p.kernel_w, 0)
    ph, pw = _pair(p.pad, p.pad_h, p.pad_w, 0)
    sh, sw = _pair(p.stride, p.stride_h, p.stride_w, 1)
    dilation = list(p.dilation) or [1]
    dh, dw = dilation[0], dilation[-1]
    if p.group and shape[1] % p.group:
        raise ProtoError(f"layer '{name}': {shape[1]} input channels are not divisible by "
                         f"group {p.group}")
    oh = (shape[2] + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (shape[3] + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    return (shape[0], p.num_output, oh, ow)


def _pool(shape, p, name):
    if len(shape) != 4:
        raise ProtoError(f"layer '{name}': pooling needs a 4-D bottom, got {shape}")
    if p.global_pooling:
        return (shape[0], shape[1], 1, 1)
    kh, kw = (p.kernel_h, p.kernel_w) if p.kernel_h else (p.kernel_size, p.kernel_size)
    ph, pw = (p.pad_h, p.pad_w) if p.pad_h or p.pad_w else (p.pad, p.pad)
    sh, sw = (p.stride_h, p.stride_w) if p.stride_h else (p.stride, p.stride)
    out = []
    for size, k, pad, stride in ((shape[2], kh, ph, sh), (shape[3], kw, pw, sw)):
        n = int(math.ceil((size + 2 * pad - k) / stride)) + 1
        if pad and (n - 1) * stride >= size + pad:
            n -= 1  # Caffe: the last window must start inside the image
        out.append(n)
    return (shape[0], shape[1], out[0], out[1])


def blob_shapes(net, phase="TEST", record_shape=None):
    """{blob name: shape} for `net` (a NetParameter) in `phase` ("TRAIN" or "TEST").

    record_shape (C, H, W) gives the size of the Datum records behind Data layers. Raises
    ProtoError naming the layer whose output would be empty or whose type is not known here.
    """
    shapes = {}
    for layer in filter_net(net, phase).layer:
        name, kind = layer.name, layer.type
        missing = [b for b in layer.bottom if b not in shapes]
        if missing:
            raise ProtoError(f"layer '{name}': unknown bottom blob '{missing[0]}'")
        bottoms = [shapes[b] for b in layer.bottom]
        if kind == "Input":
            tops = [tuple(int(d) for d in s.dim) for s in layer.input_param.shape]
            if len(tops) == 1:
                tops *= len(layer.top)
        elif kind == "Data":
            if record_shape is None:
                raise ProtoError(f"layer '{name}': the record shape is needed for a Data layer")
            channels, height, width = record_shape
            crop = layer.transform_param.crop_size
            batch = layer.data_param.batch_size
            tops = [(batch, channels, crop or height, crop or width), (batch,)]
        elif kind == "Convolution":
            tops = [_conv(bottoms[0], layer.convolution_param, name)]
        elif kind == "Pooling":
            tops = [_pool(bottoms[0], layer.pooling_param, name)]
        elif kind == "InnerProduct":
            tops = [(bottoms[0][0], layer.inner_product_param.num_output)]
        elif kind in _ELEMENTWISE:
            tops = [bottoms[0]]
        elif kind in ("SoftmaxWithLoss", "Accuracy", "EuclideanLoss"):
            tops = [()]
        else:
            raise ProtoError(f"layer '{name}': no shape rule for type '{kind}'")
        for top, shape in zip(layer.top, tops):
            if any(d <= 0 for d in shape):
                raise ProtoError(f"layer '{name}': output '{top}' would have shape {shape} "
                                 f"(from input {bottoms[0] if bottoms else shape}); the input "
                                 "is too small for this net")
            shapes[top] = shape
    return shapes
