"""The original's V0 / V1 nets and CaffeNet's files: parse, upgrade, round trip; upgrade_net.py.

The expected layer tables below were written from reading the fixture files, not from our code.
"""
import importlib.util
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import ROOT
from dlbhc_caffe import proto
from dlbhc_caffe.proto import pb

TOOL = ROOT / "tools" / "upgrade_net.py"

# (name, type, num_output, group, pad, kernel, stride, lr_mult, decay_mult); None: not that kind
# of layer. CaffeNet's conv1..drop7, as in train_CIFAR10_48.prototxt (the padding layers pad2..pad5
# fold into conv2..conv5) and caffenet_train_val.prototxt.
CAFFENET_BODY = [
    ("conv1", "Convolution", 96, 1, 0, 11, 4, (1, 2), (1, 0)),
    ("relu1", "ReLU", None, None, None, None, None, (), ()),
    ("pool1", "Pooling", None, None, 0, 3, 2, (), ()),
    ("norm1", "LRN", None, None, None, None, None, (), ()),
    ("conv2", "Convolution", 256, 2, 2, 5, 1, (1, 2), (1, 0)),
    ("relu2", "ReLU", None, None, None, None, None, (), ()),
    ("pool2", "Pooling", None, None, 0, 3, 2, (), ()),
    ("norm2", "LRN", None, None, None, None, None, (), ()),
    ("conv3", "Convolution", 384, 1, 1, 3, 1, (1, 2), (1, 0)),
    ("relu3", "ReLU", None, None, None, None, None, (), ()),
    ("conv4", "Convolution", 384, 2, 1, 3, 1, (1, 2), (1, 0)),
    ("relu4", "ReLU", None, None, None, None, None, (), ()),
    ("conv5", "Convolution", 256, 2, 1, 3, 1, (1, 2), (1, 0)),
    ("relu5", "ReLU", None, None, None, None, None, (), ()),
    ("pool5", "Pooling", None, None, 0, 3, 2, (), ()),
    ("fc6", "InnerProduct", 4096, None, None, None, None, (1, 2), (1, 0)),
    ("relu6", "ReLU", None, None, None, None, None, (), ()),
    ("drop6", "Dropout", None, None, None, None, None, (), ()),
    ("fc7", "InnerProduct", 4096, None, None, None, None, (1, 2), (1, 0)),
    ("relu7", "ReLU", None, None, None, None, None, (), ()),
    ("drop7", "Dropout", None, None, None, None, None, (), ()),
]
DATA = ("data", "Data", None, None, None, None, None, (), ())
INPUT = ("input", "Input", None, None, None, None, None, (), ())
KEVIN_HEAD = [
    ("fc8_kevin", "InnerProduct", 48, None, None, None, None, (1, 2), (1, 0)),
    ("fc8_kevin_encode", "Sigmoid", None, None, None, None, None, (), ()),
]
PASCAL = ("fc8_pascal", "InnerProduct", 10, None, None, None, None, (10, 20), (1, 0))


def no_multipliers(rows):
    """Deploy nets carry no lr / decay multipliers."""
    return [row[:7] + ((), ()) for row in rows]


EXPECTED = {
    "train_CIFAR10_48.prototxt": [DATA] + CAFFENET_BODY + KEVIN_HEAD + [
        PASCAL, ("loss", "SoftmaxWithLoss", None, None, None, None, None, (), ())],
    "test_CIFAR10_48.prototxt": [DATA] + CAFFENET_BODY + KEVIN_HEAD + [
        PASCAL, ("prob", "Softmax", None, None, None, None, None, (), ()),
        ("accuracy", "Accuracy", None, None, None, None, None, (), ())],
    "KevinNet_CIFAR10_48_deploy.prototxt": no_multipliers([INPUT] + CAFFENET_BODY + KEVIN_HEAD),
    "caffenet_deploy.prototxt": no_multipliers([INPUT] + CAFFENET_BODY + [
        ("fc8", "InnerProduct", 1000, None, None, None, None, (), ()),
        ("prob", "Softmax", None, None, None, None, None, (), ())]),
    "caffenet_deploy_l7.prototxt": no_multipliers([INPUT] + CAFFENET_BODY[:20]),
    "caffenet_train_val.prototxt": [DATA, DATA] + CAFFENET_BODY + [
        ("fc8", "InnerProduct", 1000, None, None, None, None, (1, 2), (1, 0)),
        ("accuracy", "Accuracy", None, None, None, None, None, (), ()),
        ("loss", "SoftmaxWithLoss", None, None, None, None, None, (), ())],
}
OLD_FORMAT = {"train_CIFAR10_48.prototxt": "V0", "test_CIFAR10_48.prototxt": "V0",
              "KevinNet_CIFAR10_48_deploy.prototxt": "V1", "caffenet_deploy.prototxt": "V1",
              "caffenet_deploy_l7.prototxt": "V1", "caffenet_train_val.prototxt": "V1"}


def describe(layer):
    """A layer as a row of the tables above."""
    conv = layer.convolution_param
    pool = layer.pooling_param
    if layer.type == "Convolution":
        shape = (conv.num_output, conv.group, conv.pad[0] if conv.pad else 0,
                 conv.kernel_size[0], conv.stride[0] if conv.stride else 1)
    elif layer.type == "Pooling":
        shape = (None, None, pool.pad, pool.kernel_size, pool.stride)
    elif layer.type == "InnerProduct":
        shape = (layer.inner_product_param.num_output, None, None, None, None)
    else:
        shape = (None,) * 5
    return ((layer.name, layer.type) + shape + (tuple(p.lr_mult for p in layer.param),
                                                 tuple(p.decay_mult for p in layer.param)))


def read_fixture_net(fixtures_dir, name, upgrade=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", proto.UpgradeWarning)  # the V0 det_* fields
        return proto.read_net(fixtures_dir / "models" / name, upgrade=upgrade)


def load_tool():
    spec = importlib.util.spec_from_file_location("upgrade_net_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the fixtures

@pytest.mark.fixtures
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_nets_upgrade_to_the_expected_layers(fixtures_dir, name):
    old = read_fixture_net(fixtures_dir, name, upgrade=False)
    assert proto.net_needs_upgrade(old)
    if OLD_FORMAT[name] == "V0":
        assert old.layers[0].HasField("layer")
    else:
        assert not old.layers[0].HasField("layer") and old.layers[0].HasField("type")
    net = read_fixture_net(fixtures_dir, name)
    assert not len(net.layers) and not len(net.input)
    assert [describe(layer) for layer in net.layer] == EXPECTED[name]


@pytest.mark.fixtures
def test_v0_train_net_data_layer_and_head_settings(fixtures_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", proto.UpgradeWarning)
        net = proto.read_net(fixtures_dir / "models" / "train_CIFAR10_48.prototxt")
    dropped = sorted(str(w.message).split("'")[3] for w in caught)
    assert dropped == ["det_bg_threshold", "det_context_pad", "det_crop_mode", "det_fg_fraction",
                       "det_fg_threshold"]  # as Caffe's log of the original's training says
    layers = {layer.name: layer for layer in net.layer}
    data = layers["data"]
    assert data.data_param.source == "cifar10_train_leveldb"
    assert data.data_param.batch_size == 32
    assert data.transform_param.crop_size == 227 and data.transform_param.mirror
    assert data.transform_param.mean_file == "../../data/ilsvrc12/imagenet_mean.binaryproto"
    latent = layers["fc8_kevin"].inner_product_param
    assert (latent.weight_filler.type, latent.bias_filler.value) == ("gaussian", 1)
    assert latent.weight_filler.std == pytest.approx(0.005)
    classifier = layers["fc8_pascal"].inner_product_param
    assert classifier.weight_filler.std == pytest.approx(0.01) and classifier.bias_filler.value == 0
    assert layers["conv2"].bottom == ["norm1"]  # pad2 folded into conv2
    assert layers["norm1"].lrn_param.local_size == 5
    assert layers["drop7"].dropout_param.dropout_ratio == 0.5


@pytest.mark.fixtures
def test_v1_deploy_input_becomes_an_input_layer(fixtures_dir):
    net = read_fixture_net(fixtures_dir, "KevinNet_CIFAR10_48_deploy.prototxt")
    first = net.layer[0]
    assert (first.type, list(first.top)) == ("Input", ["data"])
    assert list(first.input_param.shape[0].dim) == [10, 3, 227, 227]


@pytest.mark.fixtures
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_text_binary_text_round_trip_is_lossless(fixtures_dir, tmp_path, name):
    for net in (read_fixture_net(fixtures_dir, name, upgrade=False),
                read_fixture_net(fixtures_dir, name)):
        proto.write_message(net, tmp_path / "net.caffemodel")
        binary = proto.read_net(tmp_path / "net.caffemodel", upgrade=False)
        assert binary == net
        proto.write_message(binary, tmp_path / "net.prototxt")
        text = proto.read_net(tmp_path / "net.prototxt", upgrade=False)
        assert text == net
        assert proto.format_text(text) == proto.format_text(net)


@pytest.mark.fixtures
def test_imagenet_mean_shapes(fixtures_dir):
    path = fixtures_dir / "models" / "imagenet_mean.binaryproto"
    blob = proto.read_blob(path)
    mean = proto.read_mean(path)
    assert blob.shape == (1, 3, 256, 256) and blob.dtype == np.float32
    assert mean.shape == (3, 256, 256)
    # BGR: the ILSVRC-2012 channel means are about 104 (B), 117 (G), 123 (R).
    assert mean.mean(axis=(1, 2)) == pytest.approx([104.0, 116.7, 122.7], abs=1.5)


# ---------------------------------------------------------------- errors

def test_malformed_prototxt_names_file_and_line(tmp_path):
    path = tmp_path / "broken.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  tpye: "ReLU"\n}\n')
    with pytest.raises(proto.ProtoError, match=r"broken\.prototxt:4"):
        proto.read_net(path)


def test_unknown_layer_type_names_the_layer(tmp_path):
    path = tmp_path / "bogus.prototxt"
    path.write_text('layer { name: "mystery" type: "Bogus" top: "x" }\n')
    with pytest.raises(proto.ProtoError, match=r"'mystery'.*'Bogus'"):
        proto.read_net(path)
    path.write_text('layers { layer { name: "oldmystery" type: "bogus" } top: "x" }\n')
    with pytest.raises(proto.ProtoError, match="'oldmystery'"):
        proto.read_net(path)


# ---------------------------------------------------------------- tools/upgrade_net.py

def tiny_v1_model():
    """A V1 caffemodel: one convolution with weights and multipliers."""
    net = pb.NetParameter(name="tiny")
    layer = net.layers.add(name="conv", type=pb.V1LayerParameter.CONVOLUTION,
                           bottom=["data"], top=["conv"])
    layer.blobs_lr.extend([1, 2])
    layer.weight_decay.extend([1, 0])
    layer.convolution_param.num_output = 2
    layer.convolution_param.kernel_size.append(1)
    layer.blobs.add().CopyFrom(proto.array_to_blob(np.arange(6.0).reshape(2, 3, 1, 1)))
    layer.blobs.add().CopyFrom(proto.array_to_blob(np.array([0.5, -0.5])))
    return net


@pytest.mark.fixtures
def test_cli_upgrades_v0_text_and_refuses_to_overwrite(fixtures_dir, tmp_path, capsys):
    tool = load_tool()
    src = fixtures_dir / "models" / "train_CIFAR10_48.prototxt"
    out = tmp_path / "train.prototxt"
    assert tool.main([str(src), str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "det_crop_mode" in captured.err
    assert proto.read_net(out, upgrade=False) == read_fixture_net(fixtures_dir, src.name)
    before = out.read_bytes()
    assert tool.main([str(src), str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert tool.main([str(src), str(out), "--force"]) == 0


def test_cli_upgrades_binary_caffemodel(tmp_path):
    tool = load_tool()
    old = tmp_path / "old.caffemodel"
    proto.write_message(tiny_v1_model(), old)
    for out in (tmp_path / "new.caffemodel", tmp_path / "new.prototxt"):
        assert tool.main([str(old), str(out)]) == 0
        assert proto.is_binary_path(out) == (out.suffix == ".caffemodel")
        net = proto.read_net(out, upgrade=False)
        layer = net.layer[0]
        assert (layer.name, layer.type) == ("conv", "Convolution")
        assert [(p.lr_mult, p.decay_mult) for p in layer.param] == [(1, 1), (2, 0)]
        np.testing.assert_array_equal(proto.blob_to_array(layer.blobs[0]).ravel(), np.arange(6))
        np.testing.assert_array_equal(proto.blob_to_array(layer.blobs[1]), [0.5, -0.5])


def test_cli_reports_malformed_input(tmp_path, capsys):
    tool = load_tool()
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer {\n  name: \"a\"\n  type: ReLU\n}\n")
    assert tool.main([str(bad), str(tmp_path / "out.prototxt")]) == 2
    assert "bad.prototxt:3" in capsys.readouterr().err
    assert not (tmp_path / "out.prototxt").exists()


def test_cli_help():
    result = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True,
                            text=True, check=True)
    for word in ("IN", "OUT", "--force"):
        assert word in result.stdout


# ---------------------------------------------------------------- against real Caffe

def caffe_upgrade(caffe_tools, src, dst, binary=False):
    tool = caffe_tools / ("upgrade_net_proto_binary" if binary else "upgrade_net_proto_text")
    result = subprocess.run([str(tool), str(src), str(dst)], capture_output=True, text=True,
                            env={"GLOG_minloglevel": "3", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert dst.is_file(), result.stderr
    return result


@pytest.mark.caffe
@pytest.mark.fixtures
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_our_upgrade_equals_caffes(fixtures_dir, caffe_tools, tmp_path, name):
    theirs_path = tmp_path / "caffe.prototxt"
    caffe_upgrade(caffe_tools, fixtures_dir / "models" / name, theirs_path)
    theirs = proto.read_net(theirs_path, upgrade=False)
    ours = read_fixture_net(fixtures_dir, name)
    assert not proto.net_needs_upgrade(theirs)
    for a, b in zip(ours.layer, theirs.layer):
        assert a == b, f"layer {a.name}:\nours:\n{a}\ncaffe:\n{b}"
    assert ours == theirs


@pytest.mark.caffe
def test_our_binary_upgrade_equals_caffes(caffe_tools, tmp_path):
    old = tmp_path / "old.caffemodel"
    proto.write_message(tiny_v1_model(), old)
    caffe_upgrade(caffe_tools, old, tmp_path / "caffe.caffemodel", binary=True)
    theirs = proto.read_net(tmp_path / "caffe.caffemodel", upgrade=False)
    assert proto.upgrade_net(tiny_v1_model()) == theirs
