"""The encode stage: prepare_batch.m's preprocessing, Caffe's TEST transform, batched extraction."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlbhc_caffe import proto
from dlbhc_caffe.encode import (EncodeError, Encoder, Features, Transform, centre_offset,
                                deploy_blobs, matlab_centre_offset, read_image, resize_bilinear)
from dlbhc_caffe.runs import RunFolderError, run_settings

RELEASED_DEPLOY = "models/KevinNet_CIFAR10_48_deploy.prototxt"


# ---------------------------------------------------------------- references written out longhand

def matlab_bilinear(image, out_h, out_w):
    """MATLAB imresize(..., 'bilinear') when enlarging: separable linear interpolation at
    u = (x + 0.5) / scale - 0.5, clamped to the edge pixels."""
    image = np.asarray(image, np.float64)

    def axis_weights(n_in, n_out):
        scale = n_out / n_in
        u = (np.arange(n_out) + 0.5) / scale - 0.5
        u = np.clip(u, 0, n_in - 1)
        lo = np.floor(u).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = u - lo
        matrix = np.zeros((n_out, n_in))
        matrix[np.arange(n_out), lo] += 1 - frac
        matrix[np.arange(n_out), hi] += frac
        return matrix

    rows = axis_weights(image.shape[0], out_h)
    cols = axis_weights(image.shape[1], out_w)
    if image.ndim == 2:
        return rows @ image @ cols.T
    return np.stack([rows @ image[:, :, c] @ cols.T for c in range(image.shape[2])], axis=2)


class FakeBlob:
    def __init__(self, *shape):
        self.data = np.zeros(shape, np.float32)

    def reshape(self, *shape):
        self.data = np.zeros(shape, np.float32)


class FakeNet:
    """A pycaffe-shaped net: fc7 = relu(x W1), fc8_kevin_encode = sigmoid(fc7 W2)."""

    def __init__(self, input_shape=(10, 3, 8, 8), fc7=5, bits=4, seed=0):
        rng = np.random.default_rng(seed)
        n, c, h, w = input_shape
        self.w1 = rng.normal(size=(c * h * w, fc7)).astype(np.float32) / 2000
        self.w2 = rng.normal(size=(fc7, bits)).astype(np.float32)
        self.blobs = {"data": FakeBlob(*input_shape), "fc7": FakeBlob(n, fc7),
                      "fc8_kevin": FakeBlob(n, bits), "fc8_kevin_encode": FakeBlob(n, bits)}
        self.batches = []

    def expected(self, batch):
        fc7 = np.maximum(batch.reshape(len(batch), -1) @ self.w1, 0)
        return 1 / (1 + np.exp(-(fc7 @ self.w2))), fc7

    def reshape(self):
        n = self.blobs["data"].data.shape[0]
        for name in ("fc7", "fc8_kevin", "fc8_kevin_encode"):
            self.blobs[name].reshape(n, self.blobs[name].data.shape[1])

    def forward(self, **inputs):
        data = inputs["data"]
        assert data.shape == self.blobs["data"].data.shape, "forward without reshape"
        self.batches.append(len(data))
        latent, fc7 = self.expected(data)
        self.blobs["fc7"].data[...] = fc7
        self.blobs["fc8_kevin_encode"].data[...] = latent
        return {"fc8_kevin_encode": self.blobs["fc8_kevin_encode"].data}


# ---------------------------------------------------------------- preprocessing

def test_centre_offsets_are_caffes_for_records_and_prepare_batchs_for_images():
    assert centre_offset(256, 227) == 14  # Caffe: (256 - 227) / 2
    assert centre_offset(32, 28) == 2
    assert centre_offset(31, 28) == 1
    # prepare_batch.m: indices = [0 IMAGE_DIM-CROPPED_DIM] + 1; center = floor(indices(2)/2)+1,
    # a 1-based start of 16 for 256 -> 227.
    assert matlab_centre_offset(256, 227) == 16 - 1
    assert matlab_centre_offset(32, 28) == (4 + 1) // 2 + 1 - 1
    for fn in (centre_offset, matlab_centre_offset):
        with pytest.raises(EncodeError, match="larger"):
            fn(200, 227)


def test_resize_matches_matlab_bilinear_when_enlarging():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)  # CIFAR size -> 256
    ours = resize_bilinear(image, (256, 256))
    assert ours.dtype == np.float32 and ours.shape == (256, 256, 3)
    np.testing.assert_allclose(ours, matlab_bilinear(image, 256, 256), atol=2e-3)
    # not rounded to integers (prepare_batch.m resized single(im))
    assert np.any(np.abs(ours - np.round(ours)) > 0.01)


def test_resize_non_square_and_gray():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    np.testing.assert_allclose(resize_bilinear(image, (6, 5)), matlab_bilinear(image, 6, 5),
                               atol=1e-3)


def test_prepare_image_is_prepare_batch():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    mean = rng.uniform(0, 255, size=(3, 256, 256)).astype(np.float32)
    out = Transform(crop=227, mean=mean).prepare_image(rgb)
    assert out.shape == (3, 227, 227) and out.dtype == np.float32
    big = matlab_bilinear(rgb, 256, 256)                     # resize 256x256, float
    bgr = big[:, :, ::-1].transpose(2, 0, 1)                  # RGB -> BGR, C x H x W
    expected = (bgr - mean)[:, 15:15 + 227, 15:15 + 227]      # mean at 256, then centre crop
    np.testing.assert_allclose(out, expected, atol=3e-3)


def test_gray_image_becomes_three_equal_channels(tmp_path):
    gray = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 3)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    pixels = read_image(tmp_path / "g.png")
    assert pixels.shape == (8, 8, 3)
    out = Transform(crop=12, resize=16).prepare_image(pixels)
    assert out.shape == (3, 12, 12)
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[1], out[2])
    # a one-channel net takes the luma instead
    one = Transform(crop=16, channels=1).prepare_image(read_image(tmp_path / "g.png", 1))
    np.testing.assert_allclose(one[0], matlab_bilinear(gray, 16, 16), atol=1e-3)


def test_prepare_record_is_caffes_test_transform():
    rng = np.random.default_rng(3)
    record = rng.integers(0, 256, size=(3, 10, 10), dtype=np.uint8)
    mean = rng.uniform(0, 255, size=(3, 10, 10)).astype(np.float32)
    out = Transform(crop=6, mean=mean, scale=0.5).prepare_record(record)
    expected = (record.astype(np.float32) - mean)[:, 2:8, 2:8] * 0.5
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    values = Transform(crop=10, resize=10, mean_values=(1, 2, 3)).prepare_record(record)
    np.testing.assert_array_equal(values, record - np.array([1, 2, 3.0]).reshape(3, 1, 1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(crop=227, mean=np.zeros((3, 200, 200))), "larger than the resize"),
    (dict(crop=4, mean=np.zeros((1, 8, 8))), "must be 3 x H x W"),
    (dict(crop=4, mean=np.zeros((3, 8, 8)), resize=10), "must agree"),
    (dict(crop=4, mean=np.zeros((3, 8, 8)), mean_values=1), "not both"),
    (dict(crop=4, mean_values=(1, 2)), "2 mean_value entries for 3-channel records"),
    (dict(crop=4, channels=2), "1 or 3 channels"),
])
def test_transform_rejects_what_cannot_work(kwargs, message):
    with pytest.raises(EncodeError, match=message):
        Transform(**kwargs)


def test_record_mean_must_match_record_size():
    with pytest.raises(EncodeError, match="Caffe requires them equal"):
        Transform(crop=4, mean=np.zeros((3, 8, 8))).prepare_record(np.zeros((3, 6, 6), np.uint8))


# ---------------------------------------------------------------- batched extraction

def write_images(folder, count, size=8, seed=4):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = Path(folder) / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_batches_of_any_size_give_the_same_features(tmp_path):
    paths = write_images(tmp_path, 23)
    net = FakeNet()
    features = Encoder(net, batch_size=10).encode_images(paths, labels=range(23))
    assert net.batches == [10, 10, 3]                      # the last batch partial, not padded
    assert features.latent.shape == (23, 4) and features.fc7.shape == (23, 5)
    assert features.paths == [str(p) for p in paths]
    assert features.labels.tolist() == list(range(23))
    one = Encoder(FakeNet(), batch_size=1).encode_images(paths)
    np.testing.assert_allclose(one.latent, features.latent, rtol=1e-5, atol=1e-7)
    # and each row is the net's output for that image's prepared input
    transform = Transform(crop=8)
    batch = np.stack([transform.prepare_image(read_image(p)) for p in paths[:3]])
    latent, fc7 = net.expected(batch)
    np.testing.assert_allclose(features.latent[:3], latent, rtol=1e-5)
    np.testing.assert_allclose(features.fc7[:3], fc7, rtol=1e-5)
    np.testing.assert_array_equal(features.codes, features.latent > 0.5)


def test_codes_threshold_is_strictly_above_half():
    f = Features(np.array([[0.5, 0.5000001, 0.49, 1.0]], np.float32), np.zeros((1, 0)), ["x"])
    assert f.codes.tolist() == [[0, 1, 0, 1]]


def test_encode_records_and_database(tmp_path):
    from dlbhc_caffe.datasets import DatabaseWriter

    rng = np.random.default_rng(5)
    records = rng.integers(0, 256, size=(7, 3, 10, 10), dtype=np.uint8)
    labels = [3, 1, 4, 1, 5, 9, 2]
    with DatabaseWriter(tmp_path / "db", "lmdb") as db:
        for record, label in zip(records, labels):
            db.add(proto.datum_from_array(record, label))
    mean = rng.uniform(0, 255, size=(3, 10, 10)).astype(np.float32)
    net = FakeNet()
    encoder = Encoder(net, transform=Transform(crop=8, mean=mean), batch_size=3)
    from_db = encoder.encode_db(tmp_path / "db")
    assert net.batches == [3, 3, 1]
    assert from_db.labels.tolist() == labels
    assert from_db.paths[0] == f"{tmp_path / 'db'}#00000000"
    expected = np.stack([(r - mean)[:, 1:9, 1:9] for r in records.astype(np.float32)])
    latent, fc7 = net.expected(expected)
    np.testing.assert_allclose(from_db.latent, latent, rtol=1e-5)
    from_array = encoder.encode_records(records, labels)
    np.testing.assert_allclose(from_array.fc7, from_db.fc7, rtol=1e-6)
    with pytest.raises(EncodeError, match="do not fit the net's input"):
        encoder.encode_records(records[:, :, :7, :7])
    with pytest.raises(EncodeError, match="2 labels for 7 records"):
        encoder.encode_records(records, labels[:2])


def test_bad_inputs_are_named(tmp_path):
    paths = write_images(tmp_path, 2)
    encoder = Encoder(FakeNet())
    with pytest.raises(EncodeError, match="nope.png: no such image file"):
        encoder.encode_images([paths[0], tmp_path / "nope.png"])
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(EncodeError, match="bad.jpg: not a readable image"):
        encoder.encode_images([tmp_path / "bad.jpg"])
    with pytest.raises(EncodeError, match="3 labels for 2 images"):
        encoder.encode_images(paths, labels=[1, 2, 3])
    with pytest.raises(EncodeError, match="nothing to encode"):
        encoder.encode_images([])
    with pytest.raises(EncodeError, match="no blob 'pool9'"):
        Encoder(FakeNet(), fc7_blob="pool9").encode_images(paths)
    with pytest.raises(EncodeError, match="batch_size"):
        Encoder(FakeNet(), batch_size=0).encode_images(paths)


# ---------------------------------------------------------------- files

def test_features_save_npz_and_mat(tmp_path):
    from scipy.io import loadmat

    rng = np.random.default_rng(6)
    f = Features(rng.uniform(size=(3, 6)).astype(np.float32),
                 rng.uniform(size=(3, 4)).astype(np.float32), ["a.jpg", "b c.jpg", "d.jpg"],
                 np.array([0, 1, 2]))
    f.save(tmp_path / "codes.npz")
    with np.load(tmp_path / "codes.npz") as data:
        assert {"codes", "fc7", "latent", "paths"} <= set(data.files)
        np.testing.assert_array_equal(data["codes"], f.latent > 0.5)
        assert data["paths"].tolist() == f.paths
    f.save(tmp_path / "codes.mat")
    mat = loadmat(tmp_path / "codes.mat")
    assert mat["codes"].shape == (3, 6) and mat["fc7"].shape == (3, 4)
    back = Features.load(tmp_path / "codes.mat")
    assert back.paths == f.paths
    np.testing.assert_allclose(back.latent, f.latent)
    with pytest.raises(EncodeError, match="npz or .mat"):
        f.save(tmp_path / "codes.txt")
    assert not (tmp_path / "codes.txt").exists()


def test_released_deploy_blobs(fixtures_dir):
    input_blob, shape, latent, tops = deploy_blobs(fixtures_dir / RELEASED_DEPLOY)
    assert (input_blob, shape, latent) == ("data", (10, 3, 227, 227), "fc8_kevin_encode")
    assert "fc7" in tops


def test_run_settings_take_the_test_transform(tmp_path):
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / "final.caffemodel").write_bytes(b"")
    (run / "train_val.prototxt").write_text(
        'layer { name: "d" type: "Data" top: "data" include { phase: TRAIN }\n'
        '  transform_param { mean_file: "/train/mean" crop_size: 28 mirror: true } }\n'
        'layer { name: "d" type: "Data" top: "data" include { phase: TEST }\n'
        '  transform_param { mean_value: 10 mean_value: 20 mean_value: 30 scale: 0.5 } }\n')
    (run / "run.json").write_text(json.dumps({"bits": 12, "backend": "torch",
                                              "record_shape": [3, 32, 32],
                                              "mean": {"file": "/elsewhere", "scale": 2.0},
                                              "final_model": None, "status": "completed"}))
    settings = run_settings(run)
    assert settings["mean"] is None and settings["mean_values"] == (10, 20, 30)
    assert settings["scale"] == 0.5 and settings["resize"] == (32, 32)
    assert settings["deploy"] == run / "deploy.prototxt"
    assert settings["weights"] == run / "final.caffemodel"
    (run / "train_val.prototxt").unlink()                    # then run.json's record of it
    settings = run_settings(run)
    assert settings["mean"] == Path("/elsewhere") and settings["scale"] == 2.0
    assert settings["resize"] is None                        # the mean file's size decides
    (run / "final.caffemodel").unlink()
    with pytest.raises(RunFolderError, match="has not finished"):
        run_settings(run)
    with pytest.raises(RunFolderError, match="no run.json"):
        run_settings(tmp_path)
