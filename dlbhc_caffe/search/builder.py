"""Indexes of any size in bounded memory: streaming, resumable writes, shards and their merge.

:class:`IndexWriter` lays an index file out for every row it will hold (the image list's
length is known before encoding starts; unused room stays a hole in a sparse file), writes each
batch of rows into place and then rewrites the header, whose ``ntotal`` is the commit: after a
kill the file is a valid index of the rows committed so far, and its ``build`` entry says how far
the list was read, so a rerun continues from there. Memory holds one batch, whatever the size.

A build writes ``OUT.partial`` and renames it to ``OUT`` when the list is done, so an existing
index is replaced only by a finished one. Row ids are the images' positions in the list: the
index of shard I/N (the I-th of N consecutive slices) holds the ids of its slice, and
:func:`merge` of the N shards gives the index built in one go (codes, ids, paths, labels, fc7
and order).

>>> import numpy as np, tempfile
>>> from dlbhc_caffe.search import load_index
>>> path = tempfile.mkdtemp() + "/toy.index"
>>> writer = IndexWriter.create(path, bits=3, capacity=2, path_capacity=2, fc7_dim=1,
...                             labels=True, build={"total": 2})
>>> writer.append(np.array([[1, 0, 1]]), ids=[0], paths=["a"], labels=[7], fc7=[[0.5]], done=1)
>>> load_index(path).ntotal, load_index(path).build["done"]
(1, 1)
"""
import hashlib
import os
from pathlib import Path

import numpy as np

from .. import hamming
from ..errors import DlbhcError
from . import index as fmt
from .hashindex import check_fc7_dtype

HEADER_RESERVE = 1 << 16  # the header is rewritten in place at every commit


def list_key(paths, labels):
    """A digest of an image list (paths and labels): a resumed build must read the same list."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.fsencode(path) + b"\0")
    if labels is not None:
        digest.update(np.asarray(labels, "<i8").tobytes())
    return digest.hexdigest()


def shard_range(total, shard):
    """The list positions [start, stop) of shard ``(i, n)`` (1-based i): consecutive slices."""
    i, n = shard
    return total * (i - 1) // n, total * i // n


def parse_shard(text):
    """``I/N`` (1 <= I <= N) as (I, N)."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise DlbhcError(f"--shard must be I/N, e.g. 1/4, got {text!r}") from None
    if not 1 <= i <= n:
        raise DlbhcError(f"--shard {text}: I must be in 1..N (the first shard is 1/{n})")
    return i, n


class IndexWriter:
    """Writes an index file row batch by row batch (see the module docstring)."""

    def __init__(self, path, header, fd):
        self.path, self.header, self.fd = Path(path), header, fd
        self.kinds = fmt.dtypes(header["fc7_dtype"])

    @classmethod
    def create(cls, path, bits, capacity, path_capacity, fc7_dim=None, fc7_dtype="float32",
               labels=False, meta=None, build=None):
        """A new file at ``path`` with room for ``capacity`` rows and ``path_capacity`` bytes of
        paths (replaced if it exists)."""
        check_fc7_dtype(fc7_dtype)
        words = (bits + 63) // 64
        header = {"format": "dlbhc-caffe hash index", "bits": int(bits), "ntotal": 0,
                  "words": words, "fc7_dim": fc7_dim if fc7_dim else None,
                  "fc7_dtype": fc7_dtype, "labels": bool(labels), "meta": dict(meta or {}),
                  "sections": {}, "build": dict(build or {}, done=0, skipped=0, complete=False)}
        kinds = fmt.dtypes(fc7_dtype)
        widths = {"codes": words, "ids": 1, "labels": 1, "fc7": fc7_dim or 0,
                  "path_offsets": 1, "path_bytes": 1}
        offset = HEADER_RESERVE
        header["capacity"] = {}
        for name in fmt.section_names(labels, bool(fc7_dim)):
            rows = path_capacity if name == "path_bytes" else capacity + (name == "path_offsets")
            room = rows * widths[name] * kinds[name].itemsize
            header["sections"][name] = [offset, 0]
            header["capacity"][name] = room
            offset = fmt.aligned(offset + room)
        header["sections"]["path_offsets"][1] = 8  # the leading 0
        header["file_size"] = offset
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        os.ftruncate(fd, offset)  # a sparse file: room costs no disk until written
        writer = cls(path, header, fd)
        os.pwrite(fd, np.zeros(1, "<i8").tobytes(), header["sections"]["path_offsets"][0])
        writer._commit()
        return writer

    @classmethod
    def resume(cls, path):
        """Reopen an unfinished build at ``path`` to append to it."""
        path = Path(path)
        header = fmt.read_header(path)
        if "capacity" not in header or (header.get("build") or {}).get("complete", True):
            raise DlbhcError(f"{path}: not an unfinished streaming build")
        return cls(path, header, os.open(path, os.O_RDWR))

    # ------------------------------------------------------------ state

    @property
    def ntotal(self):
        return int(self.header["ntotal"])

    @property
    def build(self):
        return self.header["build"]

    def _end(self, name):
        offset, nbytes = self.header["sections"][name]
        return offset + nbytes

    def _put(self, name, array):
        array = np.ascontiguousarray(array, self.kinds[name])
        data = memoryview(array.reshape(-1)).cast("B") if array.size else b""
        offset, nbytes = self.header["sections"][name]
        if nbytes + len(data) > self.header["capacity"][name]:
            raise DlbhcError(f"{self.path}: section '{name}' is full (the build was laid out "
                             f"for fewer rows)")
        os.pwrite(self.fd, data, offset + nbytes)
        self.header["sections"][name][1] = nbytes + len(data)

    def _commit(self):
        prefix = fmt.encode_header(self.header)
        if len(prefix) > HEADER_RESERVE:
            raise DlbhcError(f"{self.path}: the index header outgrew its {HEADER_RESERVE} bytes "
                             f"(meta too large)")
        os.fdatasync(self.fd)  # rows first, then the header that makes them part of the index
        os.pwrite(self.fd, prefix, 0)

    # ------------------------------------------------------------ writing

    def append(self, codes, ids, paths, labels=None, fc7=None, done=None, skipped=0):
        """Add rows (codes 0/1 or packed, with their ids, paths, labels and fc7) and commit;
        ``done``: how many list positions are now consumed, ``skipped``: how many more were
        unreadable."""
        packed = hamming.as_packed(np.asarray(codes) if len(codes) else
                                   np.zeros((0, self.header["words"]), np.uint64), "codes")[0]
        n = len(packed)
        encoded = [os.fsencode(p) if not isinstance(p, bytes) else p for p in paths]
        if len(ids) != n or len(encoded) != n or (self.header["labels"] and len(labels) != n):
            raise DlbhcError("append: one id, path (and label) per code")
        if self.header["fc7_dim"] and n:
            fc7 = np.asarray(fc7)
            if fc7.shape != (n, self.header["fc7_dim"]) or not np.all(np.isfinite(fc7)):
                raise DlbhcError(f"append: fc7 must be {n} x {self.header['fc7_dim']} finite "
                                 f"values, got shape {fc7.shape}")
        if n:
            self._put("codes", packed)
            self._put("ids", ids)
            if self.header["labels"]:
                self._put("labels", labels)
            if self.header["fc7_dim"]:
                self._put("fc7", fc7)
            lengths = np.array([len(p) for p in encoded], np.int64)
            base = self.header["sections"]["path_bytes"][1]
            self._put("path_bytes", np.frombuffer(b"".join(encoded), np.uint8))
            self._put("path_offsets", base + np.cumsum(lengths))
        self.header["ntotal"] = self.ntotal + n
        self.build["done"] = self.build["done"] + n + skipped if done is None else int(done)
        self.build["skipped"] += int(skipped)
        self._commit()

    def finish(self):
        """Mark the build complete and close the file."""
        self.build["complete"] = True
        self._commit()
        self.close()

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------- merge

def _check_shards(shards, paths):
    first = shards[0]
    for index, path in zip(shards, paths):
        if index.build is not None and not index.build.get("complete"):
            raise DlbhcError(f"{path}: unfinished build ({index.build.get('done')} of "
                             f"{index.build.get('total')} images): finish it first (rerun index)")
        same = (index.bits, index.fc7_dim, index.fc7_dtype, index.labels is not None,
                (index.meta or {}).get("model"))
        if same != (first.bits, first.fc7_dim, first.fc7_dtype, first.labels is not None,
                    (first.meta or {}).get("model")):
            raise DlbhcError(f"{path}: another kind of index than {paths[0]} (bits, fc7, labels "
                             f"or model differ): shards must come from one model and list")
    keys = {(i.build or {}).get("list") for i in shards}
    numbered = [(i.build or {}).get("shard") for i in shards]
    if len(keys) == 1 and None not in numbered:
        n = numbered[0][1]
        got = sorted(s[0] for s in numbered)
        if got != list(range(1, n + 1)) or any(s[1] != n for s in numbered):
            raise DlbhcError(f"the shards given are {', '.join(f'{a}/{b}' for a, b in numbered)}"
                             f": give each of 1/{n} .. {n}/{n} once")


def merge(shard_paths, out, rows_per_step=None):
    """Join shard indexes into ``out`` (written as ``out``.partial, then renamed): rows in shard
    order (1/N first when the shards are numbered, else as given), streamed in steps of
    ``rows_per_step`` rows (default: about 64 MB of them)."""
    if not shard_paths:
        raise DlbhcError("merge: no shard indexes given")
    shards = [fmt.load_index(p) for p in shard_paths]
    _check_shards(shards, [str(p) for p in shard_paths])
    order = sorted(range(len(shards)),
                   key=lambda i: ((shards[i].build or {}).get("shard") or [i + 1])[0])
    shards = [shards[i] for i in order]
    ids = np.concatenate([s.ids for s in shards])
    if len(np.unique(ids)) != len(ids):
        raise DlbhcError("merge: the shards share ids (the same images twice?)")
    first = shards[0]
    row_bytes = 8 * first.words + 16 + (first.fc7_dim or 0) * np.dtype(first.fc7_dtype).itemsize
    rows_per_step = rows_per_step or max(1, (64 << 20) // row_bytes)
    meta = dict(first.meta or {})
    meta.pop("shard", None)
    build = {"list": (first.build or {}).get("list"),
             "total": sum((s.build or {}).get("total", s.ntotal) for s in shards)
             if (first.build or {}).get("shard") is None
             else (first.build or {}).get("total")}
    partial = Path(str(out) + ".partial")
    writer = IndexWriter.create(partial, first.bits, len(ids),
                                sum(len(s.path_bytes) for s in shards),
                                first.fc7_dim, first.fc7_dtype, first.labels is not None,
                                meta, build)
    try:
        for shard in shards:
            for a in range(0, shard.ntotal, rows_per_step):
                b = min(a + rows_per_step, shard.ntotal)
                offsets = shard.path_offsets
                data = bytes(shard.path_bytes[offsets[a]:offsets[b]])
                paths = [data[offsets[r] - offsets[a]:offsets[r + 1] - offsets[a]]
                         for r in range(a, b)]
                writer.append(shard.packed[a:b], shard.ids[a:b], paths,
                              None if shard.labels is None else shard.labels[a:b],
                              None if shard.fc7 is None else shard.fc7[a:b], skipped=0)
        writer.build["skipped"] = sum((s.build or {}).get("skipped", 0) for s in shards)
        writer.build["done"] = build["total"]
        writer.finish()
    finally:
        writer.close()
    os.replace(partial, out)
    return Path(out)

