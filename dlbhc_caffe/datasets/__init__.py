"""The prepare stage: datasets as Caffe Datum databases, means, file lists and dataset.json.

Sources: "cifar10" (the official binary archive), "mnist" (the four IDX files), "list" (your
images: a convert_imageset list or a folder of class folders) and "digits" (scikit-learn's
bundled 8x8 digits; no network). `prepare` writes data/<name>/ as docs/files.md describes; later
stages read it back with `load_manifest`, `open_db` and `read_records`.

>>> import tempfile
>>> from dlbhc_caffe import datasets
>>> root = tempfile.mkdtemp()
>>> m = datasets.prepare("digits", root, progress=False, log=lambda *_: None)
>>> m["train_count"], m["test_count"], m["record_shape"], m["backend"]
(1497, 300, [3, 32, 32], 'leveldb')
>>> images, labels = datasets.read_records(m["test_db"], m["backend"])
>>> images.shape, images.dtype.name
((300, 3, 32, 32), 'uint8')
>>> labels.tolist() == datasets.read_labels(m["test_labels"])
True
"""
from pathlib import Path

from . import cifar10, digits, imagelist, mnist
from .build import Options, Source, Split, make_options, run
from .db import (BACKENDS, DatabaseError, DatabaseWriter, count_records, detect_backend, open_db,
                 read_records, write_records)
from .download import ChecksumError, DownloadError, Resource, fetch, file_checksum, verify
from .manifest import DatasetError, load_manifest, read_labels, read_lines
from .mean import MeanAccumulator, compute_mean
from .records import ENCODINGS, ImageError, decode_datum, load_image, resize_image, to_record
from .weights import WEIGHTS, caffenet_paths, fetch_caffenet

DATASETS = {
    "cifar10": cifar10.load,
    "mnist": mnist.load,
    "list": imagelist.load,
    "digits": digits.load,
}
DEFAULT_RESIZE = {"digits": digits.DEFAULT_RESIZE}
LIST_OPTIONS = ("list_file", "images_root", "folder", "test_list", "test_folder",
                "test_fraction", "class_names")


def prepare(dataset, root="data", **options):
    """Write the dataset folder root/<name> for `dataset`; returns its manifest (load_manifest).

    Options (keyword; the command line's flags): name (folder; default the dataset, or for
    "list" the list file's stem / the folder's name), db ("leveldb" | "lmdb"), resize (int or
    (height, width); default 256, 32 for digits), gray, encoded ("raw" | "png" | "jpg"), force
    (replace an existing folder), seed (0), shuffle (list: shuffle the training records; True),
    from_dir (take downloads from this folder), mirrors (URLs tried first; one ending in "/"
    is a folder), checksums ({file name: "algo:hex"} overriding the published ones),
    skip_checksum, downloads (folder; root/downloads), list_file, images_root, folder,
    test_list, test_folder, test_fraction, strict (stop at an unreadable image), class_names
    (file), max_train, max_test (keep the first N records), workers (threads making records;
    default: the CPUs, at most 8), progress, log (a print-like function), command (recorded in
    dataset.json).
    """
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    misplaced = [key for key in LIST_OPTIONS if options.get(key) is not None]
    if dataset != "list" and misplaced:
        raise DatasetError(f"{', '.join(misplaced)}: options of --dataset list, not {dataset}")
    if dataset == "list" and options.get("name") is None:
        source = options.get("list_file") or options.get("folder")
        if source is not None:
            path = Path(source).absolute()
            options["name"] = path.stem if options.get("list_file") else path.name
    opts = make_options(dataset, root, default_resize=DEFAULT_RESIZE.get(dataset, 256), **options)
    return run(opts, DATASETS[dataset])


__all__ = [
    "prepare", "DATASETS", "load_manifest", "open_db", "read_records", "count_records",
    "detect_backend", "write_records", "DatabaseWriter", "BACKENDS", "ENCODINGS",
    "decode_datum", "to_record", "load_image", "resize_image", "compute_mean", "MeanAccumulator",
    "fetch", "verify", "file_checksum", "Resource", "fetch_caffenet", "caffenet_paths", "WEIGHTS",
    "read_labels", "read_lines", "DatasetError", "DatabaseError", "ChecksumError",
    "DownloadError", "ImageError", "Options", "Source", "Split",
]
