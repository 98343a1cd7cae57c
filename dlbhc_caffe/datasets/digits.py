"""The embedded default: scikit-learn's bundled digits, so a fresh machine runs offline.

1,797 real handwritten digits, 8x8, values 0..16, ten classes (the file scikit-learn's
load_digits reads, sklearn/datasets/data/digits.csv.gz: 64 pixel values and the label a row).
Values are scaled to 0..255, upscaled (bilinear) to the record size (default 32) and replicated
to 3 channels unless gray. A fixed stratified split drawn with the seed: 1,497 train / 300 test;
the training records are shuffled with the seed (unless shuffle is off), the test records keep
the data's order.
File list names are digits/<i>.png, i the row in scikit-learn's data; no image files.
"""
import gzip
import importlib.util
from pathlib import Path

import numpy as np

from .build import Source, Split, stratified_split
from .manifest import DatasetError

DEFAULT_RESIZE = 32
TEST_COUNT = 300
COUNT = 1797


def data_file():
    """The path of scikit-learn's digits.csv.gz (found without importing scikit-learn)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the digits dataset needs scikit-learn (pip install scikit-learn)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"


def load_images():
    """(images 1797 x 8 x 8 uint8 0..255, labels int64) of scikit-learn's digits."""
    path = data_file()
    try:
        with gzip.open(path, "rt") as handle:
            rows = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read scikit-learn's digits ({err})") from None
    if rows.shape != (COUNT, 65):
        raise DatasetError(f"{path}: {rows.shape[0]} rows of {rows.shape[-1]} values, expected "
                           f"{COUNT} of 65")
    images = np.round(rows[:, :64].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    return images, rows[:, 64].astype(np.int64)


def split_indices(labels, seed=0, test_count=TEST_COUNT, shuffle=True):
    """(train indices, test indices): stratified and fixed by `seed`; the training indices
    shuffled with it unless `shuffle` is off, the test indices in order."""
    train, test = stratified_split(labels, int(test_count), seed)
    return (np.random.default_rng(seed).permutation(train) if shuffle else train), test


def load(opts):
    """The Source of the digits (see module docstring)."""
    images, labels = load_images()
    train, test = split_indices(labels, seed=opts.seed, shuffle=opts.shuffle)

    def split(indices):
        items = ((f"digits/{i}.png", int(labels[i]), images[i]) for i in indices)
        return Split(items, len(indices))

    return Source(class_names=[str(d) for d in range(10)], train=split(train), test=split(test),
                  shuffle_seed=opts.seed if opts.shuffle else None, split_seed=opts.seed,
                  files=[{"file": str(data_file()), "checksum": None, "verified": False}])
