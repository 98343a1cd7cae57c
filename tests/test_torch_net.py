"""The torch backend's Net: how it is built from a NetParameter (phase filtering, in-place tops,
outputs, need-backward rules), pycaffe's surface (both constructor forms, writable blobs,
reshape, forward/backward ranges) and Caffe's files (copy_from, save, the released V1 deploy)."""
import textwrap

import numpy as np
import pytest
from conftest import unavailable
import torch

from dlbhc_caffe.backends import torch as engine
from dlbhc_caffe.proto import array_to_blob, pb, read_net, write_binary


def write(tmp_path, text, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


MLP = """
name: "mlp"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 6 } shape { dim: 4 } } }
layer { name: "fc6" type: "InnerProduct" bottom: "data" top: "fc6"
        inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
        param { lr_mult: 1 } param { lr_mult: 0 }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc7" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc7" bottom: "label" top: "acc" include { phase: TEST } }
"""


def mlp(tmp_path, phase=engine.TRAIN, extra=""):
    net = engine.Net(write(tmp_path, extra + MLP), phase)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.normal(size=(4, 6))
    net.blobs["label"].data[...] = [0, 1, 2, 1]
    return net


def reference_mlp(net):
    """The MLP's loss written directly in torch: gradients by autograd, for comparison."""
    x = torch.tensor(net.blobs["data"].data)
    labels = torch.tensor(net.blobs["label"].data).long()
    w6, b6 = (torch.tensor(p.data, requires_grad=True) for p in net.params["fc6"])
    w7, b7 = (torch.tensor(p.data, requires_grad=True) for p in net.params["fc7"])
    pre6 = x @ w6.T + b6
    pre6.retain_grad()
    fc7 = torch.relu(pre6) @ w7.T + b7
    loss = torch.nn.functional.cross_entropy(fc7, labels)
    loss.backward()
    return loss, pre6, (w6, b6, w7, b7)


# ---------------------------------------------------------------- building

def test_phase_filtering_and_outputs(tmp_path):
    train = mlp(tmp_path, engine.TRAIN)
    test = mlp(tmp_path, engine.TEST)
    assert "acc" not in train.layer_dict and "acc" in test.layer_dict
    assert train.outputs == ["loss"] and test.outputs == ["acc", "loss"]  # sorted, as Caffe's set
    assert train.inputs == ["data", "label"]
    assert list(train.blobs) == ["data", "label", "fc6", "fc7", "loss"]
    assert train.blob_loss_weights["loss"] == 1.0 and train.blob_loss_weights["fc7"] == 0.0


def test_level_and_stage_rules(tmp_path):
    text = """
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 } } }
        layer { name: "a" type: "ReLU" bottom: "data" top: "a" include { stage: "deploy" } }
        layer { name: "b" type: "ReLU" bottom: "data" top: "b" exclude { stage: "deploy" } }
        layer { name: "c" type: "ReLU" bottom: "data" top: "c" include { min_level: 2 } }
        layer { name: "d" type: "ReLU" bottom: "data" top: "d" include { phase: TRAIN not_stage: "x" } }
    """
    path = write(tmp_path, text)
    names = lambda net: [n for n in net.layer_dict if n != "data"]  # noqa: E731
    assert names(engine.Net(path, engine.TEST)) == ["b"]
    assert names(engine.Net(path, engine.TEST, stages=["deploy"], level=2)) == ["a", "c"]
    assert names(engine.Net(path, engine.TRAIN)) == ["b", "d"]
    assert names(engine.Net(path, engine.TRAIN, stages=["x"])) == ["b"]


def test_build_errors_name_the_culprit(tmp_path):
    base = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 } } }\n'
    cases = [
        ('layer { name: "r" type: "ReLU" bottom: "nope" top: "r" }',
         "unknown bottom blob 'nope' \\(layer 'r', bottom index 0\\)"),
        ('layer { name: "r" type: "ReLU" bottom: "data" top: "data2" }\n'
         'layer { name: "s" type: "ReLU" bottom: "data" top: "data2" }',
         "top blob 'data2' produced by multiple sources \\(layer 's'\\)"),
        ('layer { name: "p" type: "HDF5Data" top: "x" }',
         "layer 'p': type 'HDF5Data' is not implemented by the torch backend"),
        ('layer { name: "r" type: "ReLU" bottom: "data" top: "r" include { phase: TEST } '
         'exclude { phase: TRAIN } }', "layer 'r': specify either include rules or exclude"),
    ]
    for i, (layer, message) in enumerate(cases):
        with pytest.raises(engine.NetError, match=message):
            engine.Net(write(tmp_path, base + layer, f"bad{i}.prototxt"), engine.TEST)
    with pytest.raises(TypeError, match="phase"):
        engine.Net(write(tmp_path, base, "ok.prototxt"))


def test_in_place_blob_is_one_blob(tmp_path):
    """fc6 after relu6 is one blob: it holds the ReLU's output, and after backward its diff is
    the gradient at the InnerProduct's output (the ReLU's backward overwrote it), as in Caffe."""
    net = mlp(tmp_path)
    net.forward()
    loss, pre6, _ = reference_mlp(net)
    np.testing.assert_allclose(net.blobs["fc6"].data, torch.relu(pre6).detach().numpy(),
                               rtol=1e-6)
    assert float(net.blobs["loss"].data) == pytest.approx(loss.item(), rel=1e-5)
    net.backward()
    np.testing.assert_allclose(net.blobs["fc6"].diff, pre6.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_backward_matches_autograd_and_respects_lr_mult(tmp_path):
    net = mlp(tmp_path)
    net.forward()
    net.backward()
    _, _, (w6, b6, w7, b7) = reference_mlp(net)
    np.testing.assert_allclose(net.params["fc6"][0].diff, w6.grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.params["fc6"][1].diff, b6.grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.params["fc7"][0].diff, w7.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert not net.params["fc7"][1].diff.any()  # lr_mult 0: Caffe computes no diff
    assert not net.blobs["data"].diff.any()  # input blobs need no backward...
    forced = mlp(tmp_path, extra="force_backward: true\n")
    forced.forward()
    forced.backward()
    assert forced.blobs["data"].diff.any()  # ...unless force_backward
    assert forced.params["fc7"][1].diff.any()
    assert not forced.blobs["label"].diff.any()  # labels never


def test_param_diffs_accumulate_until_cleared(tmp_path):
    net = mlp(tmp_path)
    net.forward()
    net.backward()
    once = net.params["fc6"][0].diff.copy()
    net.backward()
    np.testing.assert_allclose(net.params["fc6"][0].diff, 2 * once, rtol=1e-6)
    net.clear_param_diffs()
    assert not net.params["fc6"][0].diff.any()


def test_blob_consumed_twice_sums_gradients(tmp_path):
    path = write(tmp_path, """
        force_backward: true
        layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "a" type: "TanH" bottom: "x" top: "a" }
        layer { name: "b" type: "Sigmoid" bottom: "x" top: "b" }
        layer { name: "sq" type: "Eltwise" bottom: "a" bottom: "x" top: "sq" eltwise_param { operation: PROD } }
        layer { name: "l1" type: "EuclideanLoss" bottom: "sq" bottom: "b" top: "l1" }
    """)
    net = engine.Net(path, engine.TRAIN)
    x0 = np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)
    net.blobs["x"].data[...] = x0
    net.forward()
    net.backward()
    x = torch.tensor(x0, requires_grad=True)
    loss = ((torch.tanh(x) * x - torch.sigmoid(x)) ** 2).sum() / 2 / 2
    loss.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, x.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_propagate_down_and_loss_weight(tmp_path):
    path = write(tmp_path, """
        layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ipa" type: "InnerProduct" bottom: "x" top: "a"
                inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
        layer { name: "ipb" type: "InnerProduct" bottom: "x" top: "b"
                inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
        layer { name: "l" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l"
                loss_weight: 3 propagate_down: true propagate_down: false }
        layer { name: "r" type: "ReLU" bottom: "a" top: "r" loss_weight: 0.5 }
    """)
    net = engine.Net(path, engine.TRAIN)
    net.blobs["x"].data[...] = np.random.default_rng(9).normal(size=(2, 3))
    loss = net._forward(0, len(net.layers) - 1)
    a, b = net.blobs["a"].data, net.blobs["b"].data
    assert loss == pytest.approx(3 * ((a - b) ** 2).sum() / 2 / 2 + 0.5 * np.maximum(a, 0).sum(),
                                 rel=1e-5)
    net.backward()
    np.testing.assert_allclose(net.blobs["a"].diff, 3 * (a - b) / 2 + 0.5 * (a > 0), rtol=1e-5)
    assert net.params["ipa"][0].diff.any()
    assert not net.params["ipb"][0].diff.any()  # propagate_down: false cuts b's branch


def test_param_sharing_by_name(tmp_path):
    path = write(tmp_path, """
        layer { name: "data" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "y1" param { name: "w" }
                inner_product_param { num_output: 3 bias_term: false weight_filler { type: "gaussian" } } }
        layer { name: "ip2" type: "InnerProduct" bottom: "y1" top: "y2" param { name: "w" }
                inner_product_param { num_output: 3 bias_term: false weight_filler { type: "gaussian" } } }
        layer { name: "l" type: "EuclideanLoss" bottom: "y2" bottom: "t" top: "l" }
    """)
    net = engine.Net(path, engine.TRAIN)
    assert net.params["ip1"][0] is net.params["ip2"][0] and len(net.learnable_params) == 1
    x0 = np.random.default_rng(2).normal(size=(2, 3)).astype(np.float32)
    net.blobs["x"].data[...] = x0
    net.forward()
    net.backward()
    w = torch.tensor(net.params["ip1"][0].data, requires_grad=True)
    loss = ((torch.tensor(x0) @ w.T @ w.T) ** 2).sum() / 2 / 2
    loss.backward()
    np.testing.assert_allclose(net.params["ip1"][0].diff, w.grad.numpy(), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- pycaffe surface

def test_blob_data_is_writable_and_reaches_the_next_forward(tmp_path):
    net = mlp(tmp_path, engine.TEST)
    out1 = net.forward()
    net.blobs["data"].data[...] = 0
    net.forward()
    expected = np.maximum(net.params["fc6"][1].data, 0) @ net.params["fc7"][0].data.T + \
        net.params["fc7"][1].data
    np.testing.assert_allclose(net.blobs["fc7"].data, np.tile(expected, (4, 1)), rtol=1e-6)
    assert set(out1) == {"acc", "loss"}
    net.params["fc7"][1].data[...] += 1.0  # params too: numpy views of the weights
    net.forward()
    np.testing.assert_allclose(net.blobs["fc7"].data, np.tile(expected + 1.0, (4, 1)), rtol=1e-6)


def test_forward_with_inputs_range_and_reshape(tmp_path):
    net = engine.Net(write(tmp_path, MLP), engine.TEST)
    x = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
    out = net.forward(data=x, label=np.zeros(4, np.float32))
    assert set(out) == {"acc", "loss"}
    full = net.blobs["fc7"].data.copy()
    with pytest.raises(ValueError, match="do not match the net inputs"):
        net.forward(data=x)
    partial = net.forward(end="relu6")
    assert set(partial) == {"fc6"}
    net.blobs["fc6"].data[...] *= 0
    net.forward(start="fc7", end="fc7")
    np.testing.assert_allclose(net.blobs["fc7"].data, np.tile(net.params["fc7"][1].data, (4, 1)))
    assert not np.allclose(full, net.blobs["fc7"].data)
    net.blobs["data"].reshape(7, 6)
    net.blobs["label"].reshape(7)
    net.reshape()
    assert net.blobs["fc7"].data.shape == (7, 3) and net.blobs["fc6"].shape == (7, 8)
    net.forward()
    assert net.blobs["fc7"].data.shape == (7, 3)
    assert net.blobs["data"].num == 7 and net.blobs["data"].channels == 6
    assert net.blobs["data"].height == 1 and net.blobs["data"].count == 42


def test_forward_all_batches(tmp_path):
    net = engine.Net(write(tmp_path, MLP), engine.TEST)
    x = np.random.default_rng(4).normal(size=(10, 6)).astype(np.float32)
    out = net.forward_all(blobs=["fc7"], data=x, label=np.zeros(10, np.float32))
    assert out["fc7"].shape == (10, 3)
    net.forward(data=x[4:8], label=np.zeros(4, np.float32))
    np.testing.assert_allclose(out["fc7"][4:8], net.blobs["fc7"].data, rtol=1e-6)


def test_both_constructor_forms_and_copy_by_layer_name(tmp_path):
    path = write(tmp_path, MLP)
    source = engine.Net(path, engine.TRAIN)
    model = str(tmp_path / "w.caffemodel")
    source.save(model)
    a = engine.Net(path, engine.TEST, weights=model)
    b = engine.Net(path, model, engine.TEST)
    for net in (a, b):
        for name in ("fc6", "fc7"):
            for i in range(2):
                assert np.array_equal(net.params[name][i].data, source.params[name][i].data)
    other = write(tmp_path, MLP.replace('"fc7"', '"fc7_new"').replace(
        "num_output: 3 weight", "num_output: 3 weight"), "other.prototxt")
    renamed = engine.Net(other, engine.TEST, weights=model)  # fc7_new is not in the file
    assert np.array_equal(renamed.params["fc6"][0].data, source.params["fc6"][0].data)
    assert not np.array_equal(renamed.params["fc7_new"][0].data, source.params["fc7"][0].data)


def test_copy_from_shape_mismatch_names_the_layer(tmp_path):
    source = engine.Net(write(tmp_path, MLP), engine.TRAIN)
    model = str(tmp_path / "w.caffemodel")
    source.save(model)
    wider = write(tmp_path, MLP.replace("num_output: 8", "num_output: 9"), "wider.prototxt")
    with pytest.raises(engine.NetError, match="cannot copy param 0 weights from layer 'fc6'; "
                                              "shape mismatch"):
        engine.Net(wider, engine.TEST, weights=model)


def test_copy_from_legacy_4d_blobs(tmp_path):
    """Old caffemodels (CaffeNet's) store weights as num/channels/height/width: 1x1xMxN."""
    net = engine.Net(write(tmp_path, MLP), engine.TEST)
    rng = np.random.default_rng(5)
    old = pb.NetParameter(name="old")
    layer = old.layer.add(name="fc6", type="InnerProduct")
    weight = rng.normal(size=(1, 1, 8, 6)).astype(np.float32)
    bias = rng.normal(size=(1, 1, 1, 8)).astype(np.float32)
    layer.blobs.add().CopyFrom(array_to_blob(weight, legacy_4d=True))
    layer.blobs.add().CopyFrom(array_to_blob(bias, legacy_4d=True))
    write_binary(old, tmp_path / "old.caffemodel")
    net.copy_from(str(tmp_path / "old.caffemodel"))
    assert np.array_equal(net.params["fc6"][0].data, weight[0, 0])
    assert np.array_equal(net.params["fc6"][1].data, bias.ravel())


def test_save_writes_blob_shapes_and_layer_params(tmp_path):
    net = engine.Net(write(tmp_path, MLP), engine.TRAIN)
    path = tmp_path / "saved.caffemodel"
    net.save(str(path))
    saved = read_net(path)
    assert [layer.name for layer in saved.layer] == ["data", "fc6", "relu6", "fc7", "loss"]
    fc6 = saved.layer[1]
    assert fc6.inner_product_param.num_output == 8 and fc6.phase == pb.TRAIN
    assert list(fc6.blobs[0].shape.dim) == [8, 6]
    np.testing.assert_array_equal(np.asarray(fc6.blobs[0].data, np.float32).reshape(8, 6),
                                  net.params["fc6"][0].data)
    assert list(saved.layer[4].loss_weight) == [1.0]  # as Caffe's LossLayer records it


@pytest.mark.slow
def test_released_kevinnet_deploy_runs(fixtures_dir):
    """The authors' deploy file (V1 format, net-level inputs) runs: Caffe's blob sizes (ceil-mode
    pooling: 55 -> 27 -> 13 -> 6), codes in (0, 1) from the 48-unit sigmoid."""
    path = fixtures_dir / "models" / "KevinNet_CIFAR10_48_deploy.prototxt"
    net = engine.Net(str(path), engine.TEST)
    assert net.inputs == ["data"] and net.blobs["data"].shape == (10, 3, 227, 227)
    net.blobs["data"].reshape(1, 3, 227, 227)
    net.reshape()
    shapes = {name: blob.shape for name, blob in net.blobs.items()}
    assert shapes["conv1"] == (1, 96, 55, 55) and shapes["pool1"] == (1, 96, 27, 27)
    assert shapes["pool2"] == (1, 256, 13, 13) and shapes["pool5"] == (1, 256, 6, 6)
    assert shapes["fc7"] == (1, 4096) and shapes["fc8_kevin_encode"] == (1, 48)
    rng = np.random.default_rng(6)
    for blobs in net.params.values():
        blobs[0].data[...] = rng.normal(0, np.sqrt(2 / (blobs[0].count // blobs[0].shape[0])),
                                        blobs[0].shape)
    out = net.forward(data=rng.normal(0, 50, (1, 3, 227, 227)).astype(np.float32))
    codes = out["fc8_kevin_encode"]
    assert codes.shape == (1, 48) and ((codes >= 0) & (codes <= 1)).all()
    assert net.blobs["fc7"].data.min() >= 0  # fc7 is taken after relu7 (in place)


def test_data_layer_net_trains_phase_aware(tmp_path):
    from dlbhc_caffe.datasets.db import write_records  # noqa: PLC0415

    images = np.random.default_rng(7).integers(0, 256, (6, 1, 6, 6), dtype=np.uint8)
    write_records(tmp_path / "db", [(images[i], i % 3) for i in range(6)], backend="lmdb")
    path = write(tmp_path, f"""
        layer {{ name: "data" type: "Data" top: "data" top: "label"
                transform_param {{ crop_size: 4 mirror: true scale: 0.01 }}
                data_param {{ source: "{tmp_path / 'db'}" backend: LMDB batch_size: 6 }} }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
        layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
    """)
    engine.set_random_seed(0)
    train = engine.Net(path, engine.TRAIN)
    crops = set()
    for _ in range(20):
        train.forward()
        batch = train.blobs["data"].data
        for i in range(6):
            full = images[i, 0] * np.float32(0.01)
            for h in range(3):
                for w in range(3):
                    window = full[h:h + 4, w:w + 4]
                    if np.array_equal(batch[i, 0], window):
                        crops.add((h, w, False))
                    if np.array_equal(batch[i, 0], window[:, ::-1]):
                        crops.add((h, w, True))
    assert len(crops) > 12  # random offsets (9 of them) and mirrors appear in TRAIN
    train.backward()
    assert train.params["ip"][0].diff.any()
    test = engine.Net(path, engine.TEST)
    test.forward()
    centre = images[:, :, 1:5, 1:5] * np.float32(0.01)
    batch = test.blobs["data"].data
    assert all(np.array_equal(batch[i], centre[i]) or np.array_equal(batch[i], centre[i][:, :, ::-1])
               for i in range(6))
    train.close()
    test.close()


def test_gpu_matches_cpu(tmp_path):
    if not torch.cuda.is_available():
        unavailable("no CUDA device", hardware=True)
    path = write(tmp_path, MLP)
    cpu = engine.Net(path, engine.TRAIN)
    model = str(tmp_path / "w.caffemodel")
    cpu.save(model)
    engine.set_mode_gpu()
    try:
        gpu = engine.Net(path, model, engine.TRAIN)
    finally:
        engine.set_mode_cpu()
    assert gpu.device.type == "cuda"
    x = np.random.default_rng(8).normal(size=(4, 6)).astype(np.float32)
    for net in (cpu, gpu):
        net.blobs["data"].data[...] = x
        net.blobs["label"].data[...] = [0, 1, 2, 1]
        net.forward()
        net.backward()
    np.testing.assert_allclose(gpu.blobs["fc7"].data, cpu.blobs["fc7"].data, rtol=1e-5)
    np.testing.assert_allclose(gpu.params["fc6"][0].diff, cpu.params["fc6"][0].diff, rtol=1e-4,
                               atol=1e-7)
    gpu.blobs["data"].data[...] = 0  # a host-side write reaches the device
    gpu.forward()
    assert np.allclose(gpu.blobs["fc6"].data, np.maximum(gpu.params["fc6"][1].data, 0))
