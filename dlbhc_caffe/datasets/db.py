"""LevelDB (plyvel) and LMDB databases of Datum records, as Caffe's Data layer reads them.

Keys are zero-padded record numbers ("00000000", "00000001", ...), so key order -- the order in
which Caffe's Data layer reads -- is the order records were added. A database is written under a
temporary name beside its target and renamed when complete: an interrupted write never leaves a
half database under the real name (the next writer removes the leftover).

>>> import tempfile, numpy as np
>>> from dlbhc_caffe.proto import datum_from_array
>>> path = tempfile.mkdtemp() + "/toy_lmdb"
>>> with DatabaseWriter(path, "lmdb") as db:
...     db.add(datum_from_array(np.zeros((3, 4, 4), np.uint8), label=7))
>>> images, labels = read_records(path, "lmdb")
>>> images.shape, labels.tolist()
((1, 3, 4, 4), [7])
"""
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..proto import datum_from_array, pb
from ..errors import DlbhcError
from ..fileio import partial_path, remove_path as _remove, remove_stale_partials  # noqa: F401
from .records import decode_datum

BACKENDS = ("leveldb", "lmdb")
KEY_DIGITS = 8  # convert_imageset's caffe::format_int(line_id, 8)
BATCH_RECORDS = 1000  # records per write batch (convert_imageset commits every 1000)
BATCH_BYTES = 64 << 20  # ...or sooner, once a batch holds this many bytes
LMDB_INITIAL_MAP = 1 << 30  # grown by doubling when full, as Caffe's LMDB writer does


class DatabaseError(DlbhcError):
    """A database that cannot be opened, read or written; names the path."""


def check_backend(backend):
    """'leveldb' or 'lmdb' (any case); raises for anything else."""
    name = str(backend).lower()
    if name not in BACKENDS:
        raise DatabaseError(f"unknown database backend {backend!r}; expected one of {BACKENDS}")
    return name


def detect_backend(path):
    """'lmdb' or 'leveldb' from the files in the database folder `path`."""
    path = Path(path)
    if (path / "data.mdb").is_file():
        return "lmdb"
    if (path / "CURRENT").is_file():
        return "leveldb"
    raise DatabaseError(f"{path}: neither an LMDB (data.mdb) nor a LevelDB (CURRENT) folder")


def record_key(index, digits=KEY_DIGITS):
    """The key of record number `index`: zero-padded decimal, as bytes."""
    return str(index).zfill(digits).encode("ascii")


def replace_path(partial, target):
    """Move the completed `partial` to `target`, replacing what was there."""
    partial, target = Path(partial), Path(target)
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        _remove(old)
        os.rename(target, old)
        os.rename(partial, target)
        _remove(old)
    else:
        os.rename(partial, target)


# ---------------------------------------------------------------- writing

class DatabaseWriter:
    """Writes Datum records to a new LevelDB or LMDB at `path`, whole or not at all.

    `add(datum)` gives the next zero-padded key; records are committed in batches, by a writer
    thread while the caller prepares the next batch (`flush()` hands one over); `close()`
    (or leaving the `with` block normally) renames the finished database to `path`. Leaving on an
    exception, or `abort()`, removes it. An existing `path` is refused unless `overwrite`.
    """

    def __init__(self, path, backend="leveldb", overwrite=False, key_digits=KEY_DIGITS,
                 batch_records=BATCH_RECORDS, batch_bytes=BATCH_BYTES, map_size=None, log=print):
        self.path = Path(path)
        self.backend = check_backend(backend)
        self.key_digits = int(key_digits)
        self.batch_records = int(batch_records)
        self.batch_bytes = int(batch_bytes)
        self.count = 0
        self.bytes = 0
        if (self.path.exists() or self.path.is_symlink()) and not overwrite:
            raise DatabaseError(f"{self.path} exists; pass --force (overwrite=True) to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self.path, log=log)
        self._partial = partial_path(self.path)
        _remove(self._partial)
        self._batch = []
        self._batch_size = 0
        self._closed = False
        self._pending = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-writer")
        if self.backend == "leveldb":
            import plyvel  # noqa: PLC0415

            # Caffe's own LevelDB options (db_leveldb.cpp), with snappy compression as its default.
            self._db = plyvel.DB(str(self._partial), create_if_missing=True, error_if_exists=True,
                                 write_buffer_size=256 << 20, block_size=65536,
                                 max_open_files=100)
        else:
            import lmdb  # noqa: PLC0415

            self._map_size = int(map_size or LMDB_INITIAL_MAP)
            self._db = lmdb.open(str(self._partial), map_size=self._map_size, subdir=True,
                                 meminit=False, sync=False, metasync=False)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def add(self, datum):
        """Append one record (a Datum or its serialized bytes) under the next key."""
        if self._closed:
            raise DatabaseError(f"{self.path}: writer is closed")
        value = datum if isinstance(datum, bytes) else datum.SerializeToString()
        if self.count >= 10 ** self.key_digits:
            raise DatabaseError(f"{self.path}: more than 10**{self.key_digits} records; "
                                "raise key_digits")
        self._batch.append((record_key(self.count, self.key_digits), value))
        self._batch_size += len(value)
        self.count += 1
        self.bytes += len(value)
        if len(self._batch) >= self.batch_records or self._batch_size >= self.batch_bytes:
            self.flush()

    def flush(self):
        """Hand the current batch to the writer thread (after the previous one is committed)."""
        if not self._batch:
            return
        batch, self._batch, self._batch_size = self._batch, [], 0
        self._wait()
        self._pending = self._thread.submit(self._commit, batch)

    def _wait(self):
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # re-raises the writer thread's error here

    def _commit(self, batch):
        # Runs in the writer thread, overlapping the caller's work on the next batch (plyvel
        # and py-lmdb release the GIL while they write).
        if self.backend == "leveldb":
            with self._db.write_batch() as write:
                for key, value in batch:
                    write.put(key, value)
            return
        import lmdb  # noqa: PLC0415

        while True:
            try:
                with self._db.begin(write=True) as txn:
                    for key, value in batch:
                        txn.put(key, value, append=True)
                return
            except lmdb.MapFullError:
                self._map_size *= 2
                self._db.set_mapsize(self._map_size)

    def close(self):
        """Commit what is left and move the finished database to its name."""
        if self._closed:
            return self.path
        try:
            self.flush()
            self._wait()
            if self.backend == "lmdb":
                self._db.sync(True)
            self._db.close()
            self._thread.shutdown()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        replace_path(self._partial, self.path)
        return self.path

    def abort(self):
        """Drop everything written; the database's name is left as it was."""
        if self._closed:
            return
        self._closed = True
        try:
            try:
                self._wait()
            except Exception:  # noqa: BLE001 (the batch is being dropped anyway)
                pass
            self._thread.shutdown()
            self._db.close()
        finally:
            _remove(self._partial)


def write_records(path, records, backend="leveldb", overwrite=False):
    """Write an iterable of Datum (or (C x H x W uint8, label) pairs) to a new database.

    Returns the number of records written.
    """
    with DatabaseWriter(path, backend, overwrite=overwrite, log=lambda *_: None) as db:
        for record in records:
            db.add(record if isinstance(record, (pb.Datum, bytes)) else datum_from_array(*record))
    return db.count


# ---------------------------------------------------------------- reading

# The one opener lives in dbread (it imports this module's errors, hence the late import).
from .dbread import check_records, count_records, open_db  # noqa: E402,F401


def read_records(path, backend=None, limit=None):
    """All records of a small database as (images N x C x H x W uint8, labels int64 N).

    Raw and encoded (PNG/JPEG) records are both decoded; every record must have one shape.
    """
    images, labels = [], []
    iterator = open_db(path, backend)
    try:
        for key, datum in iterator:
            if limit is not None and len(images) >= limit:
                break
            image = decode_datum(datum)
            if images and image.shape != images[0].shape:
                raise DatabaseError(f"{path}: record {key} has shape {image.shape}, "
                                    f"the first has {images[0].shape}")
            images.append(image)
            labels.append(datum.label)
    finally:
        iterator.close()
    if not images:
        return np.zeros((0, 0, 0, 0), np.uint8), np.zeros(0, np.int64)
    return np.stack(images), np.asarray(labels, dtype=np.int64)
