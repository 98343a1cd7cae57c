"""The prepare stage: a dataset source -> the dataset folder (docs/files.md).

    data/<name>/dataset.json            what was written (see manifest.py)
    data/<name>/<name>_train_<db>       Datum records, keys zero-padded, key order = list order
    data/<name>/<name>_test_<db>
    data/<name>/train-file-list.txt     one name a line, in database order
    data/<name>/train-label.txt         one label a line, in database order
    data/<name>/test-file-list.txt, test-label.txt
    data/<name>/mean.binaryproto        mean of the training records, 1 x C x H x W

The folder is built under a temporary name beside its target and renamed when complete, so an
interrupted run leaves no half dataset (the next run removes the leftover); an existing folder is
replaced only with `force`.

A source module (cifar10, mnist, imagelist, digits) turns the options into a `Source`: class
names and two `Split`s of items (name, label, image), where image is an H x W [x 3] RGB uint8
array, or the path of an image file read while writing.
"""
import itertools
import os
import shutil
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from .db import DatabaseWriter, KEY_DIGITS, check_backend, partial_path, remove_stale_partials, \
    replace_path
from ..fileio import output_lock
from .download import fetch, warn_loudly
from .manifest import FORMAT_VERSION, DatasetError, load_manifest, write_manifest
from .mean import MeanAccumulator
from .records import ENCODINGS, ImageError, load_image, record_size, to_record

MEAN_FILE = "mean.binaryproto"
RECORD_OVERHEAD = 32  # bytes a raw record adds to its pixels: Datum fields and the key
ESTIMATE_SAMPLE = 16  # records encoded to estimate the size of encoded databases
RESERVED_NAMES = {"downloads": "downloads", "models": "CaffeNet's weights",
                  "ilsvrc12": "the ImageNet mean"}  # folders of the data root that are no dataset


def log_line(message):
    """Print a line without breaking a running progress bar."""
    tqdm.write(str(message), file=sys.stdout)


@dataclass
class Split:
    """Items (name, label, image array or image path) and how many there are (at most)."""

    items: Iterable
    count: int


@dataclass
class Source:
    """What a source module gives the writer."""

    class_names: list
    train: Split
    test: Split
    images_on_disk: bool = False  # file list names are real image files
    shuffle_seed: int = None  # the training items were shuffled with this seed
    split_seed: int = None  # the train/test split was drawn with this seed
    files: list = field(default_factory=list)  # [{"file": path, "checksum": "algo:hex"}]


@dataclass
class Options:
    """Every option of prepare, validated: made by `make_options` (see `prepare`)."""

    dataset: str
    root: Path
    name: str
    backend: str
    size: tuple
    gray: bool
    encoding: str
    force: bool
    seed: int
    shuffle: bool
    from_dir: Path
    mirrors: tuple
    checksums: dict
    skip_checksum: bool
    downloads: Path
    list_file: Path
    images_root: Path
    folder: Path
    test_list: Path
    test_folder: Path
    test_fraction: float
    strict: bool
    class_names_file: Path
    max_train: int
    max_test: int
    progress: bool
    log: object
    command: str
    workers: int

    def fetch(self, resource):
        """A verified local copy of a download (see download.fetch), under the options."""
        return fetch(resource, self.downloads / resource.filename, from_dir=self.from_dir,
                     mirrors=self.mirrors, checksum=self.checksums.get(resource.filename),
                     skip_checksum=self.skip_checksum, progress=self.progress, log=self.log)

    def source_file(self, path, resource):
        """The manifest's record of a file used: its path and the checksum it was held to."""
        checksum = self.checksums.get(resource.filename) or resource.checksum
        return {"file": str(Path(path).resolve()), "checksum": checksum,
                "verified": bool(checksum) and not self.skip_checksum}


def _positive(value, what):
    if value is None:
        return None
    value = int(value)
    if value < 1:
        raise DatasetError(f"{what} must be at least 1, got {value}")
    return value


def make_options(dataset, root="data", name=None, db="leveldb", resize=None, default_resize=256,
                 gray=False, encoded="raw", force=False, seed=0, shuffle=True, from_dir=None,
                 mirrors=(), checksums=None, skip_checksum=False, downloads=None, list_file=None,
                 images_root=None, folder=None, test_list=None, test_folder=None,
                 test_fraction=None, strict=False, class_names=None, max_train=None,
                 max_test=None, progress=True, log=None, command=None, workers=None):
    """Options from prepare's keyword arguments, checked once here."""
    if encoded not in ENCODINGS:
        raise DatasetError(f"--encoded must be one of {ENCODINGS}, got {encoded!r}")
    if name is None:
        name = dataset
    name = str(name)
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise DatasetError(f"--name {name!r}: a dataset name is a plain folder name")
    if name in RESERVED_NAMES:
        raise DatasetError(f"--name {name!r}: {root}/{name} holds {RESERVED_NAMES[name]}; "
                           "choose another name")
    try:
        size = record_size(default_resize if resize is None else resize)
    except (TypeError, ValueError) as err:
        raise DatasetError(f"--resize: {err}") from None
    if test_fraction is not None and not 0 < float(test_fraction) < 1:
        raise DatasetError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    root = Path(root)
    return Options(
        dataset=dataset, root=root, name=name, backend=check_backend(db), size=size,
        gray=bool(gray), encoding=encoded, force=bool(force), seed=int(seed),
        shuffle=bool(shuffle), from_dir=Path(from_dir) if from_dir else None,
        mirrors=tuple(mirrors or ()), checksums=dict(checksums or {}),
        skip_checksum=bool(skip_checksum),
        downloads=Path(downloads) if downloads else root / "downloads",
        list_file=_path(list_file), images_root=_path(images_root), folder=_path(folder),
        test_list=_path(test_list), test_folder=_path(test_folder),
        test_fraction=None if test_fraction is None else float(test_fraction),
        strict=bool(strict), class_names_file=_path(class_names),
        max_train=_positive(max_train, "--max-train"), max_test=_positive(max_test, "--max-test"),
        progress=bool(progress), log=log or log_line, command=command,
        workers=default_workers() if workers is None else max(1, int(workers)))


def default_workers():
    """Threads that make records: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _path(value):
    return Path(value) if value is not None else None


def stratified_split(labels, test_size, seed):
    """(train indices, test indices), both in index order: the same share of every class held out.

    test_size is a fraction of all items or a count. Each class gives its share of the test
    items (largest remainders round up, so a count is met exactly) and keeps at least one for
    training; which ones is drawn with `seed`.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    total = test_size if isinstance(test_size, (int, np.integer)) else test_size * len(labels)
    share = counts * (float(total) / len(labels))
    take = np.floor(share).astype(np.int64)
    extra = int(round(total)) - int(take.sum())
    take[np.argsort(take - share, kind="stable")[:max(extra, 0)]] += 1
    take = np.minimum(take, counts - 1)
    rng = np.random.default_rng(seed)
    test = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    test = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), test), test


# ---------------------------------------------------------------- sizes

def _human(nbytes):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000.0
    return f"{nbytes:.1f} TB"


def folder_bytes(path):
    """Bytes of the files under `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _peek(items, k):
    """(first k items, an iterator over all of them again)."""
    items = iter(items)
    head = list(itertools.islice(items, k))
    return head, itertools.chain(head, items)


def estimate_bytes(opts, count, sample=()):
    """About how many bytes `count` records take (raw: exact pixels; encoded: from `sample`)."""
    channels = 1 if opts.gray else 3
    height, width = opts.size
    if opts.encoding == "raw" or not sample:
        per_record = channels * height * width + RECORD_OVERHEAD
    else:
        sizes = []
        for _, label, image in sample:
            if not isinstance(image, np.ndarray):
                try:
                    image = load_image(image, gray=opts.gray)
                except ImageError:
                    continue
            sizes.append(len(to_record(image, label, opts.size, opts.gray,
                                       opts.encoding)[0].data) + RECORD_OVERHEAD)
        per_record = float(np.mean(sizes)) if sizes else channels * height * width
    return int(per_record * count)


# ---------------------------------------------------------------- writing

def _limit(split, limit):
    if limit is None or limit >= split.count:
        return split
    return Split(itertools.islice(split.items, limit), limit)


def _record(item, opts):
    """(name, label, Datum, pixels) of an item, or (name, label, ImageError, None)."""
    name, label, image = item
    if not isinstance(image, np.ndarray):
        try:
            image = load_image(image, gray=opts.gray)
        except ImageError as err:
            return name, label, err, None
    return (name, label) + to_record(image, label, opts.size, opts.gray, opts.encoding)


def _records(items, opts):
    """`_record` of every item, in order. Costly records (image files to read, resizing,
    PNG/JPEG coding: work PIL does without the GIL) are made by `opts.workers` threads, a
    bounded window ahead; cheap ones (raw, already at the record size) in this thread, where
    handing them over would cost more than making them."""
    items = iter(items)
    first = next(items, None)
    if first is None:
        return
    items = itertools.chain([first], items)
    image = first[2]
    cheap = opts.encoding == "raw" and isinstance(image, np.ndarray) and \
        image.shape[:2] == tuple(opts.size)
    if opts.workers <= 1 or cheap:
        yield from (_record(item, opts) for item in items)
        return
    window = 4 * opts.workers
    with ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="records") as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(_record, item, opts))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def write_split(items, count, db_path, opts, classes, mean=None, desc="records"):
    """Write one split's records; returns (names, labels, skipped paths) in database order."""
    names, labels, skipped = [], [], []
    with DatabaseWriter(db_path, opts.backend, log=opts.log) as writer, \
            tqdm(total=count, desc=desc, unit="img", disable=not opts.progress, leave=False,
                 file=sys.stderr) as bar:
        for name, label, datum, chw in _records(items, opts):
            bar.update(1)
            if not 0 <= int(label) < classes:
                raise DatasetError(f"{name}: label {label} is outside 0..{classes - 1}")
            if isinstance(datum, ImageError):
                if opts.strict:
                    raise ImageError(f"{datum} (--strict: stopping)") from None
                opts.log(f"skipped: {datum}")
                skipped.append(str(name))
                continue
            writer.add(datum)
            if mean is not None:
                mean.add(chw)
            names.append(str(name))
            labels.append(int(label))
    return names, labels, skipped


def _write_lines(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))


def write_dataset(opts, source, target):
    """Write `source` as the dataset folder `target` (whole or not at all); returns the manifest."""
    train = _limit(source.train, opts.max_train)
    test = _limit(source.test, opts.max_test)
    classes = len(source.class_names)
    sample, train_items = _peek(train.items, ESTIMATE_SAMPLE if opts.encoding != "raw" else 0)
    total = train.count + test.count
    estimate = estimate_bytes(opts, total, sample)
    free = shutil.disk_usage(opts.root).free
    channels = 1 if opts.gray else 3
    height, width = opts.size
    opts.log(f"{opts.name}: writing {train.count:,} train + {test.count:,} test records of "
             f"{channels}x{height}x{width} {opts.encoding} to {target} ({opts.backend}): about "
             f"{_human(estimate)} on disk; {_human(free)} free there")
    if estimate > free:
        warn_loudly(opts.log, f"about {_human(estimate)} needed but only {_human(free)} free "
                              f"in {opts.root}; --encoded png or a smaller --resize takes less")

    names = {split: f"{opts.name}_{split}_{opts.backend}" for split in ("train", "test")}
    partial = partial_path(target)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        mean = MeanAccumulator()
        written = {}
        for split, items, count, acc in (("train", train_items, train.count, mean),
                                         ("test", test.items, test.count, None)):
            written[split] = write_split(items, count, partial / names[split], opts, classes,
                                         mean=acc, desc=f"{opts.name} {split}")
            if not written[split][0]:
                raise DatasetError(f"{opts.name}: no readable {split} images")
            _write_lines(partial / f"{split}-file-list.txt", written[split][0])
            _write_lines(partial / f"{split}-label.txt", written[split][1])
        mean.write(partial / MEAN_FILE)
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": opts.name,
            "dataset": opts.dataset,
            "classes": classes,
            "class_names": list(source.class_names),
            "record_shape": [channels, height, width],
            "channels": channels,
            "height": height,
            "width": width,
            "channel_order": "gray" if opts.gray else "BGR",
            "encoding": opts.encoding,
            "backend": opts.backend,
            "key_digits": KEY_DIGITS,
            "train_db": names["train"],
            "test_db": names["test"],
            "train_count": len(written["train"][0]),
            "test_count": len(written["test"][0]),
            "shuffle_seed": source.shuffle_seed,
            "split_seed": source.split_seed,
            "mean_file": MEAN_FILE,
            "train_file_list": "train-file-list.txt",
            "test_file_list": "test-file-list.txt",
            "train_labels": "train-label.txt",
            "test_labels": "test-label.txt",
            "images_on_disk": source.images_on_disk,
            "sources": source.files,
            "skipped": written["train"][2] + written["test"][2],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": opts.command,
        }
        write_manifest(partial, manifest)
        if (target.exists() or target.is_symlink()) and not opts.force:
            raise DatasetError(f"{target} appeared while this run was writing (another "
                               "prepare?); pass --force to replace it")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    replace_path(partial, target)

    skipped = manifest["skipped"]
    opts.log(f"wrote {target}: {names['train']} ({manifest['train_count']:,} records), "
             f"{names['test']} ({manifest['test_count']:,} records), {MEAN_FILE}, "
             f"train/test file lists and labels, dataset.json; "
             f"{_human(folder_bytes(target))} on disk")
    if skipped:
        opts.log(f"skipped {len(skipped)} unreadable image(s) (listed in dataset.json)")
    return load_manifest(target)


def run(opts, load_source):
    """Refuse an existing folder without force, load the source, write the dataset."""
    target = opts.root / opts.name
    with output_lock(target, "dataset"):  # a second prepare of the same dataset is refused
        if (target.exists() or target.is_symlink()) and not opts.force:
            raise DatasetError(f"{target} exists; pass --force to replace it")
        opts.root.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(target, log=opts.log)
        source = load_source(opts)
        return write_dataset(opts, source, target)
