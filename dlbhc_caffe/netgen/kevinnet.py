"""KevinNet: a classifier "hashified" with a latent layer between its features and its classifier.

    data -> base net (CaffeNet: conv1 .. fc7) -> fc8_kevin (InnerProduct, `bits` units)
         -> fc8_kevin_encode (Sigmoid: the codes are its outputs > 0.5)
         -> fc8_pascal (InnerProduct, `classes` units) -> SoftmaxWithLoss

The names are the original's, so the authors' released caffemodels (KevinNet_CIFAR10_48) load
whole, and bvlc_reference_caffenet.caffemodel initialises conv1 .. fc7 by name. The head's
settings are the paper's: latent layer lr_mult 1/2, gaussian std 0.005, bias 1; classifier
lr_mult 10/20, std 0.01, bias 0 (right for fine-tuning from ImageNet weights; small.py uses
xavier for nets trained from scratch).

>>> from dlbhc_caffe.netgen import kevinnet
>>> net = kevinnet.train_val_net(48, 10, "train_db", "test_db")
>>> [l.name for l in net.layer][-5:]
['fc8_kevin', 'fc8_kevin_encode', 'fc8_pascal', 'accuracy', 'loss']
>>> kevinnet.deploy_net(48).layer[-1].name
'fc8_kevin_encode'
"""
from dataclasses import dataclass

from ..proto import pb
from . import caffenet
from . import layers as L

LATENT = "fc8_kevin"
ENCODE = "fc8_kevin_encode"
CLASSIFIER = "fc8_pascal"
PAPER_BITS = (12, 16, 32, 48, 64, 128)
MAX_BITS = 1024
DEPLOY_BATCH = 10  # prepare_batch.m's batch of 10

# Base nets by name: a function of the bottom blob returning layers that end with `fc7`.
BASES = {"caffenet": caffenet.caffenet_layers}


@dataclass(frozen=True)
class Head:
    """Fillers and lr multipliers of the latent layer and the classifier."""

    latent_weight_filler: pb.FillerParameter
    latent_bias_filler: pb.FillerParameter
    latent_lr_mult: tuple
    classifier_weight_filler: pb.FillerParameter
    classifier_bias_filler: pb.FillerParameter
    classifier_lr_mult: tuple
    decay_mult: tuple = (1, 0)


PAPER_HEAD = Head(L.gaussian(0.005), L.constant(1), (1, 2), L.gaussian(0.01), L.constant(0),
                  (10, 20))


def check_bits(bits):
    """Raise ValueError unless 1 <= bits <= 1024."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer from 1 to {MAX_BITS} (the paper used "
                         f"{', '.join(map(str, PAPER_BITS))}), got {bits!r}")
    return bits


def latent_layers(bits, bottom="fc7", head=PAPER_HEAD):
    """fc8_kevin (`bits` units) and its Sigmoid fc8_kevin_encode."""
    check_bits(bits)
    return [
        L.inner_product(LATENT, bottom, bits, weight_filler=head.latent_weight_filler,
                        bias_filler=head.latent_bias_filler, lr_mult=head.latent_lr_mult,
                        decay_mult=head.decay_mult),
        L.sigmoid(ENCODE, LATENT),
    ]


def classifier_layers(classes, bottom=ENCODE, head=PAPER_HEAD):
    """fc8_pascal, the classifier on the codes, then Accuracy (TEST only) and SoftmaxWithLoss."""
    return [
        L.inner_product(CLASSIFIER, bottom, classes, weight_filler=head.classifier_weight_filler,
                        bias_filler=head.classifier_bias_filler,
                        lr_mult=head.classifier_lr_mult, decay_mult=head.decay_mult),
        L.accuracy("accuracy", CLASSIFIER),
        L.softmax_loss("loss", CLASSIFIER),
    ]


def hashify(name, data_layers, body, bits, classes, head=PAPER_HEAD, feature_blob="fc7"):
    """A train_val NetParameter: data layers, the base `body`, latent layer, classifier, loss."""
    net = pb.NetParameter(name=name)
    net.layer.extend(data_layers)
    net.layer.extend(body)
    net.layer.extend(latent_layers(bits, feature_blob, head))
    net.layer.extend(classifier_layers(classes, ENCODE, head))
    return net


def deploy_of(name, input_shape, body, bits, head=PAPER_HEAD, feature_blob="fc7"):
    """A deploy NetParameter: Input -> body -> fc8_kevin -> fc8_kevin_encode.

    Training fields (fillers, lr multipliers) are left out, as in the original's deploy; the
    dropout layers stay (Caffe runs them as identity in the TEST phase), so one forward in the
    TEST phase gives the codes and fc7 (after relu7, in place).
    """
    net = pb.NetParameter(name=name)
    net.layer.append(L.input(input_shape))
    for layer in list(body) + latent_layers(bits, feature_blob, head):
        net.layer.append(L.strip_training_fields(layer))
    return net


def _base_layers(base, bottom="data"):
    if callable(base):
        return list(base(bottom))
    if base not in BASES:
        raise ValueError(f"unknown base net '{base}'; known: {', '.join(sorted(BASES))}")
    return BASES[base](bottom)


def train_val_net(bits, classes, train_source, test_source, *,
                  mean_file="data/ilsvrc12/imagenet_mean.binaryproto", mean_value=None,
                  backend="leveldb", batch_size=32, test_batch_size=32, crop=caffenet.CROP,
                  mirror=True, scale=None, base="caffenet", name="KevinNet"):
    """KevinNet's train_val NetParameter: TRAIN and TEST Data layers (include { phase }) in one net.

    Defaults are the original's: batch 32, random 227 crop and mirror for training (centre crop,
    no mirror for testing), the ImageNet mean, LevelDB. `base` names a base net in BASES or is a
    function of the bottom blob returning layers up to fc7.
    """
    data = [
        L.data(train_source, batch_size, phase="TRAIN", backend=backend, crop=crop,
               mean_file=mean_file, mean_value=mean_value, mirror=mirror, scale=scale),
        L.data(test_source, test_batch_size, phase="TEST", backend=backend, crop=crop,
               mean_file=mean_file, mean_value=mean_value, mirror=False, scale=scale),
    ]
    return hashify(name, data, _base_layers(base), bits, classes)


def deploy_net(bits, *, channels=3, crop=caffenet.CROP, batch=DEPLOY_BATCH, base="caffenet",
               name="KevinNet"):
    """KevinNet's deploy NetParameter: Input batch x channels x crop x crop (10x3x227x227)."""
    return deploy_of(name, (batch, channels, crop, crop), _base_layers(base), bits)
