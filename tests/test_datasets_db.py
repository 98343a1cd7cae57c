"""LevelDB / LMDB of Datum records: key order, batching, whole-or-nothing writes, reading back,
and real Caffe's Data layer reading what we write."""
import os

import numpy as np
import pytest

from dlbhc_caffe import datasets
from dlbhc_caffe.datasets.db import (DatabaseError, DatabaseWriter, count_records, detect_backend,
                                     open_db, read_records, write_records)
from dlbhc_caffe.proto import datum_from_array

BACKENDS = ["leveldb", "lmdb"]


def _images(n, shape=(3, 5, 4), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n,) + shape, dtype=np.uint8), rng.integers(0, 10, n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_in_key_order_with_small_batches(tmp_path, backend):
    images, labels = _images(25)
    path = tmp_path / f"toy_{backend}"
    with DatabaseWriter(path, backend, batch_records=4) as writer:
        for image, label in zip(images, labels):
            writer.add(datum_from_array(image, label))
    assert writer.count == 25 and path.is_dir()
    assert detect_backend(path) == backend
    keys = [key for key, _ in open_db(path, backend)]
    assert keys == [f"{i:08d}" for i in range(25)]
    got_images, got_labels = read_records(path)  # backend detected
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert count_records(path, backend) == 25
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_exception_mid_write_leaves_no_database(tmp_path, backend):
    path = tmp_path / "db"
    images, labels = _images(10)
    with pytest.raises(RuntimeError, match="boom"):
        with DatabaseWriter(path, backend, batch_records=3) as writer:
            for i, (image, label) in enumerate(zip(images, labels)):
                if i == 7:
                    raise RuntimeError("boom")
                writer.add(datum_from_array(image, label))
    assert list(tmp_path.iterdir()) == []


def test_existing_database_refused_unless_overwrite(tmp_path):
    path = tmp_path / "db"
    images, labels = _images(3)
    write_records(path, zip(images, labels), "leveldb")
    with pytest.raises(DatabaseError, match="exists; pass --force"):
        write_records(path, zip(images, labels), "leveldb")
    assert write_records(path, zip(images[:2], labels[:2]), "lmdb", overwrite=True) == 2
    assert detect_backend(path) == "lmdb" and count_records(path) == 2


def test_stale_partial_of_a_dead_writer_is_removed(tmp_path):
    path = tmp_path / "db"
    stale = tmp_path / ".db.partial-999999999"  # no such process
    stale.mkdir()
    (stale / "CURRENT").write_text("half\n")
    messages = []
    with DatabaseWriter(path, "leveldb", log=messages.append) as writer:
        writer.add(datum_from_array(np.zeros((1, 2, 2), np.uint8), 1))
    assert not stale.exists() and "interrupted" in messages[0]


def test_lmdb_map_grows_when_full(tmp_path):
    images, labels = _images(40, shape=(3, 64, 64))  # ~490 KB in a 64 KB map
    path = tmp_path / "db"
    with DatabaseWriter(path, "lmdb", map_size=64 << 10, batch_records=16) as writer:
        for image, label in zip(images, labels):
            writer.add(datum_from_array(image, label))
    got, _ = read_records(path, "lmdb")
    np.testing.assert_array_equal(got, images)


def test_reading_errors_name_the_path(tmp_path):
    with pytest.raises(DatabaseError, match="no such database folder"):
        read_records(tmp_path / "nope", "leveldb")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatabaseError, match="neither an LMDB"):
        read_records(tmp_path / "empty")
    with pytest.raises(DatabaseError, match="unknown database backend"):
        read_records(tmp_path / "empty", "hdf5")


def test_leveldb_is_closed_after_reading(tmp_path):
    path = tmp_path / "db"
    write_records(path, zip(*_images(3)), "leveldb")
    read_records(path, "leveldb")
    it = open_db(path, "leveldb")
    next(it)
    it.close()
    import plyvel  # a second open fails while another handle holds LevelDB's lock

    plyvel.DB(str(path)).close()


# ---------------------------------------------------------------- real Caffe reads our databases

DATA_NET = """name: "read_back"
layer {{
  name: "data" type: "Data" top: "data" top: "label"
  data_param {{ source: "{source}" backend: {backend} batch_size: {batch} }}
}}
"""


@pytest.mark.caffe
@pytest.mark.parametrize("backend", BACKENDS)
def test_caffe_data_layer_reads_what_prepare_wrote(caffe, tmp_path, backend):
    manifest = datasets.prepare("digits", tmp_path, db=backend, max_train=64, max_test=16,
                                progress=False, log=lambda *_: None)
    db_path = manifest["train_db"]
    images, labels = read_records(db_path, backend)  # ours, closed again before Caffe opens it
    assert images.shape == (64, 3, 32, 32)
    assert labels.tolist() == datasets.read_labels(manifest["train_labels"])
    net_path = tmp_path / "read_back.prototxt"
    net_path.write_text(DATA_NET.format(source=db_path, backend=backend.upper(), batch=64))
    caffe.set_mode_cpu()
    net = caffe.Net(str(net_path), caffe.TEST)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, images.astype(np.float32))
    np.testing.assert_array_equal(net.blobs["label"].data, labels.astype(np.float32))
    del net


@pytest.mark.caffe
def test_caffe_data_layer_reads_gray_records(caffe, tmp_path):
    images, labels = _images(6, shape=(1, 7, 5), seed=3)
    path = tmp_path / "gray_lmdb"
    write_records(path, zip(images, labels), "lmdb")
    net_path = tmp_path / "net.prototxt"
    net_path.write_text(DATA_NET.format(source=path, backend="LMDB", batch=6))
    caffe.set_mode_cpu()
    net = caffe.Net(str(net_path), caffe.TEST)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, images.astype(np.float32))
    np.testing.assert_array_equal(net.blobs["label"].data, labels.astype(np.float32))
    del net
    assert os.path.isdir(path)


@pytest.mark.caffe
@pytest.mark.parametrize("backend", BACKENDS)
def test_our_mean_is_the_mean_of_the_records_caffe_reads(caffe, tmp_path, backend):
    # Caffe's own compute_image_mean needs OpenCV, which this build leaves out, so the mean is
    # held against what real Caffe's Data layer reads: every record of the database, averaged.
    from dlbhc_caffe.proto import read_mean

    manifest = datasets.prepare("digits", tmp_path, db=backend, max_train=200, max_test=10,
                                progress=False, log=lambda *_: None)
    net_path = tmp_path / "all_records.prototxt"
    net_path.write_text(DATA_NET.format(source=manifest["train_db"], backend=backend.upper(),
                                        batch=200))
    caffe.set_mode_cpu()
    net = caffe.Net(str(net_path), caffe.TEST)
    net.forward()
    theirs = net.blobs["data"].data.astype(np.float64).mean(axis=0)
    del net
    np.testing.assert_allclose(read_mean(manifest["mean_file"]), theirs, rtol=1e-5, atol=1e-4)
