"""MNIST from its four gzipped IDX files (60,000 train / 10,000 test, 28x28 gray, digits 0-9).

IDX: a big-endian header -- two zero bytes, the element type (0x08 = unsigned byte), the number
of dimensions, then each dimension as a 32-bit integer -- followed by the values, row-major (row 0
is the top of the image). Images are 3 dimensions (N, 28, 28), labels 1 (N).

Mirrors are tried in turn (the ossci-datasets S3 copy first: yann.lecun.com, the original,
often refuses downloads today). File list names are train/<i>.png and test/<i>.png, i the index
in the IDX file; no image files are written.
"""
import gzip

import numpy as np

from .build import Source, Split
from .download import Resource
from .manifest import DatasetError

MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")


def _resource(filename, md5):
    return Resource(filename, urls=tuple(m + filename for m in MIRRORS), checksum=f"md5:{md5}")


TRAIN_IMAGES = _resource("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873")
TRAIN_LABELS = _resource("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432")
TEST_IMAGES = _resource("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3")
TEST_LABELS = _resource("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")
RESOURCES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
CLASS_NAMES = [str(d) for d in range(10)]


def read_idx(path, ndim):
    """The uint8 array of a (gzipped) IDX file with `ndim` dimensions; errors name the file."""
    try:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"{path}: cannot read ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise DatasetError(f"{path}: IDX element type 0x{data[2]:02x}, expected 0x08 "
                           "(unsigned byte)")
    if data[3] != ndim:
        raise DatasetError(f"{path}: {data[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], ">u4"))
    size = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != size:
        raise DatasetError(f"{path}: {len(data) - header} data bytes for shape {shape} "
                           f"({size} expected)")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _split(images_path, labels_path, folder):
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} has {len(images)} images but {labels_path} has "
                           f"{len(labels)} labels")
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DatasetError(f"{labels_path}: label {bad[0]} is {labels[bad[0]]} (0..9 expected)")
    items = ((f"{folder}/{i}.png", int(label), image)
             for i, (label, image) in enumerate(zip(labels, images)))
    return Split(items, len(labels))


def load(opts):
    """The Source of MNIST (see module docstring)."""
    paths = {res.filename: opts.fetch(res) for res in RESOURCES}
    return Source(
        class_names=list(CLASS_NAMES),
        train=_split(paths[TRAIN_IMAGES.filename], paths[TRAIN_LABELS.filename], "train"),
        test=_split(paths[TEST_IMAGES.filename], paths[TEST_LABELS.filename], "test"),
        files=[opts.source_file(paths[res.filename], res) for res in RESOURCES],
    )
