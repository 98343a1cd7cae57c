"""The layers Caffe-era hashing and retrieval models use beyond the first list, held against real
Caffe forward and backward in one net (random weights, two items): Deconvolution, Crop, Slice,
PReLU (per channel and shared), ELU, Power, Exp, Log, AbsVal, BNLL, Threshold, ArgMax (with and
without axis), Tile, Reduction (SUM, ASUM, SUMSQ, MEAN), MVN (three settings), Embed,
SigmoidCrossEntropyLoss, ContrastiveLoss, HingeLoss (L1, L2), MultinomialLogisticLoss,
InfogainLoss.

Per layer: its tops after forward (1e-5), and after backward the diffs of its bottoms and params
(1e-4), each as max|ours - Caffe| / max|Caffe|. The largest per layer is printed at the end of
the module (the README's parity table quotes it).
"""
import numpy as np
import pytest

from dlbhc_caffe.backends import torch as engine
from dlbhc_caffe.proto import write_blob
from test_torch_parity import (BACKWARD_LIMIT, FORWARD_LIMIT, check, cpu_mode,  # noqa: F401
                               feed, parity_report, rel_diff, twin, write)

pytestmark = pytest.mark.caffe

NET = """
name: "more_layers"
layer { name: "data" type: "Input" top: "data" top: "label" top: "target" top: "sim" top: "words"
        input_param { shape { dim: 2 dim: 4 dim: 9 dim: 9 } shape { dim: 2 }
                      shape { dim: 2 dim: 10 } shape { dim: 2 } shape { dim: 2 dim: 3 } } }
layer { name: "deconv" type: "Deconvolution" bottom: "data" top: "deconv"
        convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2 } }
layer { name: "crop" type: "Crop" bottom: "deconv" bottom: "data" top: "crop"
        crop_param { axis: 2 offset: 1 offset: 2 } }
layer { name: "slice" type: "Slice" bottom: "crop" top: "s1" top: "s2" top: "s3"
        slice_param { axis: 1 slice_point: 2 slice_point: 5 } }
layer { name: "prelu" type: "PReLU" bottom: "s1" top: "prelu" }
layer { name: "prelu_shared" type: "PReLU" bottom: "s3" top: "prelu_shared"
        prelu_param { channel_shared: true } }
layer { name: "elu" type: "ELU" bottom: "s2" top: "elu" elu_param { alpha: 0.5 } }
layer { name: "abs" type: "AbsVal" bottom: "prelu_shared" top: "abs" }
layer { name: "power" type: "Power" bottom: "elu" top: "power"
        power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "exp" type: "Exp" bottom: "prelu" top: "exp" exp_param { base: 2 scale: 0.3 shift: 0.1 } }
layer { name: "log" type: "Log" bottom: "exp" top: "log" log_param { base: 10 scale: 2 shift: 0.5 } }
layer { name: "bnll" type: "BNLL" bottom: "s2" top: "bnll" }
layer { name: "tile" type: "Tile" bottom: "abs" top: "tile" tile_param { axis: 1 tiles: 3 } }
layer { name: "mvn" type: "MVN" bottom: "tile" top: "mvn" }
layer { name: "mvn_across" type: "MVN" bottom: "power" top: "mvn_across"
        mvn_param { across_channels: true } }
layer { name: "mvn_mean" type: "MVN" bottom: "bnll" top: "mvn_mean"
        mvn_param { normalize_variance: false } }
layer { name: "cat" type: "Concat" bottom: "log" bottom: "mvn" bottom: "mvn_across"
        bottom: "mvn_mean" top: "cat" }
layer { name: "ip" type: "InnerProduct" bottom: "cat" top: "ip" inner_product_param { num_output: 10 } }
layer { name: "ip_b" type: "InnerProduct" bottom: "cat" top: "ip_b"
        inner_product_param { num_output: 10 } }
layer { name: "sce" type: "SigmoidCrossEntropyLoss" bottom: "ip" bottom: "target" top: "sce" }
layer { name: "contrastive" type: "ContrastiveLoss" bottom: "ip" bottom: "ip_b" bottom: "sim"
        top: "contrastive" contrastive_loss_param { margin: 30 } loss_weight: 0.1 }
layer { name: "hinge" type: "HingeLoss" bottom: "ip" bottom: "label" top: "hinge" }
layer { name: "hinge_l2" type: "HingeLoss" bottom: "ip_b" bottom: "label" top: "hinge_l2"
        hinge_loss_param { norm: L2 } loss_weight: 0.05 }
layer { name: "prob" type: "Softmax" bottom: "ip_b" top: "prob" }
layer { name: "mlogistic" type: "MultinomialLogisticLoss" bottom: "prob" bottom: "label"
        top: "mlogistic" }
layer { name: "infogain" type: "InfogainLoss" bottom: "prob" bottom: "label" top: "infogain"
        infogain_loss_param { source: "%(infogain)s" } }
layer { name: "argmax" type: "ArgMax" bottom: "ip" top: "argmax"
        argmax_param { out_max_val: true top_k: 2 } }
layer { name: "argmax_axis" type: "ArgMax" bottom: "cat" top: "argmax_axis" argmax_param { axis: 1 } }
layer { name: "thresh" type: "Threshold" bottom: "data" top: "thresh" threshold_param { threshold: 0.2 } }
layer { name: "rmean" type: "Reduction" bottom: "thresh" top: "rmean"
        reduction_param { operation: MEAN axis: 1 } }
layer { name: "embed" type: "Embed" bottom: "words" top: "embed"
        embed_param { num_output: 4 input_dim: 7 } }
layer { name: "sumsq" type: "Reduction" bottom: "embed" top: "sumsq"
        reduction_param { operation: SUMSQ axis: 1 coeff: 0.5 } loss_weight: 1 }
layer { name: "asum" type: "Reduction" bottom: "mvn_mean" top: "asum"
        reduction_param { operation: ASUM axis: 2 } loss_weight: 0.01 }
layer { name: "rsum" type: "Reduction" bottom: "tile" top: "rsum" loss_weight: 0.001 }
"""

NEW_TYPES = ["Deconvolution", "Crop", "Slice", "PReLU", "ELU", "Power", "Exp", "Log", "AbsVal",
             "BNLL", "Threshold", "ArgMax", "Tile", "Reduction", "MVN", "Embed",
             "SigmoidCrossEntropyLoss", "ContrastiveLoss", "HingeLoss",
             "MultinomialLogisticLoss", "InfogainLoss", "Bias"]
FORWARD_ONLY = {"Threshold", "ArgMax"}  # Caffe implements no backward for them
PER_TYPE = {}


@pytest.fixture(scope="module", autouse=True)
def per_type_report(request):
    yield
    lines = ["", "new layers vs real Caffe: largest relative difference per type "
             "(forward tops / backward bottom and param diffs)"]
    for kind in NEW_TYPES:
        fwd, bwd = PER_TYPE.get((kind, "forward"), 0.0), PER_TYPE.get((kind, "backward"))
        lines.append(f"  {kind:<26} {fwd:.1e}  {'-' if bwd is None else f'{bwd:.1e}'}")
    from conftest import report_at_end  # noqa: PLC0415

    report_at_end(request.config, lines)  # in pytest's summary, not between the dots


def record(kind, direction, value):
    PER_TYPE[kind, direction] = max(PER_TYPE.get((kind, direction), 0.0), value)


def init(net, rng):
    for name, blobs in net.params.items():
        layer = net.layer_dict[name]
        for i, blob in enumerate(blobs):
            if layer.type == "PReLU":
                blob.data[...] = rng.uniform(0.1, 0.5, blob.shape)
            elif i == 0 and layer.type != "Embed":
                fan_in = max(1, blob.count // blob.shape[0])
                blob.data[...] = rng.normal(0, np.sqrt(1.0 / fan_in), blob.shape)
            else:
                blob.data[...] = rng.normal(0, 0.3, blob.shape)


def test_new_layers_forward_backward_match_caffe(caffe, tmp_path):
    rng = np.random.default_rng(31)
    infogain = tmp_path / "H.binaryproto"
    write_blob(rng.uniform(0, 1, (1, 1, 10, 10)).astype(np.float32), infogain)
    proto = write(tmp_path / "more.prototxt", NET % {"infogain": infogain})
    ours = engine.Net(proto, engine.TEST)
    init(ours, rng)
    theirs = twin(caffe, proto, engine.TEST, ours, tmp_path)
    feed(ours, theirs, {
        "data": rng.normal(0, 1, (2, 4, 9, 9)).astype(np.float32),
        "label": np.array([3, 7], np.float32),
        "target": rng.uniform(0, 1, (2, 10)).astype(np.float32),
        "sim": np.array([1, 0], np.float32),
        "words": np.array([[0, 6, 2], [2, 5, 1]], np.float32)})
    ours.forward()
    theirs.forward()
    # the branches under test are live: the dissimilar pair inside the margin, hinge margins
    # both active and not, probabilities spread
    distance = np.linalg.norm(theirs.blobs["ip"].data[1] - theirs.blobs["ip_b"].data[1])
    assert 1.0 < distance < 30.0
    margins = 1 + theirs.blobs["ip"].data * np.where(np.eye(10)[[3, 7]] > 0, -1, 1)
    assert (margins > 0).mean() > 0.2 and (margins < 0).mean() > 0.05
    assert theirs.blobs["prob"].data.max() < 0.95
    for name, layer in zip(ours._layer_names, ours.layers):
        for top in ours.top_names[name]:
            value = check("forward", f"new layers:{top}", ours.blobs[top].data,
                          theirs.blobs[top].data, FORWARD_LIMIT)
            record(layer.type, "forward", value)
    ours.backward()
    theirs.backward()
    for name, layer in zip(ours._layer_names, ours.layers):
        if layer.type in FORWARD_ONLY:
            continue
        diffs = [(f"{b}", ours.blobs[b].diff, theirs.blobs[b].diff)
                 for b in ours.bottom_names[name] if b not in ("label", "sim", "words")]
        diffs += [(f"{name}[{i}]", blob.diff, theirs.params[name][i].diff)
                  for i, blob in enumerate(ours.params.get(name, []))]
        for where, a, b in diffs:
            value = check("backward", f"new layers:{where}", a, b, BACKWARD_LIMIT)
            record(layer.type, "backward", value)
    assert np.abs(ours.params["deconv"][0].diff).max() > 0
    assert np.abs(ours.params["embed"][0].diff).max() > 0
    assert {layer.type for layer in ours.layers} >= set(NEW_TYPES) - {"Bias"}


def test_argmax_ties_rank_the_higher_index_first(caffe, tmp_path):
    net = """
    name: "ties"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }
    layer { name: "argmax" type: "ArgMax" bottom: "data" top: "argmax"
            argmax_param { top_k: 4 out_max_val: true } }
    """
    proto = write(tmp_path / "ties.prototxt", net)
    ours, theirs = engine.Net(proto, engine.TEST), caffe.Net(proto, caffe.TEST)
    feed(ours, theirs, {"data": np.array([[1, 3, 3, 0, 3, 2], [5, 5, 5, 5, 5, 5]], np.float32)})
    ours.forward()
    theirs.forward()
    assert np.array_equal(ours.blobs["argmax"].data, theirs.blobs["argmax"].data)
    assert rel_diff(ours.blobs["argmax"].data, theirs.blobs["argmax"].data) == 0.0


BIAS_SILENCE_NET = """
name: "bias_silence"
layer { name: "data" type: "Input" top: "data" top: "offsets"
        input_param { shape { dim: 3 dim: 4 dim: 5 dim: 2 } shape { dim: 4 dim: 5 } } }
layer { name: "bias" type: "Bias" bottom: "data" top: "bias" }
layer { name: "bias_axis" type: "Bias" bottom: "bias" top: "bias_axis"
        bias_param { axis: 2 num_axes: 2 } }
layer { name: "bias_bottom" type: "Bias" bottom: "bias_axis" bottom: "offsets" top: "biased" }
layer { name: "silence" type: "Silence" bottom: "bias" }
layer { name: "loss" type: "EuclideanLoss" bottom: "biased" bottom: "data" top: "loss" }
"""


def test_bias_and_silence_match_caffe(caffe, tmp_path):
    """Bias with a learned blob (default axis; axis 2 with num_axes 2) and with a second bottom;
    Silence takes a blob without changing the gradient the other consumers give it."""
    proto = write(tmp_path / "bias.prototxt", "force_backward: true\n" + BIAS_SILENCE_NET)
    rng = np.random.default_rng(33)
    ours = engine.Net(proto, engine.TEST)
    for blobs in ours.params.values():
        blobs[0].data[...] = rng.normal(0, 1, blobs[0].shape)
    assert [ours.params[n][0].shape for n in ("bias", "bias_axis")] == [(4,), (5, 2)]
    theirs = twin(caffe, proto, engine.TEST, ours, tmp_path)
    feed(ours, theirs, {"data": rng.normal(0, 1, (3, 4, 5, 2)).astype(np.float32),
                        "offsets": rng.normal(0, 1, (4, 5)).astype(np.float32)})
    ours.forward()
    theirs.forward()
    assert ours.outputs == theirs.outputs == ["loss"]
    for name in ("bias", "bias_axis", "biased", "loss"):
        record("Bias", "forward", check("forward", f"bias:{name}", ours.blobs[name].data,
                                        theirs.blobs[name].data, FORWARD_LIMIT))
    ours.backward()
    theirs.backward()
    for name in ("data", "offsets", "bias", "bias_axis"):
        record("Bias", "backward", check("backward", f"bias:{name}", ours.blobs[name].diff,
                                         theirs.blobs[name].diff, BACKWARD_LIMIT))
    for name in ("bias", "bias_axis"):
        record("Bias", "backward", check("backward", f"bias:{name}[0]",
                                         ours.params[name][0].diff,
                                         theirs.params[name][0].diff, BACKWARD_LIMIT))
    assert np.abs(ours.blobs["offsets"].diff).max() > 0
