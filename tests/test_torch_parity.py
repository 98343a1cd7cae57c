"""The torch backend held against real Caffe on the same prototxt, caffemodel and solver files.

Every comparison is max|ours - Caffe| / max|Caffe| per blob (absolute where Caffe's blob is all
zero). Limits: forward blobs 1e-5 (1e-4 at and after a layer with thousands of inputs), param and
blob diffs after backward 1e-4, solver updates (the change in each weight) and history 1e-4. The
largest difference seen in each category is printed at the end of the module (quote them).

The nets carry random weights drawn here, scaled so that activations stay alive; each test
asserts that (a healthy share of non-zero ReLU outputs, sigmoid outputs spread out). Real Caffe's
CHECK failures abort the process, so every net given to Caffe here is valid.
"""
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from dlbhc_caffe.backends import torch as engine
from dlbhc_caffe.datasets.db import write_records
from dlbhc_caffe.proto import blob_to_array, read_net, read_solverstate, write_blob

pytestmark = pytest.mark.caffe

FORWARD_LIMIT, WIDE_FORWARD_LIMIT, BACKWARD_LIMIT, SOLVER_LIMIT = 1e-5, 1e-4, 1e-4, 1e-4
WIDE_FAN_IN = 1000
WORST = {}


def rel_diff(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    if not theirs.size:
        return 0.0
    diff = float(np.abs(ours - theirs).max())
    scale = float(np.abs(theirs).max())
    return diff / scale if scale > 0 else diff


def check(category, where, ours, theirs, limit):
    """Record and assert one comparison; `where` is "<net or case>:<blob>" or "<case> ..."."""
    value = rel_diff(ours, theirs)
    group = where.split(":")[0] if ":" in where else where.split(" ")[0]
    if value > WORST.get((category, group), (-1.0, ""))[0]:
        WORST[category, group] = (value, where)
    assert value <= limit, f"{category} {where}: relative difference {value:.3g} > {limit:g}"
    return value


@pytest.fixture(scope="module", autouse=True)
def parity_report(request):
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(threads)
    lines = ["", "torch backend vs real Caffe: largest max|ours - caffe| / max|caffe|, "
             "per category and net/case"]
    for category in sorted({c for c, _ in WORST}):
        groups = sorted((v, w) for (c, _), (v, w) in WORST.items() if c == category)
        lines.append(f"  {category:<26} {groups[-1][0]:.3e}  ({groups[-1][1]})")
        lines += [f"    {'':<24} {v:.3e}  ({w})" for v, w in reversed(groups[:-1])]
    from conftest import report_at_end  # noqa: PLC0415

    report_at_end(request.config, lines)  # in pytest's summary, not between the dots


@pytest.fixture(autouse=True)
def cpu_mode(caffe):
    caffe.set_mode_cpu()
    engine.set_mode_cpu()


def write(path, text):
    path = Path(path)
    path.write_text(textwrap.dedent(text))
    return str(path)


def wide_blobs(net):
    """Blobs at or after the first layer with thousands of inputs (looser forward limit)."""
    wide, seen = set(), False
    for name, layer in zip(net._layer_names, net.layers):
        if layer.blobs and layer.type in ("Convolution", "InnerProduct"):
            weight = layer.blobs[0]
            seen |= weight.count // weight.shape[0] >= WIDE_FAN_IN
        if seen:
            wide.update(net.top_names[name])
    return wide


def compare_forward(ours, theirs, label):
    wide = wide_blobs(ours)
    for name in ours.blobs:
        if name in theirs.blobs:
            limit = WIDE_FORWARD_LIMIT if name in wide else FORWARD_LIMIT
            check("forward" + (" (wide)" if name in wide else ""), f"{label}:{name}",
                  ours.blobs[name].data, theirs.blobs[name].data, limit)


def compare_backward(ours, theirs, label, kinked=()):
    """Param diffs and blob diffs within 1e-4. A blob in `kinked` lies below a ReLU whose
    input has values within rounding of 0, where Caffe's mask and ours may differ by one
    element: there 99.5% of the elements must agree within 1e-4 (the largest is recorded)."""
    for name, blobs in ours.params.items():
        for i, blob in enumerate(blobs):
            check("param diff", f"{label}:{name}[{i}]", blob.diff, theirs.params[name][i].diff,
                  BACKWARD_LIMIT)
    for name in ours.blobs:
        if name not in theirs.blobs:
            continue
        a, b = ours.blobs[name].diff, theirs.blobs[name].diff
        if name not in kinked:
            check("blob diff", f"{label}:{name}", a, b, BACKWARD_LIMIT)
            continue
        check("blob diff (below a kink)", f"{label}:{name}", a, b, 1.0)
        scale = max(float(np.abs(b).max()), 1e-30)
        agree = float((np.abs(a.astype(np.float64) - b) <= BACKWARD_LIMIT * scale).mean())
        assert agree >= 0.995, f"{label}:{name}: only {agree:.2%} of the diff agrees"


def assert_alive(net, relu_blobs=(), sigmoid_blobs=()):
    for name in relu_blobs:
        share = float((net.blobs[name].data != 0).mean())
        assert share > 0.2, f"ReLU output '{name}' is {share:.0%} non-zero: activations collapsed"
    for name in sigmoid_blobs:
        values = net.blobs[name].data
        middle = float(((values > 0.05) & (values < 0.95)).mean())
        assert values.std() > 0.1 and middle > 0.3, \
            f"sigmoid output '{name}' is saturated (std {values.std():.3f}, {middle:.0%} inside)"


def randomize(net, rng, scale=None):
    """Random weights (He-scaled gaussian, small biases) in our net; BatchNorm statistics set."""
    scale = scale or {}
    for name, blobs in net.params.items():
        layer = net.layer_dict[name]
        if layer.type == "BatchNorm":
            channels = blobs[0].shape[0]
            blobs[0].data[...] = rng.normal(0, 0.5, channels) * 2.0
            blobs[1].data[...] = rng.uniform(0.5, 2.0, channels) * 2.0
            blobs[2].data[...] = 2.0
            continue
        weight = blobs[0]
        fan_in = max(1, weight.count // weight.shape[0])
        if layer.type == "Scale":
            weight.data[...] = rng.uniform(0.5, 1.5, weight.shape)
        else:
            values = rng.normal(0, np.sqrt(2.0 / fan_in), weight.shape)
            if layer.type == "Convolution":  # zero-mean filters: positive inputs stay balanced
                values -= values.reshape(len(values), -1).mean(1).reshape((-1,) + (1,) *
                                                                          (values.ndim - 1))
            weight.data[...] = values * scale.get(name, 1.0)
        for bias in blobs[1:]:
            bias.data[...] = rng.normal(0, 0.1, bias.shape)


def twin(caffe, prototxt, phase, ours, tmp_path):
    """Real Caffe's net for `prototxt`, holding our net's weights (through a caffemodel)."""
    model = tmp_path / "weights.caffemodel"
    ours.save(str(model))
    return caffe.Net(str(prototxt), str(model), phase)


def feed(ours, theirs, values):
    for name, value in values.items():
        ours.blobs[name].data[...] = value
        theirs.blobs[name].data[...] = value


# ---------------------------------------------------------------- tiny nets, every layer

TINY_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 4 dim: 13 dim: 13 } shape { dim: 4 } } }
layer { name: "const" type: "DummyData" top: "const"
        dummy_data_param { shape { dim: 4 dim: 10 } data_filler { type: "constant" value: 0.25 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 2 dilation: 2 stride: 1 bias_term: false } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "conv3" type: "Convolution" bottom: "data" top: "conv3"
        convolution_param { num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0 } }
layer { name: "pool3" type: "Pooling" bottom: "conv3" top: "pool3"
        pooling_param { pool: AVE kernel_size: 3 stride: 3 pad: 1 } }
layer { name: "pool3m" type: "Pooling" bottom: "conv3" top: "pool3m"
        pooling_param { pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 2 } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm2" type: "LRN" bottom: "pool2" top: "norm2"
        lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "bn" type: "BatchNorm" bottom: "norm2" top: "bn" }
layer { name: "scale" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true } }
layer { name: "tanh" type: "TanH" bottom: "bn" top: "tanh" }
layer { name: "gpool" type: "Pooling" bottom: "tanh" top: "gpool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "flat" type: "Flatten" bottom: "tanh" top: "flat" }
layer { name: "gflat" type: "Flatten" bottom: "gpool" top: "gflat" }
layer { name: "flat3" type: "Flatten" bottom: "pool3" top: "flat3" }
layer { name: "flat3m" type: "Flatten" bottom: "pool3m" top: "flat3m" }
layer { name: "cat" type: "Concat" bottom: "flat" bottom: "gflat" bottom: "flat3" bottom: "flat3m" top: "cat" }
layer { name: "split" type: "Split" bottom: "cat" top: "cat_a" top: "cat_b" }
layer { name: "ip1" type: "InnerProduct" bottom: "cat_a" top: "ip1" inner_product_param { num_output: 10 } }
layer { name: "ip1t" type: "InnerProduct" bottom: "cat_b" top: "ip1t"
        inner_product_param { num_output: 10 transpose: true } }
layer { name: "drop" type: "Dropout" bottom: "ip1t" top: "ip1t" dropout_param { dropout_ratio: 0.3 } }
layer { name: "sum" type: "Eltwise" bottom: "ip1" bottom: "ip1t" bottom: "const" top: "sum"
        eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 } }
layer { name: "mx" type: "Eltwise" bottom: "ip1" bottom: "sum" top: "mx" eltwise_param { operation: MAX } }
layer { name: "prod" type: "Eltwise" bottom: "mx" bottom: "ip1t" top: "prod" eltwise_param { operation: PROD } }
layer { name: "sig" type: "Sigmoid" bottom: "prod" top: "sig" }
layer { name: "ip2" type: "InnerProduct" bottom: "sig" top: "ip2" inner_product_param { num_output: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss"
        loss_param { ignore_label: 3 } }
layer { name: "loss_b" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss_b"
        loss_weight: 0.7 loss_param { normalization: BATCH_SIZE } }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" accuracy_param { top_k: 2 } }
layer { name: "resh" type: "Reshape" bottom: "ip1" top: "resh" reshape_param { shape { dim: 0 dim: 2 dim: -1 } } }
layer { name: "ip3" type: "InnerProduct" bottom: "resh" top: "ip3" inner_product_param { num_output: 3 axis: 2 } }
layer { name: "prob" type: "Softmax" bottom: "ip3" top: "prob" softmax_param { axis: 2 } }
layer { name: "flatp" type: "Flatten" bottom: "prob" top: "flatp" }
layer { name: "ip4" type: "InnerProduct" bottom: "ip1t" top: "ip4" inner_product_param { num_output: 6 } }
layer { name: "eloss" type: "EuclideanLoss" bottom: "flatp" bottom: "ip4" top: "eloss" loss_weight: 0.5 }
"""


TINY_SCALE = {"ip1": 0.3, "ip1t": 0.3}  # keeps the sigmoid of their product spread


def tiny_inputs(rng):
    return {"data": rng.normal(0, 2.0, (4, 4, 13, 13)).astype(np.float32),
            "label": np.array([0, 1, 3, 4], np.float32)}


@pytest.mark.parametrize("phase_name", ["TEST", "TRAIN_no_dropout"])
def test_tiny_net_forward_backward(caffe, tmp_path, phase_name):
    phase = engine.TEST if phase_name == "TEST" else engine.TRAIN
    text = TINY_NET
    if phase == engine.TRAIN:  # dropout has its own test below (the mask must be recovered)
        text = text.replace('dropout_param { dropout_ratio: 0.3 }',
                            'dropout_param { dropout_ratio: 0.3 } include { phase: TEST }')
    proto = write(tmp_path / "tiny.prototxt", text)
    rng = np.random.default_rng(1)
    ours = engine.Net(proto, phase)
    randomize(ours, rng, scale=TINY_SCALE)
    theirs = twin(caffe, proto, phase, ours, tmp_path)
    feed(ours, theirs, tiny_inputs(rng))
    ours.forward()
    theirs.forward()
    assert_alive(ours, relu_blobs=("conv2",), sigmoid_blobs=("sig",))
    compare_forward(ours, theirs, f"tiny {phase_name}")
    ours.backward()
    theirs.backward()
    compare_backward(ours, theirs, f"tiny {phase_name}")
    assert np.abs(ours.params["conv1"][0].diff).max() > 0
    if phase == engine.TRAIN:  # BatchNorm's running statistics after one training forward
        for i in range(3):
            check("forward", f"tiny {phase_name}:bn stats[{i}]", ours.params["bn"][i].data,
                  theirs.params["bn"][i].data, FORWARD_LIMIT)


DROPOUT_NET = """
name: "drop"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 8 dim: 20 } shape { dim: 8 } } }
layer { name: "fc6" type: "InnerProduct" bottom: "data" top: "fc6" inner_product_param { num_output: 64 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 32 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.25 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8" inner_product_param { num_output: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
"""


def test_dropout_train_with_recovered_mask(caffe, tmp_path):
    """Caffe's TRAIN dropout, mask read back by running Caffe layer by layer (forward(start,
    end)) and pinned in ours: the same outputs, the same 1/(1-ratio) scaling, the same grads."""
    proto = write(tmp_path / "drop.prototxt", DROPOUT_NET)
    rng = np.random.default_rng(2)
    ours = engine.Net(proto, engine.TRAIN)
    randomize(ours, rng)
    theirs = twin(caffe, proto, engine.TRAIN, ours, tmp_path)
    feed(ours, theirs, {"data": rng.normal(0, 1, (8, 20)).astype(np.float32),
                        "label": rng.integers(0, 5, 8).astype(np.float32)})
    masks = {}
    for relu, drop, blob in (("relu6", "drop6", "fc6"), ("relu7", "drop7", "fc7")):
        start = "fc6" if blob == "fc6" else "fc7"
        theirs.forward(start=start, end=relu) if blob == "fc7" else theirs.forward(end=relu)
        before = theirs.blobs[blob].data.copy()
        theirs.forward(start=drop, end=drop)
        after = theirs.blobs[blob].data.copy()
        kept = after != 0
        ratio = ours.layer_dict[drop].ratio
        scaled = before[kept] / (1.0 - ratio)
        check("forward", f"dropout scaling {drop}", after[kept], scaled, FORWARD_LIMIT)
        masks[drop] = kept.astype(np.float32)
        assert 0.2 < kept[before != 0].mean() < 0.95
    theirs.forward(start="fc8")
    for drop, mask in masks.items():
        ours.layer_dict[drop].fixed_mask = mask
    ours.forward()
    assert_alive(ours, relu_blobs=("fc7",))
    compare_forward(ours, theirs, "dropout TRAIN")
    ours.backward()
    theirs.backward()
    compare_backward(ours, theirs, "dropout TRAIN")


# ---------------------------------------------------------------- the released model's net

def kevinnet_input(fixtures_dir, count):
    from PIL import Image  # noqa: PLC0415

    images = []
    for name in sorted(os.listdir(fixtures_dir / "imgs"))[:count]:
        with Image.open(fixtures_dir / "imgs" / name) as pil:
            rgb = np.asarray(pil.convert("RGB").resize((227, 227), Image.BILINEAR), np.float32)
        images.append(rgb[:, :, ::-1].transpose(2, 0, 1) - np.array([104, 117, 123],
                                                                    np.float32)[:, None, None])
    return np.stack(images)


def test_kevinnet_deploy_v1_forward_backward(caffe, fixtures_dir, tmp_path):
    """The authors' 48-bit KevinNet deploy file (V1 format) at batch 2, random weights."""
    deploy = (fixtures_dir / "models" / "KevinNet_CIFAR10_48_deploy.prototxt").read_text()
    deploy = deploy.replace("input_dim: 10", "input_dim: 2", 1)
    proto = write(tmp_path / "kevinnet.prototxt", "force_backward: true\n" + deploy)
    rng = np.random.default_rng(3)
    ours = engine.Net(proto, engine.TEST)
    assert ours.inputs == ["data"] and ours.outputs == ["fc8_kevin_encode"]
    randomize(ours, rng)
    data = kevinnet_input(fixtures_dir, 2)
    # Scale the latent layer so that the 48 sigmoids are spread, not saturated.
    ours.forward(data=data)
    spread = ours.blobs["fc8_kevin"].data.std()
    ours.params["fc8_kevin"][0].data[...] *= 2.0 / spread
    ours.params["fc8_kevin"][1].data[...] *= 2.0 / spread
    theirs = twin(caffe, proto, engine.TEST, ours, tmp_path)
    ours.forward(data=data)
    theirs.forward(data=data)
    assert_alive(ours, relu_blobs=("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"),
                 sigmoid_blobs=("fc8_kevin_encode",))
    compare_forward(ours, theirs, "KevinNet deploy")
    top_diff = rng.normal(0, 1, (2, 48)).astype(np.float32)
    ours.backward(fc8_kevin_encode=top_diff)
    theirs.backward(fc8_kevin_encode=top_diff)
    # conv1 holds pre-activations within rounding of 0: its ReLU mask may flip an element.
    compare_backward(ours, theirs, "KevinNet deploy", kinked=("data", "conv1"))
    codes_ours = ours.blobs["fc8_kevin_encode"].data > 0.5
    codes_caffe = theirs.blobs["fc8_kevin_encode"].data > 0.5
    assert (codes_ours == codes_caffe).mean() > 0.99


# ---------------------------------------------------------------- Data layer

def _records(rng, count, shape, classes=10):
    images = rng.integers(0, 256, size=(count,) + shape, dtype=np.uint8)
    labels = rng.integers(0, classes, size=count)
    return [(images[i], int(labels[i])) for i in range(count)]


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_data_layer_matches_caffe(caffe, tmp_path, backend):
    """Records in key order across the wrap-around, centre crop (TEST), mean_file, scale."""
    rng = np.random.default_rng(4)
    records = _records(rng, 7, (3, 12, 10))
    # LevelDB is locked per process by each library copy: Caffe and ours read separate copies.
    for who in ("ours", "caffe"):
        write_records(tmp_path / f"{who}_{backend}", records, backend=backend)
    mean = rng.uniform(0, 255, (1, 3, 12, 10)).astype(np.float32)
    write_blob(mean, tmp_path / "mean.binaryproto")
    net = """
    name: "d"
    layer {{ name: "data" type: "Data" top: "data" top: "label"
            transform_param {{ crop_size: 8 scale: 0.5 mean_file: "{mean}" }}
            data_param {{ source: "{source}" backend: {db} batch_size: 3 }} }}
    """
    db = backend.upper()
    ours = engine.Net(write(tmp_path / "ours.prototxt", net.format(
        mean=tmp_path / "mean.binaryproto", source=tmp_path / f"ours_{backend}", db=db)),
        engine.TEST)
    theirs = caffe.Net(write(tmp_path / "caffe.prototxt", net.format(
        mean=tmp_path / "mean.binaryproto", source=tmp_path / f"caffe_{backend}", db=db)),
        caffe.TEST)
    for batch in range(4):  # 12 records from 7: wraps around
        ours.forward()
        theirs.forward()
        check("data layer", f"{backend} batch {batch}", ours.blobs["data"].data,
              theirs.blobs["data"].data, 0.0)
        assert (ours.blobs["label"].data == theirs.blobs["label"].data).all()
    ours.close()


# ---------------------------------------------------------------- solvers

SOLVER_NET = """
name: "solver_net"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
        transform_param {{ scale: 0.02 mean_value: 120 mean_value: 100 mean_value: 130 }}
        data_param {{ source: "{train}" backend: LMDB batch_size: 4 }} }}
layer {{ name: "test_data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
        transform_param {{ scale: 0.02 mean_value: 120 }}
        data_param {{ source: "{test}" backend: LMDB batch_size: 3 }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
        convolution_param {{ num_output: 6 kernel_size: 3
          weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
        param {{ lr_mult: 10 }} param {{ lr_mult: 20 }}
        inner_product_param {{ num_output: 8 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "encode" type: "Sigmoid" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        param {{ lr_mult: 0.5 decay_mult: 2 }} param {{ lr_mult: 0 }}
        inner_product_param {{ num_output: 4 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
        include {{ phase: TEST }} }}
"""

SOLVER = """
net: "{net}"
test_iter: 2
test_interval: 3
base_lr: {base_lr}
lr_policy: "step"
gamma: 0.5
stepsize: 2
momentum: {momentum}
weight_decay: 0.01
iter_size: {iter_size}
clip_gradients: {clip}
display: 0
max_iter: 100
snapshot_prefix: "{prefix}"
random_seed: 5
type: "{kind}"
"""

SOLVER_CASES = {  # type: (base_lr, momentum, iter_size, clip_gradients)
    "SGD": (0.1, 0.9, 1, 0.5),
    "Nesterov": (0.1, 0.9, 2, -1.0),
    "Adam": (0.01, 0.9, 1, 0.3),
}


def solver_files(tmp_path, kind, who):
    rng = np.random.default_rng(6)
    folder = tmp_path / who
    folder.mkdir(exist_ok=True)
    records = _records(rng, 14, (3, 10, 10), classes=4)
    write_records(folder / "train_lmdb", records[:10], backend="lmdb")
    write_records(folder / "test_lmdb", records[10:], backend="lmdb")
    net = write(folder / "net.prototxt", SOLVER_NET.format(train=folder / "train_lmdb",
                                                           test=folder / "test_lmdb"))
    base_lr, momentum, iter_size, clip = SOLVER_CASES[kind]
    return write(folder / "solver.prototxt", SOLVER.format(
        net=net, base_lr=base_lr, momentum=momentum, iter_size=iter_size, clip=clip,
        prefix=folder / "snap", kind=kind))


def history_of(path):
    return [blob_to_array(b) for b in read_solverstate(path).history]


def compare_solvers(ours, theirs, steps, label, caffe_prefix):
    """Step both `steps` times; hold each step's weight change, the history, the test scores."""
    for _ in range(steps):
        before_ours = {n: [b.data.copy() for b in blobs] for n, blobs in ours.net.params.items()}
        before_caffe = {n: [b.data.copy() for b in blobs]
                        for n, blobs in theirs.net.params.items()}
        ours.step(1)
        theirs.step(1)
        assert ours.iter == theirs.iter
        for name, blobs in ours.net.params.items():
            for i, blob in enumerate(blobs):
                check("solver update", f"{label} iter {ours.iter} {name}[{i}]",
                      blob.data - before_ours[name][i],
                      theirs.net.params[name][i].data - before_caffe[name][i], SOLVER_LIMIT)
    _, state_ours = ours.snapshot()
    theirs.snapshot()
    state_caffe = f"{caffe_prefix}_iter_{theirs.iter}.solverstate"
    ours_state = read_solverstate(state_ours)
    caffe_state = read_solverstate(state_caffe)
    assert (ours_state.iter, ours_state.current_step) == (caffe_state.iter,
                                                          caffe_state.current_step)
    for i, (a, b) in enumerate(zip(history_of(state_ours), history_of(state_caffe))):
        check("solver history", f"{label} iter {ours.iter} history[{i}]", a, b, SOLVER_LIMIT)
    assert len(ours_state.history) == len(caffe_state.history)


def make_pair(caffe, tmp_path, kind):
    ours = engine.get_solver(solver_files(tmp_path, kind, "ours"))
    theirs = caffe.get_solver(solver_files(tmp_path, kind, "caffe"))
    init = tmp_path / "init.caffemodel"
    ours.net.save(str(init))
    theirs.net.copy_from(str(init))
    return ours, theirs


@pytest.mark.parametrize("kind", sorted(SOLVER_CASES))
def test_solver_steps_match_caffe(caffe, tmp_path, kind):
    """Five steps with momentum, weight decay, lr_mult/decay_mult (one lr_mult 0), an lr step
    at iteration 2 and 4, a test pass at 0 and 3; Nesterov with iter_size 2, SGD and Adam with
    clip_gradients."""
    ours, theirs = make_pair(caffe, tmp_path, kind)
    compare_solvers(ours, theirs, 5, kind, tmp_path / "caffe" / "snap")
    assert ours.current_step == 2
    scores = ours.test()
    assert set(scores) == {"accuracy", "loss"}
    theirs_net = theirs.test_nets[0]
    assert theirs_net.blobs["loss"].data.shape == ours.test_nets[0].blobs["loss"].data.shape
    ours.close()


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_solver_clip_gradients_active(caffe, tmp_path, kind):
    """The clip_gradients of the SGD and Adam cases does scale their first step: the global
    L2 norm of the first gradient exceeds it."""
    ours = engine.get_solver(solver_files(tmp_path, kind, "ours"))
    ours.net.clear_param_diffs()
    ours.net.forward()
    ours.net.backward()
    norm = np.sqrt(sum(float((b.diff.astype(np.float64) ** 2).sum())
                       for b in ours.net.learnable_params))
    assert norm > SOLVER_CASES[kind][3] * 1.5
    ours.close()


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_snapshots_cross_restore(caffe, tmp_path, kind):
    """Each engine restores the other's snapshot (.solverstate with its .caffemodel) and goes on
    as the snapshot's own engine does from the same file. (Restoring does not restore the data
    cursor, in Caffe or here, so both runs of a pair read their data from the start.)"""
    ours, theirs = make_pair(caffe, tmp_path, kind)
    for _ in range(3):
        ours.step(1)
        theirs.step(1)
    _, ours_state = ours.snapshot()
    theirs.snapshot()
    caffe_state = f"{tmp_path / 'caffe' / 'snap'}_iter_3.solverstate"
    runs = {}
    for engine_name, make in (("caffe", caffe.get_solver), ("torch", engine.get_solver)):
        for state_name, state in (("ours", ours_state), ("caffe's", caffe_state)):
            solver = make(solver_files(tmp_path, kind, f"{engine_name}-from-{state_name}"))
            solver.restore(state)
            assert solver.iter == 3
            runs[engine_name, state_name] = solver
    for name, blobs in ours.net.params.items():  # the weights came from the learned_net
        for i, blob in enumerate(blobs):
            assert np.array_equal(runs["caffe", "ours"].net.params[name][i].data, blob.data)
            assert np.array_equal(runs["torch", "caffe's"].net.params[name][i].data,
                                  theirs.net.params[name][i].data)
    for _ in range(2):
        for solver in runs.values():
            solver.step(1)
    for state_name in ("ours", "caffe's"):
        continued_by_caffe = runs["caffe", state_name]
        continued_by_torch = runs["torch", state_name]
        for name, blobs in continued_by_torch.net.params.items():
            for i, blob in enumerate(blobs):
                check("restored run", f"{kind} from {state_name} snapshot {name}[{i}]",
                      blob.data, continued_by_caffe.net.params[name][i].data, SOLVER_LIMIT)
    for solver in [ours] + [s for (who, _), s in runs.items() if who == "torch"]:
        solver.close()


def test_caffemodel_both_ways(caffe, tmp_path):
    """Our .caffemodel loads in Caffe with identical values; Caffe's loads in ours."""
    proto = write(tmp_path / "tiny.prototxt", TINY_NET)
    rng = np.random.default_rng(7)
    ours = engine.Net(proto, engine.TEST)
    randomize(ours, rng)
    theirs = twin(caffe, proto, engine.TEST, ours, tmp_path)
    for name, blobs in ours.params.items():
        for i, blob in enumerate(blobs):
            assert np.array_equal(theirs.params[name][i].data, blob.data), (name, i)
    for blobs in theirs.params.values():
        for blob in blobs:
            blob.data[...] = rng.normal(size=blob.data.shape)
    theirs.save(str(tmp_path / "caffe.caffemodel"))
    back = engine.Net(proto, str(tmp_path / "caffe.caffemodel"), engine.TEST)
    for name, blobs in back.params.items():
        for i, blob in enumerate(blobs):
            assert np.array_equal(theirs.params[name][i].data, blob.data), (name, i)
    saved = read_net(tmp_path / "weights.caffemodel")
    assert all(b.HasField("shape") for layer in saved.layer for b in layer.blobs)


def test_filler_distributions_match_caffe(caffe, tmp_path):
    """Caffe's fillers and ours draw from the same distributions (not the same streams)."""
    net = """
    name: "fill"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 64 dim: 8 dim: 8 } } }
    layer { name: "xavier" type: "Convolution" bottom: "data" top: "a"
            convolution_param { num_output: 128 kernel_size: 3 weight_filler { type: "xavier" }
            bias_filler { type: "uniform" min: -2 max: 3 } } }
    layer { name: "msra" type: "Convolution" bottom: "data" top: "b"
            convolution_param { num_output: 128 kernel_size: 3 weight_filler { type: "msra" }
            bias_filler { type: "constant" value: 0.7 } } }
    layer { name: "gauss" type: "InnerProduct" bottom: "data" top: "c"
            inner_product_param { num_output: 64 weight_filler { type: "gaussian" mean: 0.5 std: 0.02 }
            bias_filler { type: "xavier" variance_norm: AVERAGE } } }
    """
    proto = write(tmp_path / "fill.prototxt", net)
    engine.set_random_seed(11)
    ours = engine.Net(proto, engine.TEST)
    caffe.set_random_seed(11)
    theirs = caffe.Net(proto, caffe.TEST)
    for name, blobs in ours.params.items():
        for i, blob in enumerate(blobs):
            a, b = blob.data.astype(np.float64), theirs.params[name][i].data.astype(np.float64)
            n, spread = a.size, max(b.std(), 1e-6)
            assert abs(a.mean() - b.mean()) <= 6 * spread / np.sqrt(n) + 1e-6, (name, i, "mean")
            assert abs(a.std() - b.std()) <= 6 * spread / np.sqrt(2 * n) + 1e-6, (name, i, "std")
            for stat in (np.min, np.max):  # bounded fillers reach their bounds alike
                if (name, i) not in (("msra", 0), ("gauss", 0)):  # gaussians are unbounded
                    assert abs(stat(a) - stat(b)) <= 0.1 * spread, (name, i, stat.__name__)
