"""Reading LevelDB and LMDB databases of Datum records: the one opener every reader uses (the
dataset tools, the checks before real Caffe trains, the torch backend's Data layer).

- Opened read-only. An LMDB's data.mdb is checked against its header before any page is read:
  a truncated file would otherwise be a SIGBUS that kills the process without a word.
- A LevelDB held by another process (LevelDB admits one at a time) is named as such.
- Every record is checked as it is read (`check_datum`): a Datum at all, its byte count against
  its shape, the shape against the first record's, the label against the number of classes;
  each error names the database and the key.
- Handles are shared within a process and counted (`acquire` / `release`): plyvel admits one
  LevelDB handle per process, py-lmdb one environment per path.
"""
import threading
from pathlib import Path

from ..proto import pb
from .db import DatabaseError, check_backend, detect_backend

INT_MAX = 2 ** 31 - 1  # Caffe's blob counts are int


def _check_readable(path, backend):
    path = Path(path)
    if not path.is_dir():
        raise DatabaseError(f"{path}: no such database folder")
    return path, check_backend(backend) if backend else detect_backend(path)


def _check_lmdb_size(env, path):
    """Raise unless data.mdb is as long as its header's last page says (else: SIGBUS)."""
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    have = (Path(path) / "data.mdb").stat().st_size
    if have < need:
        raise DatabaseError(f"{path}: truncated LMDB: data.mdb is {have} bytes, its header says "
                            f"{need}; prepare the dataset again")


def _open(path, backend):
    if backend == "lmdb":
        import lmdb  # noqa: PLC0415

        try:
            env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True,
                            max_readers=126)
        except lmdb.Error as err:
            raise DatabaseError(f"{path}: cannot open as LMDB ({err})") from None
        try:
            _check_lmdb_size(env, path)
        except BaseException:
            env.close()
            raise
        return env
    import plyvel  # noqa: PLC0415

    try:
        return plyvel.DB(str(path), create_if_missing=False)
    except (plyvel.Error, OSError) as err:
        if "lock" in str(err).lower():
            raise DatabaseError(f"{path}: the LevelDB is open in another process (LevelDB admits "
                                f"one at a time); wait for it, or copy the database") from None
        raise DatabaseError(f"{path}: cannot open as LevelDB ({err})") from None


_shared = {}
_shared_lock = threading.Lock()


def acquire(path, backend=None):
    """(key, handle): a process-wide shared, counted read handle of a database; give the key to
    `release` when done."""
    path, backend = _check_readable(path, backend)
    key = (backend, str(path.resolve()))
    with _shared_lock:
        entry = _shared.get(key)
        if entry is None:
            entry = _shared[key] = [_open(path, backend), 0]
        entry[1] += 1
        return key, entry[0]


def release(key):
    """Release a handle from `acquire`; the last release closes it."""
    with _shared_lock:
        entry = _shared.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            entry[0].close()
            del _shared[key]


def raw_items(handle, backend, path):
    """Iterate (key str, serialized value) over an acquired handle in key order; a read error
    (corruption) is a DatabaseError naming the database and the last good key."""
    key = None
    try:
        if backend == "lmdb":
            with handle.begin(buffers=False) as txn:
                cursor = txn.cursor()
                try:
                    for raw_key, value in cursor:
                        key = raw_key.decode("ascii", "replace")
                        yield key, value
                finally:
                    cursor.close()
        else:
            iterator = handle.iterator()
            try:
                for raw_key, value in iterator:
                    key = raw_key.decode("ascii", "replace")
                    yield key, value
            finally:
                iterator.close()
    except Exception as err:  # lmdb.Error, plyvel.Error: a corrupt database
        if isinstance(err, DatabaseError) or type(err).__module__.split(".")[0] not in (
                "lmdb", "plyvel"):
            raise
        after = f" after key {key!r}" if key is not None else ""
        raise DatabaseError(f"{path}: cannot read{after} ({type(err).__name__}: {err})") from None


def parse_datum(value, where):
    """A Datum from a record's bytes; `where` names the database and key in errors."""
    datum = pb.Datum()
    try:
        datum.ParseFromString(value)
    except Exception as err:  # protobuf's DecodeError, UnicodeDecodeError
        raise DatabaseError(f"{where}: not a Datum ({type(err).__name__}: {err})") from None
    return datum


def check_datum(datum, where, shape=None, classes=None):
    """The (C, H, W) of a raw Datum (None for an encoded one), after Caffe's checks and ours:
    positive dimensions within Caffe's int, pixels (bytes or floats) matching them, the shape
    `shape` when given (the first record's), a label in [0, classes) when `classes` is given."""
    if classes is not None and not 0 <= datum.label < classes:
        raise DatabaseError(f"{where}: label {datum.label} is outside 0..{classes - 1} "
                            f"({classes} classes)")
    if datum.encoded:
        return None
    own = (datum.channels, datum.height, datum.width)
    count = datum.channels * datum.height * datum.width
    if min(own) <= 0 or count > INT_MAX:
        raise DatabaseError(f"{where}: impossible shape {'x'.join(map(str, own))} (CxHxW)")
    held, unit = (len(datum.data), "bytes") if datum.data else (len(datum.float_data), "floats")
    if held != count:
        raise DatabaseError(f"{where}: a {'x'.join(map(str, own))} record needs {count} "
                            f"values, it holds {held} {unit}")
    if shape is not None and own != tuple(shape):
        raise DatabaseError(f"{where}: shape {'x'.join(map(str, own))}, the first record's is "
                            f"{'x'.join(map(str, shape))} (Caffe needs one shape per database)")
    return own


def open_db(path, backend=None):
    """Iterate (key str, Datum) over a database in key order (Caffe's Data layer order).

    `backend` is 'leveldb' or 'lmdb' (None: detected from the folder). The database is open only
    while the iteration runs (LevelDB admits one process at a time): exhaust or close the iterator.
    """
    path, backend = _check_readable(path, backend)
    return _iterate(path, backend)


def _iterate(path, backend):
    key, handle = acquire(path, backend)
    try:
        for name, value in raw_items(handle, backend, path):
            yield name, parse_datum(value, f"{path}: record {name}")
    finally:
        release(key)


def check_records(path, backend=None, classes=None):
    """Read every record of a database with `check_datum` (one shape for all, byte counts,
    labels in [0, classes)); returns (number of records, the first record's shape or None)."""
    n, first = 0, None
    for key, datum in open_db(path, backend):
        shape = check_datum(datum, f"{path}: record {key}", first, classes)
        first = first or shape
        n += 1
    return n, first


def count_records(path, backend=None):
    """The number of records in a database."""
    path, backend = _check_readable(path, backend)
    key, handle = acquire(path, backend)
    try:
        if backend == "lmdb":
            return handle.stat()["entries"]
        return sum(1 for _ in raw_items(handle, backend, path))
    finally:
        release(key)
