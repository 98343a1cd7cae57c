"""Reading and writing Caffe's artifacts without Caffe."""
import numpy as np
import pytest

from dlbhc_caffe import proto
from dlbhc_caffe.proto import pb


def test_blob_roundtrip_modern_and_legacy(tmp_path):
    array = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4) - 7.5
    for legacy in (True, False):
        path = tmp_path / f"mean_{legacy}.binaryproto"
        proto.write_blob(array, path, legacy_4d=legacy)
        blob = proto.read_binary(path, pb.BlobProto)
        assert blob.HasField("shape") != legacy
        np.testing.assert_array_equal(proto.read_blob(path), array)
        np.testing.assert_array_equal(proto.read_mean(path), array[0])


def test_imagenet_mean_reads_as_1x3x256x256(fixtures_dir):
    mean = proto.read_blob(fixtures_dir / "models" / "imagenet_mean.binaryproto")
    assert mean.shape == (1, 3, 256, 256) and mean.dtype == np.float32
    # BGR: ImageNet's blue mean is the smallest of the three (about 104, 117, 123).
    b, g, r = mean[0].mean(axis=(1, 2))
    assert 100 < b < g < r < 130


def test_datum_roundtrip_is_channel_major():
    image = np.random.default_rng(0).integers(0, 256, (3, 5, 7), dtype=np.uint8)
    datum = proto.datum_from_array(image, label=9)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 5, 7, 9)
    assert datum.data[:7] == image[0, 0].tobytes()
    again = pb.Datum.FromString(datum.SerializeToString())
    np.testing.assert_array_equal(proto.datum_to_array(again), image)
    with pytest.raises(ValueError, match="C x H x W uint8"):
        proto.datum_from_array(image.astype(np.float32))


def test_truncated_binary_names_the_file(tmp_path):
    path = tmp_path / "model.caffemodel"
    net = pb.NetParameter(name="n")
    layer = net.layer.add(name="ip", type="InnerProduct")
    layer.blobs.add().CopyFrom(proto.array_to_blob(np.ones((4, 4))))
    proto.write_binary(net, path)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(proto.ProtoError, match="model.caffemodel.*truncated or corrupt"):
        proto.read_binary(path, pb.NetParameter)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(proto.ProtoError, match="nothere.prototxt: cannot read"):
        proto.read_net(tmp_path / "nothere.prototxt")


def test_text_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  typo_field: 3\n}\n')
    with pytest.raises(proto.ProtoError, match=r"bad.prototxt:4: .*typo_field"):
        proto.read_net(path)


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "solver.prototxt"
    proto.write_text(pb.SolverParameter(base_lr=0.1), path)

    def boom(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        proto.write_text(pb.SolverParameter(base_lr=0.2), path)
    assert proto.read_solver(path).base_lr == pytest.approx(0.1)
    assert [p.name for p in tmp_path.iterdir()] == ["solver.prototxt"]


def test_solver_type_enum_upgrades_to_type_string():
    solver = proto.parse_text("solver_type: NESTEROV\nbase_lr: 0.01", pb.SolverParameter())
    upgraded = proto.upgrade_solver(solver)
    assert upgraded.type == "Nesterov" and not upgraded.HasField("solver_type")


def test_legacy_inputs_become_an_input_layer():
    net = proto.parse_text('input: "data" input_dim: 10 input_dim: 3 input_dim: 227 '
                           'input_dim: 227 layer { name: "r" type: "ReLU" bottom: "data" '
                           'top: "data" }', pb.NetParameter())
    up = proto.upgrade_net(net)
    assert [l.type for l in up.layer] == ["Input", "ReLU"]
    assert list(up.layer[0].input_param.shape[0].dim) == [10, 3, 227, 227]
    assert not len(up.input) and not len(up.input_dim)


def test_v0_padding_layer_folds_into_the_convolution():
    net = proto.parse_text("""
        input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
        layers { layer { name: "pad2" type: "padding" pad: 2 } bottom: "data" top: "pad2" }
        layers { layer { name: "conv2" type: "conv" num_output: 4 kernelsize: 5 group: 2
                         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
                 bottom: "pad2" top: "conv2" }""", pb.NetParameter())
    up = proto.upgrade_net(net)
    conv = up.layer[1]
    assert [l.name for l in up.layer] == ["input", "conv2"]
    assert conv.type == "Convolution" and list(conv.bottom) == ["data"]
    assert list(conv.convolution_param.pad) == [2]
    assert conv.convolution_param.group == 2
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]


def test_unknown_layer_type_names_the_layer():
    net = proto.parse_text('layer { name: "mystery" type: "Frobnicate" }', pb.NetParameter())
    with pytest.raises(proto.ProtoError, match="layer 'mystery': unknown layer type 'Frobnicate'"):
        proto.upgrade_net(net, source="net.prototxt")
    v0 = proto.parse_text('layers { layer { name: "old" type: "warp" } }', pb.NetParameter())
    with pytest.raises(proto.ProtoError, match="layer 'old': unknown V0 layer type 'warp'"):
        proto.upgrade_net(v0)
