"""Nets that real Caffe aborts on (or silently misreads), shared by the reliability tests.

`BASE` is a tiny deploy net with a latent Sigmoid (what the encoders need); each entry of `CASES`
is (name, (old, new) text edits of BASE, the fragment our one-line error must contain, whether
real Caffe aborts on it). `write_model` writes a caffemodel that fits BASE.
"""
import numpy as np

from dlbhc_caffe import proto
from dlbhc_caffe.rules.validate import check_net

BASE = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 } }
layer { name: "fc7" type: "InnerProduct" bottom: "norm1" top: "fc7" inner_product_param { num_output: 6 } }
layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc8_kevin_encode" type: "InnerProduct" bottom: "fc7" top: "fc8_kevin_encode" inner_product_param { num_output: 4 } }
layer { name: "encode_neuron" type: "Sigmoid" bottom: "fc8_kevin_encode" top: "encode_neuron" }
"""
_FC7 = 'layer { name: "fc7"'


def _before_fc7(layer):
    return (_FC7, layer + "\n" + _FC7)


CASES = [
    ("wrong bottom", [('bottom: "pool1" top: "norm1"', 'bottom: "pool9" top: "norm1"')],
     "unknown bottom blob 'pool9'", True),
    ("kernel 0", [("num_output: 4 kernel_size: 3", "num_output: 4 kernel_size: 0")],
     "kernel size must be positive", True),
    ("stride 0", [("kernel_size: 2 stride: 2", "kernel_size: 2 stride: 0")],
     "stride must be positive", True),
    ("bad group", [("num_output: 4 kernel_size: 3", "num_output: 4 kernel_size: 3 group: 3")],
     "group 3 must divide", True),
    ("kernel larger than input", [("num_output: 4 kernel_size: 3", "num_output: 4 kernel_size: 11")],
     "is larger than the input", True),
    ("pad >= kernel", [("kernel_size: 2 stride: 2", "kernel_size: 2 stride: 2 pad: 2")],
     "must be smaller than the kernel", True),
    ("even LRN size", [("local_size: 3", "local_size: 4")], "local_size must be odd", True),
    ("num_output 0", [("num_output: 6", "num_output: 0")], "num_output must be positive", True),
    ("axis out of range", [("num_output: 6", "num_output: 6 axis: 5")], "axis 5 out of range",
     True),
    ("two -1 in Reshape", [_before_fc7('layer { name: "r" type: "Reshape" bottom: "norm1" top: "r" '
                                       'reshape_param { shape { dim: -1 dim: -1 } } }')],
     "more than one -1", True),
    ("Concat mismatch", [_before_fc7('layer { name: "cat" type: "Concat" bottom: "conv1" '
                                     'bottom: "pool1" top: "cat" }')],
     "differ outside axis 1", True),
    ("Crop mismatch", [_before_fc7('layer { name: "crop" type: "Crop" bottom: "pool1" '
                                   'bottom: "conv1" top: "crop" }')],
     "cannot crop axis 2", True),
    ("top produced twice", [_before_fc7('layer { name: "again" type: "ReLU" bottom: "conv1" '
                                        'top: "pool1" }')],
     "top blob 'pool1' produced by multiple sources", True),
    ("huge Input", [("dim: 2 dim: 3 dim: 8 dim: 8", "dim: 1000000000 dim: 3 dim: 32 dim: 32")],
     "more than Caffe's limit", True),
    ("engine CUDNN", [('type: "ReLU" bottom: "conv1" top: "conv1" }',
                       'type: "ReLU" bottom: "conv1" top: "conv1" relu_param { engine: CUDNN } }')],
     "relu_param.engine CUDNN needs a Caffe built with cuDNN", True),
    ("dropout_ratio 2.0", [("dropout_ratio: 0.5", "dropout_ratio: 2.0")],
     "dropout_ratio must be in [0, 1)", False),
    ("Eltwise mismatch", [_before_fc7('layer { name: "sum" type: "Eltwise" bottom: "conv1" '
                                      'bottom: "pool1" top: "sum" }')],
     "bottom shapes differ", False),
]


def net_text(edits):
    text = BASE
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def write_model(path, text=BASE, seed=0):
    """A caffemodel with random blobs of the shapes `text`'s net needs."""
    net = proto.parse_text(text, proto.pb.NetParameter())
    shapes = check_net(net, "base").params
    rng = np.random.default_rng(seed)
    model = proto.pb.NetParameter(name=net.name)
    for layer in net.layer:
        out = model.layer.add(name=layer.name, type=layer.type)
        for shape in shapes.get(layer.name, []):
            out.blobs.add().CopyFrom(proto.array_to_blob(rng.normal(0, 0.3, shape)))
    proto.write_binary(model, path)
    return path
