"""prepare end to end, offline, on small archives in the exact official formats."""
import gzip
import hashlib
import io
import json
import signal
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlbhc_caffe import datasets
from dlbhc_caffe.datasets import DatasetError, read_labels, read_lines, read_records
from dlbhc_caffe.datasets.build import folder_bytes
from dlbhc_caffe.datasets.download import ChecksumError
from dlbhc_caffe.datasets.records import resize_image
from dlbhc_caffe.proto import read_mean

ROOT = Path(__file__).resolve().parents[1]
PREPARE = [sys.executable, str(ROOT / "tools" / "prepare.py")]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


def _quiet(*_):
    pass


def md5(path):
    return "md5:" + hashlib.md5(Path(path).read_bytes()).hexdigest()


def cli(*args, cwd=None):
    return subprocess.run(PREPARE + [str(a) for a in args], capture_output=True, text=True,
                          cwd=cwd)


# ---------------------------------------------------------------- CIFAR-10

def cifar_image(batch, index):
    """A 32x32 RGB image whose pixels say where they are: R = row, G = column, B = record."""
    rows, cols = np.mgrid[0:32, 0:32]
    return np.stack([rows * 8, cols * 8, np.full((32, 32), 10 * batch + index)],
                    axis=-1).astype(np.uint8)


def make_cifar_archive(folder, per_batch=3, test=4):
    """cifar-10-binary.tar.gz as the official one: cifar-10-batches-bin/{data_batch_1..5.bin,
    test_batch.bin, batches.meta.txt}; each record 1 label byte + R, G, B planes, row-major."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cifar-10-binary.tar.gz"
    expected = {"train": [], "test": []}
    members = {"batches.meta.txt": ("\n".join(CIFAR_CLASSES) + "\n\n").encode()}
    for batch in range(1, 7):
        split = "test" if batch == 6 else "train"
        name = "test_batch.bin" if batch == 6 else f"data_batch_{batch}.bin"
        blob = bytearray()
        for index in range(test if batch == 6 else per_batch):
            label = (batch * 3 + index) % 10
            rgb = cifar_image(batch, index)
            blob += bytes([label]) + rgb.transpose(2, 0, 1).tobytes()
            expected[split].append((label, rgb))
        members[name] = bytes(blob)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, expected


def test_cifar10_from_dir_raw_native_size(tmp_path):
    archive, expected = make_cifar_archive(tmp_path / "offline")
    result = cli("--dataset", "cifar10", "--root", tmp_path / "data", "--resize", 32,
                 "--from", tmp_path / "offline", "--checksum",
                 f"cifar-10-binary.tar.gz={md5(archive)}", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "about" in result.stdout and "15 train + 4 test records" in result.stdout
    assert "(15 records)" in result.stdout and "(4 records)" in result.stdout
    m = datasets.load_manifest(tmp_path / "data", "cifar10")
    assert (m["classes"], m["class_names"], m["record_shape"]) == (10, CIFAR_CLASSES, [3, 32, 32])
    assert (m["train_count"], m["test_count"], m["backend"]) == (15, 4, "leveldb")
    assert Path(m["train_db"]).name == "cifar10_train_leveldb"
    assert m["sources"][0]["checksum"] == md5(archive)
    for split in ("train", "test"):
        images, labels = read_records(m[f"{split}_db"], "leveldb")
        assert images.shape == (len(expected[split]), 3, 32, 32)
        assert labels.tolist() == [label for label, _ in expected[split]]  # archive order
        assert read_labels(m[f"{split}_labels"]) == labels.tolist()
        for image, (_, rgb) in zip(images, expected[split]):
            np.testing.assert_array_equal(image, rgb[:, :, ::-1].transpose(2, 0, 1))  # BGR
        assert images[0][2, 0, 5] == 0 and images[0][2, 31, 5] == 248  # R ramps down: row 0 top
    assert read_lines(m["train_file_list"])[:4] == ["batch1/0.png", "batch1/1.png",
                                                    "batch1/2.png", "batch2/0.png"]
    assert read_lines(m["test_file_list"])[-1] == "test/3.png"
    train, _ = read_records(m["train_db"])
    np.testing.assert_allclose(read_mean(m["mean_file"]), train.mean(axis=0), rtol=1e-6)


def test_cifar10_resized_to_256_lmdb(tmp_path):
    archive, expected = make_cifar_archive(tmp_path / "offline", per_batch=1, test=1)
    m = datasets.prepare("cifar10", tmp_path / "data", db="lmdb", from_dir=tmp_path / "offline",
                         checksums={archive.name: md5(archive)}, progress=False, log=_quiet)
    assert m["record_shape"] == [3, 256, 256] and Path(m["train_db"]).name.endswith("_lmdb")
    images, labels = read_records(m["train_db"], "lmdb")
    assert images.shape == (5, 3, 256, 256)
    for image, (label, rgb) in zip(images, expected["train"]):
        np.testing.assert_array_equal(image, resize_image(rgb, 256)[:, :, ::-1].transpose(2, 0, 1))
        assert (image[0] == image[0, 0, 0]).all()  # B is constant, so stays constant
        assert image[2, 0].mean() < 5 and image[2, 255].mean() > 240  # R: dark top, bright bottom
    assert read_mean(m["mean_file"]).shape == (3, 256, 256)


@pytest.mark.slow
def test_cifar10_checksum_mismatch_names_file_and_sums_and_keeps_everything(tmp_path):
    archive, _ = make_cifar_archive(tmp_path / "offline", per_batch=1, test=1)
    data = tmp_path / "data"
    datasets.prepare("cifar10", data, resize=32, from_dir=archive.parent,
                     checksums={archive.name: md5(archive)}, progress=False, log=_quiet)
    before = sorted(p.name for p in (data / "cifar10").iterdir())
    # The real published md5 is the default: our small archive does not match it.
    result = cli("--dataset", "cifar10", "--root", data, "--from", archive.parent, "--force")
    assert result.returncode == 2
    assert str(archive) in result.stderr
    assert md5(archive)[4:] in result.stderr and "c32a1d4ab5d03f1284b67883e8d87530" in result.stderr
    assert archive.exists() and sorted(p.name for p in (data / "cifar10").iterdir()) == before
    with pytest.raises(ChecksumError):
        datasets.prepare("cifar10", data, from_dir=archive.parent, force=True, progress=False,
                         log=_quiet)
    # --skip-checksum goes on, loudly.
    result = cli("--dataset", "cifar10", "--root", data, "--from", archive.parent, "--force",
                 "--resize", 32, "--skip-checksum", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "WARNING: --skip-checksum: NOT verified" in result.stdout


# ---------------------------------------------------------------- MNIST

def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                      *array.shape)
    with gzip.open(path, "wb") as out:
        out.write(header + array.astype(np.uint8).tobytes())


def make_mnist_files(folder, n_train=7, n_test=3):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    data = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, 0, :] = 255  # a white top row
        images[:, -1, :] = 0
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        data[split] = (images, labels)
    return data


def _mnist_checksums(folder):
    return {p.name: md5(p) for p in folder.glob("*.gz")}


@pytest.mark.parametrize("gray", [False, True])
def test_mnist_from_gzipped_idx(tmp_path, gray):
    data = make_mnist_files(tmp_path / "offline")
    m = datasets.prepare("mnist", tmp_path / "data", resize=28, gray=gray,
                         from_dir=tmp_path / "offline",
                         checksums=_mnist_checksums(tmp_path / "offline"),
                         progress=False, log=_quiet)
    channels = 1 if gray else 3
    assert m["record_shape"] == [channels, 28, 28] and m["channel_order"] == ("gray" if gray
                                                                            else "BGR")
    for split in ("train", "test"):
        images, labels = read_records(m[f"{split}_db"])
        want_images, want_labels = data[split]
        assert labels.tolist() == want_labels.tolist()
        assert images.shape == (len(want_labels), channels, 28, 28)
        for c in range(channels):
            np.testing.assert_array_equal(images[:, c], want_images)
        assert (images[:, :, 0] == 255).all() and (images[:, :, -1] == 0).all()
    assert read_lines(m["test_file_list"]) == ["test/0.png", "test/1.png", "test/2.png"]


def test_mnist_file_url_mirror_and_upscale(tmp_path):
    make_mnist_files(tmp_path / "mirror", n_train=4, n_test=2)
    m = datasets.prepare("mnist", tmp_path / "data", resize=32,
                         mirrors=[(tmp_path / "mirror").as_uri() + "/"],
                         checksums=_mnist_checksums(tmp_path / "mirror"),
                         progress=False, log=_quiet, max_train=3)
    assert (m["train_count"], m["test_count"], m["record_shape"]) == (3, 2, [3, 32, 32])
    assert len(list((tmp_path / "data" / "downloads").glob("*.gz"))) == 4


def test_mnist_corrupt_idx_is_named(tmp_path):
    make_mnist_files(tmp_path / "offline")
    bad = tmp_path / "offline" / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as out:
        out.write(b"\x00\x00\x08\x01\x00\x00\x00\x09" + b"\x01" * 4)
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz: 4 data bytes"):
        datasets.prepare("mnist", tmp_path / "data", from_dir=tmp_path / "offline",
                         checksums=_mnist_checksums(tmp_path / "offline"), progress=False,
                         log=_quiet)
    assert not (tmp_path / "data" / "mnist").exists()


# ---------------------------------------------------------------- the user's images

def make_image_folder(folder, per_class=4, classes=("cat", "dog", "emu")):
    """Class sub-folders of PNGs whose colour encodes (class, index), plus one corrupt JPEG."""
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            rgb = np.zeros((10, 12, 3), np.uint8)
            rgb[..., 0], rgb[..., 1] = 50 * c, 10 * i
            rgb[0] = 255  # white top row
            Image.fromarray(rgb).save(folder / name / f"{i}.png")
    (folder / classes[1] / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / classes[0] / "notes.txt").write_text("not an image")


@pytest.mark.slow
def test_folder_with_a_corrupt_image_is_reported_and_skipped(tmp_path):
    make_image_folder(tmp_path / "photos")
    result = cli("--dataset", "list", "--folder", tmp_path / "photos", "--root",
                 tmp_path / "data", "--resize", 16, "--test-fraction", 0.25, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "broken.jpg" in result.stdout and "skipped 1 unreadable image" in result.stdout
    m = datasets.load_manifest(tmp_path / "data", "photos")  # named after the folder
    assert m["class_names"] == ["cat", "dog", "emu"] and m["images_on_disk"]
    assert m["skipped"] == [str(tmp_path / "photos" / "dog" / "broken.jpg")]
    assert m["train_count"] + m["test_count"] == 12
    for split in ("train", "test"):
        images, labels = read_records(m[f"{split}_db"])
        files = read_lines(m[f"{split}_file_list"])
        assert len(files) == len(labels) == len(images)
        for image, label, file in zip(images, labels, files):
            assert Path(file).parent.name == m["class_names"][label]
            i = int(Path(file).stem)
            assert image.shape == (3, 16, 16)
            assert (image[2, 8:] == 50 * label).all() and (image[1, 8:] == 10 * i).all()
            assert (image[:, 0] == 255).all()  # top row on top
    assert m["test_count"] == 3  # one of each class (a quarter of 4)


@pytest.mark.slow
def test_corrupt_image_aborts_with_strict(tmp_path):
    make_image_folder(tmp_path / "photos", per_class=2)
    result = cli("--dataset", "list", "--folder", tmp_path / "photos", "--root",
                 tmp_path / "data", "--resize", 8, "--test-fraction", 0.5, "--strict",
                 "--quiet")
    assert result.returncode == 2 and "broken.jpg" in result.stderr
    assert "--strict" in result.stderr
    assert not (tmp_path / "data" / "photos").exists()
    assert not [p for p in (tmp_path / "data").iterdir() if "partial" in p.name]


def _write_list(path, entries):
    path.write_text("".join(f"{p} {label}\n" for p, label in entries))


def test_list_files_shuffle_and_test_list(tmp_path):
    make_image_folder(tmp_path / "imgs", per_class=6)
    entries = [(f"{name}/{i}.png", c) for c, name in enumerate(("cat", "dog", "emu"))
               for i in range(6)]  # class-sorted, as lists usually are
    (tmp_path / "lists").mkdir()
    _write_list(tmp_path / "lists" / "train.txt", entries[:-3])
    _write_list(tmp_path / "lists" / "test.txt", entries[-3:] + [("dog/broken.jpg", 1)])
    (tmp_path / "lists" / "names.txt").write_text("cat\ndog\nemu\n")
    common = dict(list_file=tmp_path / "lists" / "train.txt", images_root=tmp_path / "imgs",
                  test_list=tmp_path / "lists" / "test.txt", resize=8, progress=False,
                  log=_quiet, class_names=tmp_path / "lists" / "names.txt")
    m = datasets.prepare("list", tmp_path / "data", **common)
    assert m["name"] == "train" and m["shuffle_seed"] == 0 and m["class_names"][2] == "emu"
    _, labels = read_records(m["train_db"])
    listed = [label for _, label in entries[:-3]]
    assert sorted(labels.tolist()) == sorted(listed) and labels.tolist() != listed
    files = read_lines(m["train_file_list"])
    assert files == [str(tmp_path / "imgs" / p) for p, _ in
                     [entries[i] for i in np.random.default_rng(0).permutation(15)]]
    assert read_lines(m["test_file_list"]) == [str(tmp_path / "imgs" / p)
                                               for p, _ in entries[-3:]]
    assert m["skipped"] == [str(tmp_path / "imgs" / "dog" / "broken.jpg")]
    # --no-shuffle keeps the list's order; the same seed gives the same order.
    m2 = datasets.prepare("list", tmp_path / "data", name="ordered", shuffle=False, **common)
    assert read_labels(m2["train_labels"]) == listed and m2["shuffle_seed"] is None


def test_bad_list_line_names_file_and_line(tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text("a.png 0\n\n# comment\nb.png x\n")
    with pytest.raises(DatasetError, match=r"train.txt:4: label 'x' is not an integer"):
        datasets.prepare("list", tmp_path / "data", list_file=lst, progress=False, log=_quiet)
    lst.write_text("a.png 0\nnolabel\n")
    result = cli("--dataset", "list", "--list", lst, "--root", tmp_path / "data")
    assert result.returncode == 2 and f"{lst}:2: expected 'path label'" in result.stderr


def test_list_path_with_spaces_relative_to_list_folder(tmp_path):
    (tmp_path / "my imgs").mkdir()
    for i in range(4):
        Image.fromarray(np.full((5, 5), 60 * i, np.uint8)).save(tmp_path / "my imgs" / f"{i}.png")
    _write_list(tmp_path / "all.txt", [(f"my imgs/{i}.png", i % 2) for i in range(4)])
    m = datasets.prepare("list", tmp_path / "data", list_file=tmp_path / "all.txt", resize=5,
                         gray=True, test_fraction=0.5, progress=False, log=_quiet)
    images, _ = read_records(m["train_db"])
    assert images.shape == (2, 1, 5, 5) and m["test_count"] == 2


# ---------------------------------------------------------------- digits, the embedded default

@pytest.mark.slow
def test_digits_offline_in_seconds(tmp_path):
    import time

    start = time.perf_counter()
    m = datasets.prepare("digits", tmp_path, progress=False, log=_quiet)
    assert time.perf_counter() - start < 10
    assert (m["train_count"], m["test_count"], m["record_shape"]) == (1497, 300, [3, 32, 32])
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = read_records(m["test_db"])
    files = read_lines(m["test_file_list"])
    assert np.bincount(labels, minlength=10).min() >= 28  # stratified
    for image, label, file in zip(images[:20], labels, files):
        index = int(Path(file).stem)
        assert digits.target[index] == label
        source = np.round(digits.images[index] * 255 / 16).astype(np.uint8)
        np.testing.assert_array_equal(image[0], resize_image(source, 32))
        assert (image[0] == image[2]).all()
    # The split is fixed by the seed.
    again = datasets.prepare("digits", tmp_path, name="digits2", progress=False, log=_quiet)
    assert read_lines(again["train_file_list"]) == read_lines(m["train_file_list"])


def test_existing_dataset_kept_unless_force(tmp_path):
    datasets.prepare("digits", tmp_path, max_train=10, max_test=5, progress=False, log=_quiet)
    with pytest.raises(DatasetError, match="digits exists; pass --force"):
        datasets.prepare("digits", tmp_path, progress=False, log=_quiet)
    m = datasets.prepare("digits", tmp_path, max_train=20, max_test=5, force=True, db="lmdb",
                         progress=False, log=_quiet)
    assert m["train_count"] == 20 and sorted(p.name for p in tmp_path.iterdir()) == ["digits"]
    assert not (tmp_path / "digits" / "digits_train_leveldb").exists()


def test_encoded_png_dataset_is_smaller_and_reads_back_the_same(tmp_path):
    raw = datasets.prepare("digits", tmp_path, name="raw", resize=64, max_train=50, max_test=10,
                           progress=False, log=_quiet)
    png = datasets.prepare("digits", tmp_path, name="png", resize=64, max_train=50, max_test=10,
                           encoded="png", progress=False, log=_quiet)
    assert png["encoding"] == "png"
    a, la = read_records(raw["train_db"])
    b, lb = read_records(png["train_db"])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert folder_bytes(tmp_path / "png") < folder_bytes(tmp_path / "raw")
    np.testing.assert_array_equal(read_mean(raw["mean_file"]), read_mean(png["mean_file"]))


def test_exception_mid_write_keeps_the_old_dataset(tmp_path, monkeypatch):
    datasets.prepare("digits", tmp_path, max_train=30, max_test=5, progress=False, log=_quiet)
    before = json.loads((tmp_path / "digits" / "dataset.json").read_text())
    from dlbhc_caffe.datasets import db

    original = db.DatabaseWriter.add

    def failing_add(self, datum):
        if self.count == 100:
            raise KeyboardInterrupt
        original(self, datum)

    monkeypatch.setattr(db.DatabaseWriter, "add", failing_add)
    with pytest.raises(KeyboardInterrupt):
        datasets.prepare("digits", tmp_path, force=True, progress=False, log=_quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]
    assert json.loads((tmp_path / "digits" / "dataset.json").read_text()) == before


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
from dlbhc_caffe import datasets
from dlbhc_caffe.datasets import db
original = db.DatabaseWriter.add
def add(self, datum):
    if self.count == 700:
        self.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    original(self, datum)
db.DatabaseWriter.add = add
datasets.prepare("digits", {data!r}, progress=False)
"""


@pytest.mark.slow
def test_sigkill_mid_write_leaves_no_database_and_next_run_succeeds(tmp_path):
    data = tmp_path / "data"
    script = KILL_SCRIPT.format(root=str(ROOT), data=str(data))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # the lock file may stay (an unlocked file: the kernel dropped the lock with the process)
    leftovers = [p.name for p in data.iterdir() if p.name != ".digits.lock"]
    assert "digits" not in leftovers
    assert len(leftovers) == 1 and leftovers[0].startswith(".digits.partial-")
    partial = data / leftovers[0]
    assert (partial / "digits_train_leveldb").exists() is False  # only its temporary name
    result = cli("--dataset", "digits", "--root", data, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "interrupted run" in result.stdout
    assert [p.name for p in data.iterdir() if p.name != ".digits.lock"] == ["digits"]
    images, labels = read_records(data / "digits" / "digits_train_leveldb")
    assert len(images) == 1497 and labels.tolist() == read_labels(
        data / "digits" / "train-label.txt")


# ---------------------------------------------------------------- weights

@pytest.mark.slow
def test_caffenet_weights_and_mean_from_dir(tmp_path, fixtures_dir):
    offline = tmp_path / "offline"
    offline.mkdir()
    model = offline / "bvlc_reference_caffenet.caffemodel"
    model.write_bytes(b"not really a caffemodel")
    sha1 = "sha1:" + hashlib.sha1(model.read_bytes()).hexdigest()
    with tarfile.open(offline / "caffe_ilsvrc12.tar.gz", "w:gz") as tar:
        tar.add(fixtures_dir / "models" / "imagenet_mean.binaryproto", "imagenet_mean.binaryproto")
        info = tarfile.TarInfo("synset_words.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"n01\n"))
    data = tmp_path / "data"
    result = cli("--weights", "caffenet", "--root", data, "--from", offline, "--checksum",
                 f"bvlc_reference_caffenet.caffemodel={sha1}", "--quiet")
    assert result.returncode == 0, result.stderr
    assert (data / "models" / model.name).read_bytes() == model.read_bytes()
    assert (data / "ilsvrc12" / "imagenet_mean.binaryproto").read_bytes() == (
        fixtures_dir / "models" / "imagenet_mean.binaryproto").read_bytes()
    assert (data / "ilsvrc12" / "synset_words.txt").exists()
    assert "matches the original project's copy" in result.stdout
    assert model.exists()  # --from files are copied, never moved
    # The published sha1 is the default: a wrong file in --from is refused, nothing replaced.
    result = cli("--weights", "caffenet", "--root", data, "--from", offline, "--force")
    assert result.returncode == 2 and "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46" in result.stderr
    assert (data / "models" / model.name).read_bytes() == model.read_bytes()


def test_a_different_imagenet_mean_is_reported(tmp_path):
    offline = tmp_path / "offline"
    offline.mkdir()
    model = offline / "bvlc_reference_caffenet.caffemodel"
    model.write_bytes(b"x")
    from dlbhc_caffe.proto import write_blob

    write_blob(np.ones((1, 3, 256, 256), np.float32), offline / "imagenet_mean.binaryproto")
    messages = []
    paths = datasets.fetch_caffenet(tmp_path / "data", from_dir=offline, progress=False,
                                    checksum="sha1:" + hashlib.sha1(b"x").hexdigest(),
                                    log=messages.append)
    assert paths["mean"].exists()
    assert any("differs from the original project's copy" in m for m in messages)


def test_cli_needs_something_to_do():
    result = cli()
    assert result.returncode == 2 and "nothing to do" in result.stderr


def test_stratified_split_counts_and_seed():
    from dlbhc_caffe.datasets.build import stratified_split

    labels = np.repeat(np.arange(4), [10, 20, 30, 3])
    train, test = stratified_split(labels, 21, seed=5)
    assert len(test) == 21 and len(train) == 42 and not set(train) & set(test)
    assert np.bincount(labels[test]).tolist() == [3, 7, 10, 1]  # shares 3.3, 6.7, 10, 1.0
    assert (np.diff(test) > 0).all()  # index order
    again, _ = stratified_split(labels, 21, seed=5)
    other, _ = stratified_split(labels, 21, seed=6)
    assert (again == train).all() and not np.array_equal(other, train)
    _, tiny = stratified_split(np.array([0, 0, 1]), 0.9, seed=0)
    assert np.bincount(np.array([0, 0, 1])[tiny], minlength=2).tolist() == [1, 0]


def test_load_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset.json: no such dataset manifest \(run"):
        datasets.load_manifest(tmp_path, "cifar10")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "dataset.json").write_text("{broken")
    with pytest.raises(DatasetError, match="not a readable dataset.json"):
        datasets.load_manifest(tmp_path / "x")


def test_record_threads_keep_the_order(tmp_path):
    make_image_folder(tmp_path / "photos", per_class=5)
    common = dict(folder=tmp_path / "photos", resize=12, encoded="png", progress=False,
                  log=_quiet, test_fraction=0.2)
    one = datasets.prepare("list", tmp_path / "data", name="one", workers=1, **common)
    many = datasets.prepare("list", tmp_path / "data", name="many", workers=4, **common)
    for split in ("train", "test"):
        a, la = read_records(one[f"{split}_db"])
        b, lb = read_records(many[f"{split}_db"])
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
        assert read_lines(one[f"{split}_file_list"]) == read_lines(many[f"{split}_file_list"])
    assert one["skipped"] == many["skipped"] and len(one["skipped"]) == 1


def test_list_options_belong_to_list_and_digits_no_shuffle(tmp_path):
    with pytest.raises(DatasetError, match="test_fraction: options of --dataset list"):
        datasets.prepare("digits", tmp_path, test_fraction=0.5, progress=False, log=_quiet)
    with pytest.raises(DatasetError, match="'models'.*choose another name"):
        datasets.prepare("digits", tmp_path, name="models", progress=False, log=_quiet)
    m = datasets.prepare("digits", tmp_path, shuffle=False, max_train=50, max_test=5,
                         progress=False, log=_quiet)
    rows = [int(Path(f).stem) for f in read_lines(m["train_file_list"])]
    assert rows == sorted(rows) and m["shuffle_seed"] is None and m["split_seed"] == 0
