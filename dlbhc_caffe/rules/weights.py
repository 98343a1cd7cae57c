"""Pretrained weights copied by layer name, as `caffe train -weights` does: one plan for both
engines (the training loop copies with it, the real-Caffe validation checks with it).

Caffe's Net::CopyTrainedLayersFrom walks the caffemodel's layers: a layer the net does not have is
ignored; a layer it has gets every blob copied, and a different number of blobs or a different
shape is fatal. The net's layers that the caffemodel lacks keep their fillers. Here the same walk
is done in Python first, so a mismatch is an error naming the layer instead of an abort, and the
three lists (copied, kept, ignored) can be reported.

Encoding needs more than fitting blobs: a learnable layer that the caffemodel does not name keeps
its filler -- in a deploy net usually none, so zeros -- and Caffe says nothing, so a caffemodel
cut short at a layer boundary encodes every image to the same code. `check_model_weights` finds
that from the files alone (layer names and blob counts), before either engine builds the net.

>>> import numpy as np, tempfile, os
>>> from dlbhc_caffe import proto
>>> model = proto.pb.NetParameter()
>>> layer = model.layer.add(name="fc7", type="InnerProduct")
>>> layer.blobs.add().CopyFrom(proto.array_to_blob(np.ones((4, 3))))
>>> path = os.path.join(tempfile.mkdtemp(), "m.caffemodel")
>>> _ = proto.write_binary(model, path)
>>> plan = plan_weight_copy({"fc7": [(4, 3)], "fc8": [(2, 4), (2,)]}, path)
>>> plan.copied, plan.kept, plan.ignored
(['fc7'], ['fc8'], [])
>>> plan_weight_copy({"fc7": [(5, 3)]}, path)
Traceback (most recent call last):
...
dlbhc_caffe.rules.weights.WeightsError: ...: layer 'fc7', param 0: shape (4, 3) in the weights, (5, 3) in the net
"""
from dataclasses import dataclass, field
from pathlib import Path

from .. import proto
from ..errors import DlbhcError


class WeightsError(DlbhcError):
    """Pretrained weights that do not fit the net; names the file and the layer."""


@dataclass
class WeightPlan:
    """What copying a caffemodel into a net does, by layer name."""
    path: str
    copied: list = field(default_factory=list)   # in both: values from the caffemodel
    kept: list = field(default_factory=list)     # in the net only: keep their fillers
    ignored: list = field(default_factory=list)  # in the caffemodel only: not used

    def summary(self):
        """Lines describing the plan, for the training log."""
        lines = [f"Copying weights from {self.path}: {len(self.copied)} layers "
                 f"({', '.join(self.copied) or 'none'})"]
        if self.kept:
            lines.append(f"Layers not in the weights keep their fillers: {', '.join(self.kept)}")
        if self.ignored:
            lines.append(f"Ignoring source layers absent from the net: {', '.join(self.ignored)}")
        return lines


def _legacy_shape(blob):
    fields = ("num", "channels", "height", "width")
    if blob.HasField("shape") or not any(blob.HasField(f) for f in fields):
        return None
    return tuple(getattr(blob, f) for f in fields)


def _shapes_equal(blob, target):
    """Caffe's Blob::ShapeEquals: a legacy 4-D blob matches a target padded to 4 axes with 1s."""
    legacy = _legacy_shape(blob)
    target = tuple(int(d) for d in target)
    if legacy is not None:
        return len(target) <= 4 and (1,) * (4 - len(target)) + target == legacy
    return proto.blob_shape(blob) == target


def read_weight_shapes(path):
    """{layer name: [BlobProto, ...]} of a caffemodel's layers that hold blobs (any format)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    net = proto.read_net(path)
    return {layer.name: list(layer.blobs) for layer in net.layer if len(layer.blobs)}


def plan_weight_copy(target, weights):
    """The WeightPlan of copying caffemodel `weights` into a net whose learnable blobs are
    `target` ({layer name: [shape, ...]}, e.g. from `param_shapes(net)`).

    weights: a caffemodel path, or (path, read_weight_shapes(path)) to reuse one read.
    Raises WeightsError naming the file and the layer on a different number of blobs or shape.
    """
    if isinstance(weights, tuple):
        weights, source = weights
    else:
        source = read_weight_shapes(weights)
    plan = WeightPlan(path=str(weights))
    for name, blobs in source.items():
        if name not in target:
            plan.ignored.append(name)
            continue
        shapes = target[name]
        if len(blobs) != len(shapes):
            raise WeightsError(f"{weights}: layer '{name}' has {len(blobs)} blobs in the weights, "
                               f"{len(shapes)} in the net (e.g. bias_term differs)")
        for i, (blob, shape) in enumerate(zip(blobs, shapes)):
            if not _shapes_equal(blob, shape):
                have = _legacy_shape(blob) or proto.blob_shape(blob)
                raise WeightsError(f"{weights}: layer '{name}', param {i}: shape {tuple(have)} "
                                   f"in the weights, {tuple(shape)} in the net")
            # Caffe's Blob::FromProto aborts on a value count that differs from the shape.
            proto.check_blob_values(blob, f"{weights}: layer '{name}', param {i}")
        plan.copied.append(name)
    plan.kept = [name for name in target if name not in source]
    return plan


def param_shapes(net):
    """{layer name: [shape, ...]} of a pycaffe-shaped net's learnable blobs (`net.params`)."""
    return {name: [tuple(blob.data.shape) for blob in blobs] for name, blobs in net.params.items()}


def copy_weights(nets, weights):
    """Copy caffemodel `weights` into each of `nets` (pycaffe-shaped) by layer name.

    The plan is checked against every net first (so nothing is copied unless all fit), then each
    net's own `copy_from` does the copy. Returns the WeightPlan of the first net (the training net
    of a solver).
    """
    nets = list(nets)
    source = read_weight_shapes(weights)
    plans = [plan_weight_copy(param_shapes(net), (weights, source)) for net in nets]
    for net in nets:
        net.copy_from(str(weights))
    return plans[0]


# ---------------------------------------------------------------- complete weights for encoding

ALLOW_FLAG = "--allow-missing-weights"


class MissingWeightsError(WeightsError):
    """A caffemodel without weights for some learnable layers of the net it is used with."""


def _bias(param):
    return 1 if param.bias_term else 0


# Blobs each learnable layer type owns in Caffe 1.0 (its LayerSetUp); other types own none.
# Python layers own what their code makes, which cannot be known without running it.
_BLOBS = {
    "Convolution": lambda l: 1 + _bias(l.convolution_param),
    "Deconvolution": lambda l: 1 + _bias(l.convolution_param),
    "InnerProduct": lambda l: 1 + _bias(l.inner_product_param),
    "Embed": lambda l: 1 + _bias(l.embed_param),
    "BatchNorm": lambda l: 3,
    "PReLU": lambda l: 1,
    # a second bottom supplies the scale / bias itself
    "Scale": lambda l: (1 if len(l.bottom) == 1 else 0) + _bias(l.scale_param),
    "Bias": lambda l: 1 if len(l.bottom) == 1 else 0,
    # W_xc, b_c, W_hc (+ W_xc_x_static with a third, static bottom)
    "LSTM": lambda l: 3 + (1 if len(l.bottom) > 2 else 0),
    # W_xh, b_h, W_hh, W_ho, b_o (+ W_xh_x_static)
    "RNN": lambda l: 5 + (1 if len(l.bottom) > 2 else 0),
}


def learnable_blob_counts(net, phase="TEST"):
    """{layer name: blobs Caffe gives it} for the learnable layers of `net` (a NetParameter in
    the current format) as built in `phase`.

    >>> net = proto.parse_text('''
    ...   layer { name: "ip" type: "InnerProduct" inner_product_param { num_output: 2 } }
    ...   layer { name: "s" type: "Scale" bottom: "x" scale_param { bias_term: true } }
    ...   layer { name: "r" type: "ReLU" }''', proto.pb.NetParameter())
    >>> learnable_blob_counts(net)
    {'ip': 2, 's': 2}
    """
    net = proto.filter_net(net, phase)
    return {layer.name: _BLOBS[layer.type](layer) for layer in net.layer
            if layer.type in _BLOBS and _BLOBS[layer.type](layer)}


def missing_weights(net, model, phase="TEST"):
    """(missing, mismatched) for NetParameters `net` and `model` (a read caffemodel): the
    learnable layers of `net` that `model` has no blobs for, and "name (N in the weights, M in
    the net)" for layers whose blob counts differ (which Caffe refuses)."""
    have = {}
    for layer in model.layer:  # Caffe copies from the first layer of a name it meets
        have.setdefault(layer.name, len(layer.blobs))
    missing, mismatched = [], []
    for name, count in learnable_blob_counts(net, phase).items():
        blobs = have.get(name, 0)
        if blobs == 0:
            missing.append(name)
        elif blobs != count:
            mismatched.append(f"{name} ({blobs} in the weights, {count} in the net)")
    return missing, mismatched


def check_model_weights(net_path, weights_path, allow_missing=False, phase="TEST"):
    """Raise MissingWeightsError unless caffemodel `weights_path` holds weights for every
    learnable layer of the net in `net_path` (any Caffe generation; both are read here).

    ``allow_missing`` lets missing layers through (they keep their fillers, as in Caffe); a
    blob-count mismatch is always an error, since Caffe aborts on it. Returns the missing layers.
    """
    try:
        net, model = proto.read_net(net_path), proto.read_net(weights_path)
    except proto.ProtoError as err:
        raise MissingWeightsError(str(err)) from None
    missing, mismatched = missing_weights(net, model, phase)
    if mismatched:
        raise MissingWeightsError(f"{weights_path}: blob counts differ from {net_path} for "
                                  f"layer(s) {', '.join(mismatched)}; give the caffemodel "
                                  f"trained with this net")
    if missing and not allow_missing:
        raise MissingWeightsError(
            f"{weights_path} has no weights for learnable layer(s) {', '.join(missing)} of "
            f"{net_path}: they would keep their fillers and the codes would mean nothing (a "
            f"caffemodel cut short?); give the complete caffemodel, or {ALLOW_FLAG} to use it "
            f"anyway")
    return missing
