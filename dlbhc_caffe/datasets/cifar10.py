"""CIFAR-10 from the official binary archive (the paper's dataset).

cifar-10-binary.tar.gz holds cifar-10-batches-bin/data_batch_1.bin .. data_batch_5.bin (10,000
records each), test_batch.bin (10,000) and batches.meta.txt (the class names, one a line). A record
is 1 label byte and 3,072 pixel bytes: the R, G and B planes of a 32x32 image, each row-major with
row 0 at the top. Records are written in the archive's order: 50,000 train, 10,000 test.

File list names follow the original's layout (batch1/0.png, ..., test/9999.png: batch and index
within its batch file); no image files are written.
"""
import tarfile

import numpy as np

from .build import Source, Split
from .download import Resource
from .manifest import DatasetError

ARCHIVE = Resource(
    "cifar-10-binary.tar.gz",
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
    checksum="md5:c32a1d4ab5d03f1284b67883e8d87530",
    size=170052171,
)
FOLDER = "cifar-10-batches-bin"
TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_BATCH = "test_batch.bin"
META = "batches.meta.txt"
SIDE = 32
RECORD = 1 + 3 * SIDE * SIDE
RECORDS_PER_BATCH = 10000


def read_batch(data, where):
    """(labels uint8 N, images N x 32 x 32 x 3 RGB uint8) of one .bin batch's bytes."""
    if len(data) % RECORD:
        raise DatasetError(f"{where}: {len(data)} bytes is not a whole number of "
                           f"{RECORD}-byte records")
    rows = np.frombuffer(data, np.uint8).reshape(-1, RECORD)
    labels = rows[:, 0]
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DatasetError(f"{where}: record {bad[0]} has label {labels[bad[0]]} (0..9 expected)")
    images = rows[:, 1:].reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return labels, images


class Archive:
    """The members of cifar-10-binary.tar.gz, read on demand."""

    def __init__(self, path):
        self.path = path
        try:
            self._tar = tarfile.open(path, "r:gz")
            self._members = {m.name: m for m in self._tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DatasetError(f"{path}: not a readable tar.gz archive ({err})") from None

    def read(self, member):
        name = f"{FOLDER}/{member}"
        if name not in self._members:
            raise DatasetError(f"{self.path}: no member {name} (is it the binary version, "
                               "cifar-10-binary.tar.gz?)")
        return self._tar.extractfile(self._members[name]).read()

    def count(self, member):
        """Records in a batch, from its size (before reading it)."""
        name = f"{FOLDER}/{member}"
        if name not in self._members:
            raise DatasetError(f"{self.path}: no member {name}")
        return self._members[name].size // RECORD

    def class_names(self):
        names = [line.strip() for line in self.read(META).decode().splitlines() if line.strip()]
        if len(names) != 10:
            raise DatasetError(f"{self.path}: {FOLDER}/{META} names {len(names)} classes, "
                               "not 10")
        return names

    def items(self, members, prefix):
        for number, member in enumerate(members, 1):
            labels, images = read_batch(self.read(member), f"{self.path}:{FOLDER}/{member}")
            folder = prefix(number)
            for index, (label, image) in enumerate(zip(labels, images)):
                yield f"{folder}/{index}.png", int(label), image


def load(opts):
    """The Source of CIFAR-10 (see module docstring)."""
    path = opts.fetch(ARCHIVE)
    archive = Archive(path)
    names = archive.class_names()
    train_count = sum(archive.count(m) for m in TRAIN_BATCHES)
    test_count = archive.count(TEST_BATCH)
    return Source(
        class_names=names,
        train=Split(archive.items(TRAIN_BATCHES, lambda n: f"batch{n}"), train_count),
        test=Split(archive.items((TEST_BATCH,), lambda n: "test"), test_count),
        files=[opts.source_file(path, ARCHIVE)],
    )
