"""dlbhc_caffe.pycaffe's parts held against real pycaffe's on the same inputs: caffe.io
(Transformer, resize_image, oversample, Datum and BlobProto conversions), net_spec's NetParameter,
coord_map, HDF5 weights both ways, forward_backward_all; and the `python -m dlbhc_caffe.pycaffe`
runner itself."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dlbhc_caffe.pycaffe as ours
from conftest import ROOT

NET = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 2 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        param { name: "shared_w" } param { lr_mult: 2 }
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "conv_b" type: "Convolution" bottom: "data" top: "conv_b"
        param { name: "shared_w" } convolution_param { num_output: 4 kernel_size: 3 bias_term: false } }
layer { name: "sum" type: "Eltwise" bottom: "conv" bottom: "conv_b" top: "sum" }
layer { name: "ip" type: "InnerProduct" bottom: "sum" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
"""


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "small.prototxt"
    path.write_text(NET)
    return str(path)


@pytest.mark.caffe
def test_io_matches_real_caffe_io(caffe):
    rng = np.random.default_rng(5)
    image = rng.uniform(0, 1, (37, 29, 3)).astype(np.float32)
    shape = (2, 3, 24, 20)
    transformers = []
    for module in (ours, caffe):
        t = module.io.Transformer({"data": shape})
        t.set_transpose("data", (2, 0, 1))
        t.set_channel_swap("data", (2, 1, 0))
        t.set_raw_scale("data", 255.0)
        t.set_mean("data", rng.uniform(90, 130, (3, 30, 30)).astype(np.float32)
                   if not transformers else transformers[0][1])
        t.set_input_scale("data", 0.5)
        transformers.append((t, t.mean["data"]))
    (mine, _), (theirs, _) = transformers
    assert np.array_equal(mine.mean["data"], theirs.mean["data"])
    processed = mine.preprocess("data", image)
    assert np.array_equal(processed, theirs.preprocess("data", image))
    assert np.array_equal(mine.deprocess("data", processed), theirs.deprocess("data", processed))
    for im in (image, rng.uniform(0, 1, (10, 12, 5)).astype(np.float32),
               np.full((4, 4, 1), 0.3, np.float32)):
        assert np.array_equal(ours.io.resize_image(im, (7, 9)), caffe.io.resize_image(im, (7, 9)))
    crops = [image, image[::-1]]
    assert np.array_equal(ours.io.oversample(crops, (16, 12)), caffe.io.oversample(crops, (16, 12)))
    for array in (rng.integers(0, 256, (3, 4, 5)).astype(np.uint8), rng.normal(size=(1, 2, 3))):
        for label in (None, 7):
            assert ours.io.array_to_datum(array, label).SerializeToString() == \
                caffe.io.array_to_datum(array, label).SerializeToString()
        datum = caffe.io.array_to_datum(array, 3)
        assert np.array_equal(ours.io.datum_to_array(datum), caffe.io.datum_to_array(datum))
    arrays = [rng.normal(size=(2, 3)), rng.normal(size=(4,))]
    serialized = ours.io.arraylist_to_blobprotovector_str(arrays)
    assert serialized == caffe.io.arraylist_to_blobprotovector_str(arrays)
    for a, b in zip(ours.io.blobprotovector_str_to_arraylist(serialized),
                    caffe.io.blobprotovector_str_to_arraylist(serialized)):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def _lenet(module, batch):
    L, P = module.layers, module.params
    n = module.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[batch, 1, 28, 28]), dict(dim=[batch, 1])],
                                  transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"),
                            param=[dict(lr_mult=1), dict(lr_mult=2)])
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool1, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    drop = L.Dropout(n.relu1, dropout_ratio=0.3, include=dict(phase=module.TRAIN))
    n.ip2 = L.InnerProduct(drop, num_output=10)
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label, loss_weight=[0.5])
    return n.to_proto()


@pytest.mark.caffe
def test_net_spec_and_coord_map_match_real_caffe(caffe):
    from caffe import coord_map as their_map  # noqa: PLC0415

    assert str(_lenet(ours, 64)) == str(_lenet(caffe, 64))
    for module, maps in ((ours, ours.coord_map), (caffe, their_map)):
        n = module.NetSpec()
        n.data = module.layers.Input(shape=dict(dim=[1, 1, 64, 64]))
        n.conv = module.layers.Convolution(n.data, num_output=2, kernel_size=[3, 5], stride=2,
                                           pad=[1, 4])
        n.pool = module.layers.Pooling(n.conv, kernel_size=3, stride=2)
        n.up = module.layers.Deconvolution(n.pool, num_output=2, kernel_size=8, stride=4)
        result = maps.coord_map_from_to(n.up, n.data)
        if module is ours:
            mine = result
    assert mine[0] == result[0]
    assert np.array_equal(mine[1], result[1]) and np.array_equal(mine[2], result[2])


@pytest.mark.caffe
def test_hdf5_weights_cross_both_ways(caffe, net_file, tmp_path):
    """save_hdf5 writes Caffe's layout (a shared param once); each engine loads the other's
    file, by load_hdf5 and by a weights name ending in .h5."""
    import h5py  # noqa: PLC0415

    rng = np.random.default_rng(6)
    mine = ours.Net(net_file, ours.TRAIN)
    for blobs in mine.params.values():
        for blob in blobs:
            blob.data[...] = rng.normal(size=blob.data.shape)
    mine.save_hdf5(str(tmp_path / "ours.h5"))
    theirs = caffe.Net(net_file, caffe.TRAIN)
    theirs.save_hdf5(str(tmp_path / "caffe.h5"))
    layout = []
    for name in ("ours.h5", "caffe.h5"):
        with h5py.File(tmp_path / name, "r") as f:
            layout.append(sorted((f"{g}/{d}", f["data"][g][d].shape, f["data"][g][d].dtype.str)
                                 for g in f["data"] for d in f["data"][g]))
    assert layout[0] == layout[1] and "conv_b/0" not in str(layout[0])  # shared: owner only
    theirs.load_hdf5(str(tmp_path / "ours.h5"))
    loaded = ours.Net(net_file, str(tmp_path / "caffe.h5"), ours.TRAIN)
    for name, blobs in mine.params.items():
        for i, blob in enumerate(blobs):
            assert np.array_equal(theirs.params[name][i].data, blob.data)
            assert np.array_equal(loaded.params[name][i].data,
                                  caffe.Net(net_file, str(tmp_path / "caffe.h5"),
                                            caffe.TRAIN).params[name][i].data)


@pytest.mark.caffe
def test_forward_backward_all_matches_real_caffe(caffe, net_file, tmp_path):
    mine = ours.Net(net_file, ours.TEST)
    mine.save(str(tmp_path / "w"))  # no extension: read as binary all the same
    theirs = caffe.Net(net_file, caffe.TEST, weights=str(tmp_path / "w"))
    rng = np.random.default_rng(7)
    data = rng.normal(size=(7, 2, 5, 5)).astype(np.float32)
    top = rng.normal(size=(7, 3)).astype(np.float32)
    a_out, a_diff = mine.forward_backward_all(blobs=["sum"], diffs=["conv"], data=data, ip=top)
    b_out, b_diff = theirs.forward_backward_all(blobs=["sum"], diffs=["conv"], data=data, ip=top)
    assert sorted(a_out) == sorted(b_out) and sorted(a_diff) == sorted(b_diff)
    for got, want in [(a_out[k], b_out[k]) for k in b_out] + [(a_diff[k], b_diff[k])
                                                                for k in b_diff]:
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_runner_binds_caffe_and_passes_arguments(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import sys
        import caffe, caffe.io
        from caffe.proto import caffe_pb2
        from caffe import layers as L
        print(caffe.__name__, caffe.io.__name__, caffe_pb2.__name__, sys.argv[1:], __name__)
    """))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "dlbhc_caffe.pycaffe", str(script), "a", "-b"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["dlbhc_caffe.backends.torch.pycaffe_api",
                                   "dlbhc_caffe.backends.torch.caffe_io",
                                   "dlbhc_caffe.proto.dlbhc_caffe_pb2", "['a',", "'-b']",
                                   "__main__"]
    missing = subprocess.run([sys.executable, "-m", "dlbhc_caffe.pycaffe", "nope.py"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert missing.returncode == 2 and "cannot open script 'nope.py'" in missing.stderr
    assert missing.stderr.count("\n") == 1


@pytest.mark.caffe
def test_classifier_matches_real_caffe(caffe, net_file, tmp_path):
    ours.Net(net_file, ours.TEST).save(str(tmp_path / "w.caffemodel"))
    rng = np.random.default_rng(8)
    images = [rng.uniform(0, 1, (9, 11, 2)).astype(np.float32) for _ in range(2)]
    for oversample in (True, False):
        got, want = (module.Classifier(net_file, str(tmp_path / "w.caffemodel"), image_dims=(8, 8),
                                       raw_scale=255.0, mean=np.array([100.0, 120.0]))
                     .predict(images, oversample=oversample) for module in (ours, caffe))
        assert got.shape == want.shape == (2, 3)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


PYLOSS = '''
import numpy as np
import caffe


class EuclideanLossLayer(caffe.Layer):
    """Caffe's examples/pycaffe/layers/pyloss.py, as a user writes it."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num
'''


def test_python_loss_layer_matches_the_builtin(tmp_path, monkeypatch):
    """A Python loss layer (loss_weight 1) learns as Caffe's EuclideanLoss does: same loss, same
    gradients through the net below it, over two solver-free SGD-style updates."""
    (tmp_path / "pyloss.py").write_text(PYLOSS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "caffe", ours)
    base = """
    name: "reg"
    layer { name: "data" type: "Input" top: "data" top: "target"
            input_param { shape { dim: 4 dim: 6 } shape { dim: 4 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
    """
    loss_layers = {
        "builtin": 'layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" '
                   'top: "loss" }',
        "python": 'layer { name: "loss" type: "Python" bottom: "ip" bottom: "target" top: "loss" '
                  'python_param { module: "pyloss" layer: "EuclideanLossLayer" } loss_weight: 1 }'}
    nets = {}
    for kind, layer in loss_layers.items():
        path = tmp_path / f"{kind}.prototxt"
        path.write_text(textwrap.dedent(base) + layer)
        nets[kind] = ours.Net(str(path), ours.TRAIN)
    nets["python"].params["ip"][0].data[...] = nets["builtin"].params["ip"][0].data
    rng = np.random.default_rng(9)
    inputs = {"data": rng.normal(size=(4, 6)), "target": rng.normal(size=(4, 3))}
    for _ in range(2):
        for net in nets.values():
            net.clear_param_diffs()
            net.forward(**inputs)
            net.backward()
        a, b = nets["builtin"], nets["python"]
        np.testing.assert_allclose(b.blobs["loss"].data.reshape(()), a.blobs["loss"].data,
                                   rtol=1e-6)
        for i in range(2):
            np.testing.assert_allclose(b.params["ip"][i].diff, a.params["ip"][i].diff,
                                       rtol=1e-5, atol=1e-7)
            for net in nets.values():
                net.params["ip"][i].data[...] -= 0.1 * net.params["ip"][i].diff
    assert np.abs(a.params["ip"][0].diff).max() > 0
