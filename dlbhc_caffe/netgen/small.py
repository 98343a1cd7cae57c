"""A small DLBHC net for 32x32 records, trained from scratch on a CPU in minutes.

    data -> conv1 (32, 5x5) relu pool -> conv2 (32, 5x5) relu pool -> conv3 (64, 5x5) relu pool
         -> fc7 (64, relu7 in place) -> fc8_kevin (bits) -> fc8_kevin_encode (Sigmoid)
         -> fc8_pascal (classes) -> SoftmaxWithLoss

The head has KevinNet's layer names and shape, so everything downstream (features, codes, fc7,
evaluation) treats both nets alike. Fillers are xavier throughout: from scratch, the paper's small
gaussian head fillers leave the loss stuck at ln(classes) (docs/small-net.md). Inputs
are mean-subtracted (the dataset's own mean file or a mean_value) and scaled by 1/256.

>>> from dlbhc_caffe.netgen import small
>>> from dlbhc_caffe.netgen.shapes import blob_shapes
>>> blob_shapes(small.deploy_net(12))["fc7"]
(10, 64)
"""
from . import kevinnet
from . import layers as L

FEATURE_SIZE = 64
CONV_OUTPUTS = (32, 32, 64)
RECORD_SIZE = 32
MIN_SIZE = 8  # three 3x3 / stride 2 poolings need at least this much input
SCALE = 1 / 256

XAVIER_HEAD = kevinnet.Head(L.xavier(), L.constant(0), (1, 2), L.xavier(), L.constant(0), (1, 2))


def small_layers(bottom="data"):
    """conv1 .. fc7 of the small net (relu7 in place on fc7, no dropout)."""
    kw = dict(lr_mult=(1, 2), decay_mult=(1, 0), weight_filler=L.xavier(),
              bias_filler=L.constant(0))
    out = []
    for i, num_output in enumerate(CONV_OUTPUTS, start=1):
        conv, relu, pool = f"conv{i}", f"relu{i}", f"pool{i}"
        out += [L.convolution(conv, bottom, num_output, 5, pad=2, **kw),
                L.relu(relu, conv),
                L.pooling(pool, conv, 3, 2)]
        bottom = pool
    out += [L.inner_product("fc7", bottom, FEATURE_SIZE, **kw), L.relu("relu7", "fc7")]
    return out


def train_val_net(bits, classes, train_source, test_source, *, mean_file=None, mean_value=None,
                  backend="leveldb", batch_size=64, test_batch_size=100, crop=None, mirror=False,
                  scale=SCALE, name="SmallNet"):
    """The small net's train_val NetParameter (TRAIN and TEST Data layers in one net).

    Give mean_file (the dataset's own mean, at the record size) or mean_value (one value, or
    one a channel). crop=None feeds whole records; mirror suits photos, not digits.
    """
    data = [
        L.data(train_source, batch_size, phase="TRAIN", backend=backend, crop=crop,
               mean_file=mean_file, mean_value=mean_value, mirror=mirror, scale=scale),
        L.data(test_source, test_batch_size, phase="TEST", backend=backend, crop=crop,
               mean_file=mean_file, mean_value=mean_value, mirror=False, scale=scale),
    ]
    return kevinnet.hashify(name, data, small_layers(), bits, classes, XAVIER_HEAD)


def deploy_net(bits, *, channels=3, size=RECORD_SIZE, batch=kevinnet.DEPLOY_BATCH,
               name="SmallNet"):
    """The small net's deploy NetParameter: Input batch x channels x size x size."""
    return kevinnet.deploy_of(name, (batch, channels, size, size), small_layers(), bits,
                              XAVIER_HEAD)
