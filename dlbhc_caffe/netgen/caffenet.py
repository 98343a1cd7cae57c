"""CaffeNet's layers conv1 .. fc7, as data, with the original's exact settings.

These are the layers of bvlc_reference_caffenet (and of the authors' train_CIFAR10_48.prototxt,
which copied them): names, kernels, strides, pads, groups, LRN settings, dropout ratios, fillers
and lr / decay multipliers. Names matter: Caffe copies weights by layer name, so
bvlc_reference_caffenet.caffemodel initialises all of conv1..fc7.

>>> from dlbhc_caffe.netgen.caffenet import caffenet_layers
>>> [l.name for l in caffenet_layers()][-3:]
['fc7', 'relu7', 'drop7']
"""
from . import layers as L

FEATURE_BLOB = "fc7"
FEATURE_SIZE = 4096
# The input CaffeNet was trained with: 227x227 crops of 256x256 images minus the ImageNet mean.
CROP = 227
RECORD_SIZE = 256
# pool5 is 6x6 for crops of 199..230; fc6's weights (256*6*6 inputs) fit only then.
POOL5_SIZE = 6

_LR = (1, 2)
_DECAY = (1, 0)


def caffenet_layers(bottom="data"):
    """The CaffeNet layers from `bottom` to fc7 (with relu7 and drop7 in place on fc7).

    Returns a list of LayerParameter messages, training fields (fillers, lr / decay multipliers)
    included; `layers.strip_training_fields` removes them for a deploy net.
    """
    conv_kw = dict(lr_mult=_LR, decay_mult=_DECAY, weight_filler=L.gaussian(0.01))
    fc_kw = dict(lr_mult=_LR, decay_mult=_DECAY, weight_filler=L.gaussian(0.005),
                 bias_filler=L.constant(1))
    return [
        L.convolution("conv1", bottom, 96, 11, stride=4, bias_filler=L.constant(0), **conv_kw),
        L.relu("relu1", "conv1"),
        L.pooling("pool1", "conv1", 3, 2),
        L.lrn("norm1", "pool1", 5, 0.0001, 0.75),
        L.convolution("conv2", "norm1", 256, 5, pad=2, group=2, bias_filler=L.constant(1),
                      **conv_kw),
        L.relu("relu2", "conv2"),
        L.pooling("pool2", "conv2", 3, 2),
        L.lrn("norm2", "pool2", 5, 0.0001, 0.75),
        L.convolution("conv3", "norm2", 384, 3, pad=1, bias_filler=L.constant(0), **conv_kw),
        L.relu("relu3", "conv3"),
        L.convolution("conv4", "conv3", 384, 3, pad=1, group=2, bias_filler=L.constant(1),
                      **conv_kw),
        L.relu("relu4", "conv4"),
        L.convolution("conv5", "conv4", 256, 3, pad=1, group=2, bias_filler=L.constant(1),
                      **conv_kw),
        L.relu("relu5", "conv5"),
        L.pooling("pool5", "conv5", 3, 2),
        L.inner_product("fc6", "pool5", FEATURE_SIZE, **fc_kw),
        L.relu("relu6", "fc6"),
        L.dropout("drop6", "fc6", 0.5),
        L.inner_product("fc7", "fc6", FEATURE_SIZE, **fc_kw),
        L.relu("relu7", "fc7"),
        L.dropout("drop7", "fc7", 0.5),
    ]
