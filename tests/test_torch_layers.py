"""The torch backend's layers, one family at a time, against Caffe's definitions written out here
as plain numpy loops, plus a finite-difference gradient check of every layer with a backward
pass (as Caffe's GradientChecker). No real Caffe needed: test_torch_parity.py holds the same
layers against Caffe itself.
"""
import textwrap

import numpy as np
import pytest
import torch

from dlbhc_caffe.backends import torch as engine
from dlbhc_caffe.backends.torch.data import DataError, Transformer
from dlbhc_caffe.backends.torch.images import resize_bilinear
from dlbhc_caffe.backends.torch.fillers import fill
from dlbhc_caffe.backends.torch.layers.vision import pooled_size
from dlbhc_caffe.datasets.db import write_records
from dlbhc_caffe.proto import pb, parse_text, write_blob

FLT_MAX = float(np.finfo(np.float32).max)


def make_net(tmp_path, body, phase=engine.TEST, name="t.prototxt"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return engine.Net(str(path), phase)


def input_layer(*shapes, tops=("data",)):
    dims = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in shapes)
    top_lines = " ".join(f'top: "{t}"' for t in tops)
    return f'layer {{ name: "input" type: "Input" {top_lines} input_param {{ {dims} }} }}\n'


def run(net, **inputs):
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    net.forward()
    return net


# ---------------------------------------------------------------- Pooling

@pytest.mark.parametrize("size,kernel,stride,pad,expected", [
    (55, 3, 2, 0, 27),   # CaffeNet pool1
    (13, 3, 2, 0, 6),    # pool5
    (6, 3, 2, 0, 3),     # ceil: floor mode would give 2
    (7, 2, 2, 0, 4),     # ceil: a last window hanging over the edge
    (11, 3, 3, 1, 4),    # ceil gives 5, whose window would start in the padding: dropped
    (5, 3, 3, 1, 2),
    (13, 3, 2, 1, 7),
])
def test_pooled_size_follows_caffe(size, kernel, stride, pad, expected):
    assert pooled_size(size, kernel, pad, stride) == expected


def caffe_pool(x, method, kernel, stride, pad):
    """Caffe's pooling_layer.cpp, forward, as loops."""
    n, c, h, w = x.shape
    oh = pooled_size(h, kernel[0], pad[0], stride[0])
    ow = pooled_size(w, kernel[1], pad[1], stride[1])
    out = np.zeros((n, c, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * stride[0] - pad[0], j * stride[1] - pad[1]
            if method == "MAX":
                he, we = min(hs + kernel[0], h), min(ws + kernel[1], w)
                hs, ws = max(hs, 0), max(ws, 0)
                out[:, :, i, j] = x[:, :, hs:he, ws:we].max(axis=(2, 3))
            else:
                he, we = min(hs + kernel[0], h + pad[0]), min(ws + kernel[1], w + pad[1])
                size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                out[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / size
    return out


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("geometry", [
    "kernel_size: 3 stride: 2", "kernel_size: 3 stride: 3 pad: 1",
    "kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 2",
    "kernel_size: 2 stride: 2"])
def test_pooling_matches_caffe_definition(tmp_path, method, geometry):
    net = make_net(tmp_path, input_layer((2, 3, 11, 8)) + f"""
        layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
                pooling_param {{ pool: {method} {geometry} }} }}""")
    x = np.random.default_rng(0).normal(size=(2, 3, 11, 8)).astype(np.float32)
    run(net, data=x)
    layer = net.layer_dict["pool"]
    expected = caffe_pool(x.astype(np.float64), method, layer.kernel, layer.stride, layer.pad)
    assert net.blobs["pool"].data.shape == expected.shape
    np.testing.assert_allclose(net.blobs["pool"].data, expected, rtol=1e-6, atol=1e-6)


def test_global_pooling(tmp_path):
    net = make_net(tmp_path, input_layer((2, 3, 5, 4)) + """
        layer { name: "g" type: "Pooling" bottom: "data" top: "g"
                pooling_param { pool: AVE global_pooling: true } }""")
    x = np.random.default_rng(1).normal(size=(2, 3, 5, 4)).astype(np.float32)
    run(net, data=x)
    np.testing.assert_allclose(net.blobs["g"].data[:, :, 0, 0], x.mean(axis=(2, 3)), rtol=1e-5)


def test_max_pool_gradient_goes_to_the_first_maximum(tmp_path):
    net = make_net(tmp_path, "force_backward: true\n" + input_layer((1, 1, 2, 2)) + """
        layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
                pooling_param { pool: MAX kernel_size: 2 } }""")
    run(net, data=np.array([[[[1.0, 3.0], [3.0, 3.0]]]], np.float32))
    net.backward(pool=np.ones((1, 1, 1, 1), np.float32))
    assert net.blobs["data"].diff.tolist() == [[[[0.0, 1.0], [0.0, 0.0]]]]


def test_pooling_rejects_pad_not_smaller_than_kernel(tmp_path):
    with pytest.raises(engine.NetError, match="pad .* must be smaller than the kernel"):
        make_net(tmp_path, input_layer((1, 1, 5, 5)) + """
            layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
                    pooling_param { pool: MAX kernel_size: 2 pad: 2 } }""")


# ---------------------------------------------------------------- Convolution, LRN

def caffe_conv(x, w, b, stride, pad, dilation, group):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (h + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    out = np.zeros((n, o, oh, ow))
    per = o // group
    for oc in range(o):
        g = oc // per
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, g * cg:(g + 1) * cg,
                           i * stride[0]:i * stride[0] + dilation[0] * (kh - 1) + 1:dilation[0],
                           j * stride[1]:j * stride[1] + dilation[1] * (kw - 1) + 1:dilation[1]]
                out[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3)) + (b[oc] if b is not None
                                                                          else 0)
    return out


@pytest.mark.parametrize("params,bias", [
    ("kernel_size: 3 pad: 1 group: 2", True),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", True),
    ("kernel_size: 2 dilation: 2 stride: 2", False),
])
def test_convolution_matches_caffe_definition(tmp_path, params, bias):
    net = make_net(tmp_path, input_layer((2, 4, 7, 6)) + f"""
        layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param {{ num_output: 6 {params} bias_term: {str(bias).lower()}
                  weight_filler {{ type: "gaussian" std: 0.5 }}
                  bias_filler {{ type: "uniform" min: -1 max: 1 }} }} }}""")
    x = np.random.default_rng(2).normal(size=(2, 4, 7, 6)).astype(np.float32)
    run(net, data=x)
    layer = net.layer_dict["conv"]
    w = net.params["conv"][0].data.astype(np.float64)
    b = net.params["conv"][1].data.astype(np.float64) if bias else None
    assert len(net.params["conv"]) == (2 if bias else 1)
    expected = caffe_conv(x.astype(np.float64), w, b, layer.stride, layer.pad, layer.dilation,
                          layer.group)
    np.testing.assert_allclose(net.blobs["conv"].data, expected, rtol=1e-5, atol=1e-5)


def test_convolution_rejects_group_not_dividing_channels(tmp_path):
    with pytest.raises(engine.NetError, match="group 2 must divide the input channels"):
        make_net(tmp_path, input_layer((1, 3, 5, 5)) + """
            layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                    convolution_param { num_output: 4 kernel_size: 3 group: 2 } }""")


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_matches_caffe_definition(tmp_path, region):
    net = make_net(tmp_path, input_layer((2, 7, 5, 4)) + f"""
        layer {{ name: "lrn" type: "LRN" bottom: "data" top: "lrn"
                lrn_param {{ local_size: 3 alpha: 0.8 beta: 0.6 k: 3 norm_region: {region} }} }}""")
    x = np.random.default_rng(3).normal(size=(2, 7, 5, 4))
    run(net, data=x.astype(np.float32))
    half = 1
    if region == "ACROSS_CHANNELS":
        padded = np.pad(x * x, ((0, 0), (half, half), (0, 0), (0, 0)))
        window = sum(padded[:, i:i + 7] for i in range(3))
        scale = 3 + 0.8 / 3 * window  # k + alpha/n * sum
    else:
        padded = np.pad(x * x, ((0, 0), (0, 0), (half, half), (half, half)))
        window = sum(padded[:, :, i:i + 5, j:j + 4] for i in range(3) for j in range(3))
        scale = 1 + 0.8 / 9 * window  # Caffe fixes the shift at 1 within a channel; k unused
    np.testing.assert_allclose(net.blobs["lrn"].data, x * scale ** -0.6, rtol=1e-5)


def test_lrn_rejects_even_size(tmp_path):
    with pytest.raises(engine.NetError, match="local_size must be odd"):
        make_net(tmp_path, input_layer((1, 4, 3, 3)) + """
            layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param { local_size: 4 } }""")


# ---------------------------------------------------------------- neurons, dropout

def test_relu_sigmoid_tanh(tmp_path):
    net = make_net(tmp_path, input_layer((3, 4)) + """
        layer { name: "relu" type: "ReLU" bottom: "data" top: "relu" relu_param { negative_slope: 0.2 } }
        layer { name: "plain" type: "ReLU" bottom: "data" top: "plain" }
        layer { name: "sig" type: "Sigmoid" bottom: "data" top: "sig" }
        layer { name: "tanh" type: "TanH" bottom: "data" top: "tanh" }""")
    x = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
    run(net, data=x)
    np.testing.assert_allclose(net.blobs["relu"].data, np.where(x > 0, x, 0.2 * x), rtol=1e-6)
    np.testing.assert_allclose(net.blobs["plain"].data, np.maximum(x, 0))
    np.testing.assert_allclose(net.blobs["sig"].data, 1 / (1 + np.exp(-x)), rtol=1e-6)
    np.testing.assert_allclose(net.blobs["tanh"].data, np.tanh(x), rtol=1e-6)


DROPOUT = input_layer((200, 100)) + """
layer { name: "drop" type: "Dropout" bottom: "data" top: "drop" dropout_param { dropout_ratio: 0.3 } }
"""


def test_dropout_scales_at_training_time(tmp_path):
    net = make_net(tmp_path, DROPOUT, engine.TRAIN)
    x = np.random.default_rng(5).uniform(1, 2, (200, 100)).astype(np.float32)
    run(net, data=x)
    out = net.blobs["drop"].data
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(out[kept], x[kept] / 0.7, rtol=1e-6)
    first = kept.copy()
    net.forward()
    assert (first != (net.blobs["drop"].data != 0)).any()  # a new mask each forward


def test_dropout_passes_through_at_test_time(tmp_path):
    net = make_net(tmp_path, DROPOUT, engine.TEST)
    x = np.random.default_rng(6).normal(size=(200, 100)).astype(np.float32)
    run(net, data=x)
    assert np.array_equal(net.blobs["drop"].data, x)


def test_dropout_fixed_mask_and_gradient(tmp_path):
    net = make_net(tmp_path, "force_backward: true\n" + DROPOUT, engine.TRAIN)
    mask = (np.random.default_rng(7).uniform(size=(200, 100)) > 0.3).astype(np.float32)
    net.layer_dict["drop"].fixed_mask = mask
    x = np.ones((200, 100), np.float32)
    run(net, data=x)
    np.testing.assert_allclose(net.blobs["drop"].data, mask / 0.7, rtol=1e-6)
    net.backward(drop=np.full((200, 100), 2.0, np.float32))
    np.testing.assert_allclose(net.blobs["data"].diff, 2.0 * mask / 0.7, rtol=1e-6)


# ---------------------------------------------------------------- InnerProduct, Softmax...

def test_inner_product_axis_and_transpose(tmp_path):
    net = make_net(tmp_path, input_layer((2, 3, 4)) + """
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 5 axis: 2 weight_filler { type: "gaussian" }
                                      bias_filler { type: "gaussian" } } }
        layer { name: "ipt" type: "InnerProduct" bottom: "data" top: "ipt"
                inner_product_param { num_output: 5 transpose: true weight_filler { type: "gaussian" } } }""")
    x = np.random.default_rng(8).normal(size=(2, 3, 4)).astype(np.float32)
    run(net, data=x)
    w, b = (p.data for p in net.params["ip"])
    assert w.shape == (5, 4)
    np.testing.assert_allclose(net.blobs["ip"].data, x @ w.T + b, rtol=1e-5, atol=1e-6)
    wt = net.params["ipt"][0].data
    assert wt.shape == (12, 5)
    np.testing.assert_allclose(net.blobs["ipt"].data, x.reshape(2, 12) @ wt, rtol=1e-5, atol=1e-6)


def test_softmax_axis(tmp_path):
    net = make_net(tmp_path, input_layer((2, 3, 4)) + """
        layer { name: "sm" type: "Softmax" bottom: "data" top: "sm" softmax_param { axis: 2 } }""")
    x = np.random.default_rng(9).normal(size=(2, 3, 4)).astype(np.float32)
    run(net, data=x)
    e = np.exp(x - x.max(axis=2, keepdims=True))
    np.testing.assert_allclose(net.blobs["sm"].data, e / e.sum(axis=2, keepdims=True), rtol=1e-6)


def loss_net(loss_param):
    return input_layer((4, 5), (4,), tops=("score", "label")) + f"""
        layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
                loss_weight: 2 loss_param {{ {loss_param} }} }}"""


@pytest.mark.parametrize("loss_param,normalizer", [
    ("", 4), ("ignore_label: 2", 3), ("ignore_label: 2 normalization: FULL", 4),
    ("ignore_label: 2 normalization: BATCH_SIZE", 4), ("ignore_label: 2 normalization: NONE", 1),
    ("normalize: false", 4)])
def test_softmax_loss_normalization_and_gradient(tmp_path, loss_param, normalizer):
    net = make_net(tmp_path, "force_backward: true\n" + loss_net(loss_param),
                   engine.TRAIN)
    x = np.random.default_rng(10).normal(size=(4, 5))
    labels = np.array([0, 2, 4, 1])
    run(net, score=x.astype(np.float32), label=labels.astype(np.float32))
    prob = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    counted = labels != 2 if "ignore_label" in loss_param else np.ones(4, bool)
    loss = -np.log(prob[np.arange(4), labels])[counted].sum() / normalizer
    assert float(net.blobs["loss"].data) == pytest.approx(loss, rel=1e-5)
    net.backward()
    grad = prob.copy()
    grad[np.arange(4), labels] -= 1
    grad[~counted] = 0
    np.testing.assert_allclose(net.blobs["score"].diff, 2 * grad / normalizer, rtol=1e-5,
                               atol=1e-7)
    assert net.blobs["label"].diff.max() == 0  # labels never receive a gradient


def test_softmax_loss_rejects_out_of_range_labels(tmp_path):
    net = make_net(tmp_path, loss_net(""), engine.TRAIN)
    net.blobs["label"].data[...] = [0, 1, 5, 1]
    with pytest.raises(engine.NetError, match="layer 'loss'.*label 5 is out of range for 5"):
        net.forward()


def test_accuracy_ranks_ties_like_caffe(tmp_path):
    net = make_net(tmp_path, input_layer((4, 3), (4,), tops=("score", "label")) + """
        layer { name: "acc" type: "Accuracy" bottom: "score" bottom: "label" top: "acc" top: "per_class" }
        layer { name: "acc2" type: "Accuracy" bottom: "score" bottom: "label" top: "acc2"
                accuracy_param { top_k: 2 ignore_label: 2 } }""")
    scores = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 5], [3, 2, 1]], np.float32)
    # Equal scores rank the higher class first: row 0's label 0 loses to class 1, row 1's
    # label 1 wins; row 3 is wrong at top-1 and right at top-2.
    run(net, score=scores, label=np.array([0, 1, 2, 1], np.float32))
    assert float(net.blobs["acc"].data) == pytest.approx(2 / 4)
    assert net.blobs["per_class"].data.tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert float(net.blobs["acc2"].data) == pytest.approx(3 / 3)


def test_euclidean_loss(tmp_path):
    net = make_net(tmp_path, "force_backward: true\n" + input_layer((3, 4), (3, 4), tops=("a", "b"))
                   + """layer { name: "l" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l" }""")
    a, b = np.random.default_rng(11).normal(size=(2, 3, 4)).astype(np.float32)
    run(net, a=a, b=b)
    assert float(net.blobs["l"].data) == pytest.approx(((a - b) ** 2).sum() / 3 / 2, rel=1e-5)
    net.backward()
    np.testing.assert_allclose(net.blobs["a"].diff, (a - b) / 3, rtol=1e-5)
    np.testing.assert_allclose(net.blobs["b"].diff, (b - a) / 3, rtol=1e-5)


# ---------------------------------------------------------------- Eltwise, shapes

def test_eltwise_operations_and_max_ties(tmp_path):
    net = make_net(tmp_path, "force_backward: true\n" +
                   input_layer((2, 3), (2, 3), (2, 3), tops=("a", "b", "c")) + """
        layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "sum"
                eltwise_param { coeff: 2 coeff: -1 coeff: 0.5 } }
        layer { name: "prod" type: "Eltwise" bottom: "a" bottom: "b" top: "prod" eltwise_param { operation: PROD } }
        layer { name: "max" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "max"
                eltwise_param { operation: MAX } }""")
    a = np.array([[1, 2, 3], [0, 0, 0]], np.float32)
    b = np.array([[1, 1, 4], [0, 5, 0]], np.float32)
    c = np.array([[1, 0, 4], [0, 5, 1]], np.float32)
    run(net, a=a, b=b, c=c)
    np.testing.assert_allclose(net.blobs["sum"].data, 2 * a - b + 0.5 * c)
    np.testing.assert_allclose(net.blobs["prod"].data, a * b)
    np.testing.assert_allclose(net.blobs["max"].data, np.maximum(np.maximum(a, b), c))
    net.backward(sum=np.zeros((2, 3), np.float32), prod=np.zeros((2, 3), np.float32),
                 max=np.ones((2, 3), np.float32))
    # Caffe: between a and b a tie goes to b; later bottoms win only when strictly greater.
    assert net.blobs["a"].diff.tolist() == [[0, 1, 0], [0, 0, 0]]
    assert net.blobs["b"].diff.tolist() == [[1, 0, 1], [1, 1, 0]]
    assert net.blobs["c"].diff.tolist() == [[0, 0, 0], [0, 0, 1]]


@pytest.mark.parametrize("reshape,expected", [
    ("shape { dim: 0 dim: -1 }", (2, 60)),
    ("shape { dim: 0 dim: 3 dim: 2 dim: -1 }", (2, 3, 2, 10)),
    ("shape { dim: -1 } axis: 1", (2, 60)),
    ("shape { dim: 4 dim: 1 } axis: 2 num_axes: 1", (2, 3, 4, 1, 5)),
    ("shape { dim: 1 } axis: -1 num_axes: 0", (2, 3, 4, 5, 1)),
])
def test_reshape_rules(tmp_path, reshape, expected):
    net = make_net(tmp_path, input_layer((2, 3, 4, 5)) + f"""
        layer {{ name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param {{ {reshape} }} }}""")
    x = np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5)
    run(net, data=x)
    assert net.blobs["r"].data.shape == expected
    assert np.array_equal(net.blobs["r"].data.ravel(), x.ravel())


def test_reshape_rejects_two_inferred_dims(tmp_path):
    with pytest.raises(engine.NetError, match="more than one -1"):
        make_net(tmp_path, input_layer((2, 3)) + """
            layer { name: "r" type: "Reshape" bottom: "data" top: "r"
                    reshape_param { shape { dim: -1 dim: -1 } } }""")


def test_flatten_concat_split(tmp_path):
    net = make_net(tmp_path, "force_backward: true\n" +
                   input_layer((2, 3, 4, 5), (2, 1, 4, 5), tops=("a", "b")) + """
        layer { name: "f" type: "Flatten" bottom: "a" top: "f" flatten_param { axis: 1 end_axis: 2 } }
        layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }
        layer { name: "cat3" type: "Concat" bottom: "b" bottom: "b" top: "cat3" concat_param { axis: -1 } }
        layer { name: "split" type: "Split" bottom: "b" top: "s1" top: "s2" }""")
    a = np.random.default_rng(12).normal(size=(2, 3, 4, 5)).astype(np.float32)
    b = np.random.default_rng(13).normal(size=(2, 1, 4, 5)).astype(np.float32)
    run(net, a=a, b=b)
    assert net.blobs["f"].data.shape == (2, 12, 5)
    assert np.array_equal(net.blobs["cat"].data, np.concatenate([a, b], axis=1))
    assert np.array_equal(net.blobs["cat3"].data, np.concatenate([b, b], axis=3))
    assert np.array_equal(net.blobs["s1"].data, b) and np.array_equal(net.blobs["s2"].data, b)
    ones = {name: np.ones(net.blobs[name].shape, np.float32) for name in net.outputs}
    net.backward(**ones)
    # b feeds cat (1), cat3 twice (2), s1 (1) and s2 (1): the gradients add up.
    np.testing.assert_allclose(net.blobs["b"].diff, np.full(b.shape, 5.0))


# ---------------------------------------------------------------- BatchNorm, Scale

BN_NET = input_layer((4, 3, 2, 2)) + """
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { moving_average_fraction: 0.9 } }
layer { name: "scale" type: "Scale" bottom: "bn" top: "out"
        scale_param { bias_term: true filler { type: "constant" value: 2 } bias_filler { type: "constant" value: 0.5 } } }
"""


def test_batch_norm_training_statistics(tmp_path):
    net = make_net(tmp_path, BN_NET, engine.TRAIN)
    x = np.random.default_rng(14).normal(2, 3, size=(4, 3, 2, 2))
    run(net, data=x.astype(np.float32))
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    normalized = (x - mean[None, :, None, None]) / np.sqrt(var + 1e-5)[None, :, None, None]
    np.testing.assert_allclose(net.blobs["bn"].data, normalized, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.blobs["out"].data, 2 * normalized + 0.5, rtol=1e-4, atol=1e-5)
    stats = [b.data.copy() for b in net.params["bn"]]
    np.testing.assert_allclose(stats[0], mean, rtol=1e-5)
    np.testing.assert_allclose(stats[1], var * 16 / 15, rtol=1e-5)  # m / (m - 1) correction
    assert stats[2].tolist() == [1.0]
    net.forward()
    np.testing.assert_allclose(net.params["bn"][0].data, mean * 1.9, rtol=1e-5)
    assert net.params["bn"][2].data.tolist() == pytest.approx([1.9])
    # The statistics are masked from the solver: lr_mult 0, as Caffe adds them.
    assert net.layer_dict["bn"].param.param[0].lr_mult == 0
    assert net.params_lr[:3] == [0.0, 0.0, 0.0]


def test_batch_norm_test_phase_uses_stored_statistics(tmp_path):
    net = make_net(tmp_path, BN_NET, engine.TEST)
    net.params["bn"][0].data[...] = [2.0, 4.0, 6.0]
    net.params["bn"][1].data[...] = [8.0, 2.0, 18.0]
    net.params["bn"][2].data[...] = 2.0  # the moving-average factor divides both
    x = np.random.default_rng(15).normal(size=(4, 3, 2, 2)).astype(np.float32)
    run(net, data=x)
    mean = np.array([1.0, 2.0, 3.0])[None, :, None, None]
    std = np.sqrt(np.array([4.0, 1.0, 9.0]) + 1e-5)[None, :, None, None]
    np.testing.assert_allclose(net.blobs["bn"].data, (x - mean) / std, rtol=1e-5, atol=1e-6)


def test_scale_with_second_bottom(tmp_path):
    net = make_net(tmp_path, input_layer((2, 3, 4), (3,), tops=("x", "s")) + """
        layer { name: "scale" type: "Scale" bottom: "x" bottom: "s" top: "y" }""")
    x = np.random.default_rng(16).normal(size=(2, 3, 4)).astype(np.float32)
    run(net, x=x, s=np.array([1, 2, 3], np.float32))
    np.testing.assert_allclose(net.blobs["y"].data, x * np.array([1, 2, 3])[None, :, None])


# ---------------------------------------------------------------- gradient check

GRADIENT_LAYERS = {
    "Convolution": ((2, 4, 6, 5), 'convolution_param { num_output: 4 kernel_size: 3 pad: 1 '
                    'stride: 2 group: 2 weight_filler { type: "gaussian" } '
                    'bias_filler { type: "gaussian" } }'),
    "Pooling_MAX": ((2, 3, 7, 6), "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }"),
    "Pooling_AVE": ((2, 3, 7, 6), "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"),
    "LRN_across": ((2, 5, 3, 3), "lrn_param { local_size: 3 alpha: 0.5 k: 2 }"),
    "LRN_within": ((2, 2, 4, 4), "lrn_param { local_size: 3 alpha: 0.5 "
                   "norm_region: WITHIN_CHANNEL }"),
    "ReLU": ((3, 5), "relu_param { negative_slope: 0.1 }"),
    "Sigmoid": ((3, 5), ""),
    "TanH": ((3, 5), ""),
    "InnerProduct": ((3, 2, 4), 'inner_product_param { num_output: 3 weight_filler '
                     '{ type: "gaussian" } bias_filler { type: "gaussian" } }'),
    "Softmax": ((3, 5), ""),
    "Flatten": ((2, 3, 4), ""),
    "BatchNorm": ((4, 3, 2, 2), ""),
    "Scale": ((2, 3, 4), 'scale_param { bias_term: true filler { type: "gaussian" } '
              'bias_filler { type: "gaussian" } }'),
    "Dropout": ((6, 5), "dropout_param { dropout_ratio: 0.4 }"),
}


SLOW_GRADIENTS = {"Convolution", "Pooling_MAX", "Pooling_AVE"}  # many float64 forward passes


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_GRADIENTS
                                  else c for c in sorted(GRADIENT_LAYERS)])
def test_gradient_check(tmp_path, case):
    """Analytic gradients of bottoms and params against central differences, in float64."""
    layer_type = case.split("_")[0]
    shape, param = GRADIENT_LAYERS[case]
    net = make_net(tmp_path, input_layer(shape) + f"""
        layer {{ name: "l" type: "{layer_type}" bottom: "data" top: "out" {param} }}""",
                   engine.TRAIN)
    layer = net.layer_dict["l"]
    if layer_type == "Dropout":
        layer.fixed_mask = (np.random.default_rng(0).uniform(size=shape) > 0.4)
    rng = np.random.default_rng(17)
    x = torch.tensor(rng.normal(size=shape), dtype=torch.float64, requires_grad=True)
    params = [torch.tensor(b.data, dtype=torch.float64, requires_grad=True)
              for b in layer.blobs if layer_type != "BatchNorm"]
    weights = None

    def objective(x, *params):
        nonlocal weights
        out = layer.forward([x], list(params) if params else
                            [b.tensor().double() for b in layer.blobs])[0]
        if weights is None:
            weights = torch.tensor(rng.normal(size=tuple(out.shape)), dtype=torch.float64)
        return (out * weights).sum()

    assert torch.autograd.gradcheck(objective, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_gradient_check_losses_and_eltwise(tmp_path):
    net = make_net(tmp_path, input_layer((4, 5), (4,), (4, 5), tops=("s", "label", "t")) + """
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" top: "loss"
                loss_param { ignore_label: 1 } }
        layer { name: "e" type: "EuclideanLoss" bottom: "s" bottom: "t" top: "e" }
        layer { name: "mx" type: "Eltwise" bottom: "s" bottom: "t" top: "mx" eltwise_param { operation: MAX } }
        layer { name: "pr" type: "Eltwise" bottom: "s" bottom: "t" top: "pr" eltwise_param { operation: PROD } }""",
                   engine.TRAIN)
    rng = np.random.default_rng(18)
    s = torch.tensor(rng.normal(size=(4, 5)), dtype=torch.float64, requires_grad=True)
    t = torch.tensor(rng.normal(size=(4, 5)), dtype=torch.float64, requires_grad=True)
    label = torch.tensor([0.0, 1.0, 4.0, 2.0], dtype=torch.float64)
    w = torch.tensor(rng.normal(size=(2, 4, 5)), dtype=torch.float64)
    layers = net.layer_dict

    def objective(s, t):
        loss = layers["loss"].forward([s, label], [])[0]
        euclid = layers["e"].forward([s, t], [])[0]
        mx = layers["mx"].forward([s, t], [])[0]
        pr = layers["pr"].forward([s, t], [])[0]
        return 1.5 * loss + 0.5 * euclid + (mx * w[0]).sum() + (pr * w[1]).sum()

    assert torch.autograd.gradcheck(objective, (s, t), eps=1e-6, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- fillers

def filler(text):
    return parse_text(text, pb.FillerParameter())


def test_fillers_follow_caffe_distributions():
    g = torch.Generator().manual_seed(0)
    shape = (200, 50, 3, 3)
    fan_in, fan_out = 50 * 9, 200 * 9
    x = fill(shape, filler('type: "xavier"'), g)
    bound = np.sqrt(3 / fan_in)
    assert x.abs().max() <= bound and x.abs().max() > 0.99 * bound
    x = fill(shape, filler('type: "xavier" variance_norm: AVERAGE'), g)
    assert x.abs().max() <= np.sqrt(3 / ((fan_in + fan_out) / 2))
    x = fill(shape, filler('type: "msra" variance_norm: FAN_OUT'), g)
    assert float(x.std()) == pytest.approx(np.sqrt(2 / fan_out), rel=0.02)
    x = fill(shape, filler('type: "gaussian" mean: 1 std: 0.1'), g)
    assert float(x.mean()) == pytest.approx(1, abs=0.002)
    assert float(x.std()) == pytest.approx(0.1, rel=0.02)
    x = fill((100, 1000), filler('type: "gaussian" sparse: 10'), g)
    assert float((x != 0).float().mean()) == pytest.approx(0.1, abs=0.01)
    x = fill(shape, filler('type: "uniform" min: -3 max: -1'), g)
    assert -3 <= float(x.min()) and float(x.max()) <= -1
    assert fill((3,), filler('type: "constant" value: 4'), g).tolist() == [4, 4, 4]
    x = fill((5, 7), filler('type: "positive_unitball"'), g)
    np.testing.assert_allclose(x.sum(1).numpy(), np.ones(5), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown filler type 'nope'"):
        fill((2,), filler('type: "nope"'), g)


def test_fillers_are_seeded(tmp_path):
    body = input_layer((1, 8)) + """
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }"""
    values = []
    for seed in (3, 3, 4):
        engine.set_random_seed(seed)
        values.append(make_net(tmp_path, body).params["ip"][0].data.copy())
    assert np.array_equal(values[0], values[1])
    assert not np.array_equal(values[0], values[2])


# ---------------------------------------------------------------- transform_param, data layers

def transform_param(text):
    return parse_text(text, pb.TransformationParameter())


def test_transformer_crop_mirror_mean_scale():
    pixels = np.arange(2 * 5 * 6, dtype=np.uint8).reshape(2, 5, 6)
    mean = np.random.default_rng(19).uniform(0, 50, (2, 5, 6)).astype(np.float32)
    rng = np.random.default_rng(0)
    t = Transformer(transform_param("crop_size: 3 scale: 0.5"), pb.TEST, "layer")
    t.mean = mean
    assert t.output_shape((2, 5, 6)) == (2, 3, 3)
    h, w, mirror = t.draw((2, 5, 6), rng)
    assert (h, w, mirror) == (1, 1, False)  # the centre in TEST
    out = np.empty((2, 3, 3), np.float32)
    t.apply(pixels, h, w, mirror, out)
    np.testing.assert_allclose(out, (pixels[:, 1:4, 1:4] - mean[:, 1:4, 1:4]) * 0.5, rtol=1e-6)
    t.apply(pixels, 0, 2, True, out)
    np.testing.assert_allclose(out, ((pixels[:, 0:3, 2:5] - mean[:, 0:3, 2:5]) * 0.5)[:, :, ::-1],
                               rtol=1e-6)
    values = Transformer(transform_param("mean_value: 10 mean_value: 20"), pb.TEST, "layer")
    full = np.empty((2, 5, 6), np.float32)
    values.apply(pixels, 0, 0, False, full)
    np.testing.assert_allclose(full, pixels - np.array([10, 20])[:, None, None])


def test_transformer_random_crops_and_mirrors_in_train():
    t = Transformer(transform_param("crop_size: 3 mirror: true"), pb.TRAIN, "layer")
    rng = np.random.default_rng(1)
    draws = [t.draw((1, 5, 6), rng) for _ in range(600)]
    assert {d[0] for d in draws} == {0, 1, 2} and {d[1] for d in draws} == {0, 1, 2, 3}
    assert 0.4 < np.mean([d[2] for d in draws]) < 0.6
    test = Transformer(transform_param("crop_size: 3 mirror: true"), pb.TEST, "layer")
    draws = [test.draw((1, 5, 6), rng) for _ in range(200)]
    assert {d[:2] for d in draws} == {(1, 1)}  # centre crop, but Caffe mirrors in TEST too
    assert 0.3 < np.mean([d[2] for d in draws]) < 0.7


def test_transformer_errors():
    with pytest.raises(DataError, match="cannot specify mean_file and mean_value"):
        Transformer(transform_param('mean_file: "m" mean_value: 1'), pb.TEST, "layer 'd'")
    t = Transformer(transform_param("crop_size: 8"), pb.TEST, "layer 'd'")
    with pytest.raises(DataError, match="layer 'd': crop_size 8 is larger than the record"):
        t.output_shape((3, 6, 10))
    t = Transformer(transform_param("mean_value: 1 mean_value: 2"), pb.TEST, "layer 'd'")
    with pytest.raises(DataError, match="1 mean_value or as many as channels"):
        t.output_shape((3, 6, 10))


def data_net(tmp_path, source, backend, extra="", batch=3, phase=engine.TEST, name="data"):
    return make_net(tmp_path, f"""
        layer {{ name: "{name}" type: "Data" top: "data" top: "label"
                transform_param {{ {extra} }}
                data_param {{ source: "{source}" backend: {backend.upper()} batch_size: {batch} }} }}""",
                    phase, name=f"{name}_{backend}.prototxt")


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_data_layer_reads_in_key_order_and_wraps(tmp_path, backend):
    images = np.random.default_rng(20).integers(0, 256, (5, 3, 4, 4), dtype=np.uint8)
    write_records(tmp_path / "db", [(images[i], i) for i in range(5)], backend=backend)
    net = data_net(tmp_path, tmp_path / "db", backend, extra="scale: 2")
    labels = []
    for _ in range(4):
        net.forward()
        labels += net.blobs["label"].data.tolist()
        first = int(net.blobs["label"].data[0])
        np.testing.assert_array_equal(net.blobs["data"].data[0], images[first] * 2.0)
    assert labels == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    net.close()


def test_two_nets_read_one_leveldb(tmp_path):
    """LevelDB admits one open handle per process: nets share it."""
    images = np.zeros((4, 1, 2, 2), np.uint8)
    write_records(tmp_path / "db", [(images[i], i) for i in range(4)], backend="leveldb")
    a = data_net(tmp_path, tmp_path / "db", "leveldb", batch=2, name="a")
    b = data_net(tmp_path, tmp_path / "db", "leveldb", batch=2, name="b")
    a.forward()
    b.forward()
    assert a.blobs["label"].data.tolist() == b.blobs["label"].data.tolist() == [0, 1]
    a.close()
    b.close()


def test_data_layer_mean_file_and_encoded_records(tmp_path):
    from dlbhc_caffe.datasets.records import to_record  # noqa: PLC0415

    rgb = np.random.default_rng(21).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    datum, chw = to_record(rgb, label=7, size=(6, 5), encoding="png")
    write_records(tmp_path / "db", [datum], backend="lmdb")
    mean = np.random.default_rng(22).uniform(0, 100, (1, 3, 6, 5)).astype(np.float32)
    write_blob(mean, tmp_path / "mean.binaryproto")
    net = data_net(tmp_path, tmp_path / "db", "lmdb", batch=2,
                   extra=f'crop_size: 4 mean_file: "{tmp_path / "mean.binaryproto"}"')
    net.forward()
    assert net.blobs["data"].data.shape == (2, 3, 4, 4)
    expected = chw[:, 1:5, 0:4] - mean[0][:, 1:5, 0:4]  # BGR, centre crop, the mean cropped too
    np.testing.assert_allclose(net.blobs["data"].data[1], expected, rtol=1e-5)
    assert net.blobs["label"].data.tolist() == [7, 7]
    net.close()


def test_data_layer_errors_name_the_layer(tmp_path):
    with pytest.raises(DataError, match="layer 'data' .*'/nonexistent' is not a database"):
        data_net(tmp_path, "/nonexistent", "lmdb")
    write_records(tmp_path / "db", [(np.zeros((3, 4, 4), np.uint8), 0)], backend="lmdb")
    write_blob(np.zeros((1, 3, 5, 5), np.float32), tmp_path / "mean.binaryproto")
    with pytest.raises(DataError,
                       match="mean.binaryproto is 3x5x5 \\(CxHxW\\) but the records are 3x4x4"):
        data_net(tmp_path, tmp_path / "db", "lmdb",
                 extra=f'mean_file: "{tmp_path / "mean.binaryproto"}"')


def test_image_data_layer(tmp_path):
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(23)
    lines = []
    for i in range(5):
        rgb = rng.integers(0, 256, (8 + i, 9, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / f"im {i}.png")
        lines.append(f"im {i}.png {i * 10}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    net = make_net(tmp_path, f"""
        layer {{ name: "images" type: "ImageData" top: "data" top: "label"
                image_data_param {{ source: "{tmp_path / 'list.txt'}" root_folder: "{tmp_path}/"
                                    batch_size: 5 new_height: 6 new_width: 7 shuffle: true }} }}""")
    net.forward()
    assert net.blobs["data"].data.shape == (5, 3, 6, 7)
    labels = net.blobs["label"].data.astype(int).tolist()
    assert sorted(labels) == [0, 10, 20, 30, 40]
    k = labels.index(0)
    with Image.open(tmp_path / "im 0.png") as pil:
        rgb = np.asarray(pil)
    expected = resize_bilinear(rgb, 6, 7)[:, :, ::-1].transpose(2, 0, 1)
    np.testing.assert_array_equal(net.blobs["data"].data[k], expected)
    net.close()


def test_resize_bilinear_geometry():
    image = np.array([[0, 100], [200, 255]], np.uint8)
    assert np.array_equal(resize_bilinear(image, 2, 2), image)
    up = resize_bilinear(image, 4, 4)
    assert up[0, 0] == 0 and up[3, 3] == 255 and up[0, 1] == 25  # half-pixel centres, clamped
    assert resize_bilinear(np.full((9, 7, 3), 37, np.uint8), 4, 3).tolist() == \
        np.full((4, 3, 3), 37).tolist()


def test_dummy_data_and_input(tmp_path):
    net = make_net(tmp_path, """
        layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "dummy" type: "DummyData" top: "c" top: "d"
                dummy_data_param { num: 2 channels: 3 height: 1 width: 1
                                   data_filler { type: "constant" value: 1.5 }
                                   data_filler { type: "gaussian" } } }""")
    assert net.inputs == ["a", "b"]
    assert net.blobs["a"].shape == net.blobs["b"].shape == (2, 3)
    assert net.blobs["c"].data.tolist() == np.full((2, 3, 1, 1), 1.5).tolist()
    net.blobs["c"].data[...] = 9  # a constant DummyData top is filled once, as in Caffe
    first = net.forward()["d"].copy()
    assert (net.blobs["c"].data == 9).all()
    assert not np.array_equal(net.forward()["d"], first)  # other fillers draw every forward


def test_registering_a_layer_type_twice_is_an_error():
    from dlbhc_caffe.backends.torch.layers import LAYERS, register  # noqa: PLC0415
    from dlbhc_caffe.backends.torch.layers.base import Layer, LayerError  # noqa: PLC0415

    before = LAYERS["ReLU"]
    with pytest.raises(LayerError, match="layer type 'ReLU' already registered"):
        register("ReLU")(type("AnotherReLU", (Layer,), {}))
    assert LAYERS["ReLU"] is before


def test_silence_takes_blobs_and_gives_them_no_gradient(tmp_path):
    net = """
    name: "s"
    force_backward: true
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 2 weight_filler { type: "constant" value: 1 } } }
    layer { name: "mute" type: "Silence" bottom: "ip" bottom: "data" }
    """
    path = tmp_path / "s.prototxt"
    path.write_text(textwrap.dedent(net))
    model = engine.Net(str(path), engine.TEST)
    assert model.outputs == [] and model.top_names["mute"] == []
    model.blobs["data"].data[...] = 1.0
    assert model.forward() == {}
    assert model.blobs["ip"].data.tolist() == [[3.0, 3.0], [3.0, 3.0]]
    model.backward()
    assert not model.blobs["data"].diff.any()


def test_backward_through_a_layer_without_one_is_an_error(tmp_path):
    """Caffe's Threshold and ArgMax have no backward (Caffe aborts); here a NetError says so."""
    net = """
    name: "t"
    force_backward: true
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "thresh" type: "Threshold" bottom: "data" top: "thresh" }
    layer { name: "loss" type: "Reduction" bottom: "thresh" top: "loss" loss_weight: 1 }
    """
    path = tmp_path / "t.prototxt"
    path.write_text(textwrap.dedent(net))
    model = engine.Net(str(path), engine.TEST)
    model.forward()
    with pytest.raises(engine.NetError, match=r"layer 'thresh' \(Threshold\) has no backward"):
        model.backward()
