"""The index: packed hash codes, fc7 features, ids, paths and labels, searched by Hamming ranking.

A faiss-shaped surface (``d``, ``ntotal``, ``add``, ``search``, ``range_search``, ``reset``) over
:mod:`dlbhc_caffe.hamming`: ``search`` ranks the whole index by Hamming distance with ties in
index order (the original's stable sort) and returns the top k; ``range_search`` returns every item
within Hamming distance r (``distance <= r``; faiss's binary range_search is ``< r``).

On disk (``.index``), little-endian::

    magic "DLBHCIDX" | uint32 version | uint32 header length | header (JSON) | sections

The JSON header gives bits, ntotal, the words per code, the fc7 width, whether labels are known,
free-form ``meta`` (the model that made the codes), and each section's offset and length; the
sections are codes (uint64 words, as :func:`dlbhc_caffe.hamming.pack_codes` packs them), ids
(int64), labels (int64), fc7 (float32 rows) and paths (int64 offsets + UTF-8 bytes), each
64-byte aligned so that :meth:`HashIndex.load` memory-maps them read-only without copying. Loading
checks the magic, the version, and every section against the file's length: a truncated file is
an :class:`IndexFormatError` that says how many bytes are missing.

>>> import numpy as np
>>> index = HashIndex(bits=4)
>>> index.add([[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], labels=[0, 1, 0])
>>> distances, ids = index.search([[1, 0, 0, 1]], k=2)
>>> distances.tolist(), ids.tolist()
([[1, 2]], [[2, 0]])
"""
import json
import math
import numbers
import os
from pathlib import Path

import numpy as np

from .. import hamming
from ..fileio import atomic_path
from ..errors import DlbhcError

MAGIC = b"DLBHCIDX"
VERSION = 1
ALIGN = 64
_PREFIX = len(MAGIC) + 8  # magic, version, header length
# section name -> little-endian dtype
_DTYPES = {"codes": "<u8", "ids": "<i8", "labels": "<i8", "fc7": "<f4", "path_offsets": "<i8",
           "path_bytes": "u1"}


class IndexFormatError(DlbhcError):
    """An index file that cannot be read: not an index, another version, or truncated."""


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


class HashIndex:
    """Hash codes of a database, with what each item is, searched by Hamming distance.

    bits: the code length (``d``, as faiss's binary indexes count it).
    meta: a JSON-serialisable dict saved with the index (e.g. the model that made the codes).

    Rows are kept in the order added. ``ids`` default to the row numbers; ``paths`` to "";
    ``labels`` and ``fc7`` are optional but all-or-none: once the index holds them every add must
    bring them, and an index without them cannot take them later.
    """

    def __init__(self, bits, meta=None):
        if not _is_int(bits) or bits < 1:
            raise ValueError(f"bits must be a positive integer, got {bits!r}")
        self.bits = int(bits)
        self.meta = dict(meta or {})
        self.reset()

    # ------------------------------------------------------------ the faiss surface

    @property
    def d(self):
        """The code length in bits (faiss's ``d`` for binary indexes)."""
        return self.bits

    @property
    def words(self):
        """uint64 words per packed code."""
        return (self.bits + 63) // 64

    @property
    def ntotal(self):
        return int(self._packed.shape[0])

    def __len__(self):
        return self.ntotal

    def __repr__(self):
        extra = "".join([f", fc7={self.fc7_dim}" if self._fc7 is not None else "",
                         ", labels" if self._labels is not None else ""])
        return f"HashIndex(bits={self.bits}, ntotal={self.ntotal}{extra})"

    def reset(self):
        """Remove every item (bits and meta stay)."""
        self._packed = np.zeros((0, self.words), np.uint64)
        self._ids = np.zeros(0, np.int64)
        self._labels = None
        self._fc7 = None
        self._path_offsets = np.zeros(1, np.int64)
        self._path_bytes = np.zeros(0, np.uint8)
        self._row_of_id = None
        self.path = None  # the file this index was loaded from, if any

    def add(self, codes, fc7=None, ids=None, paths=None, labels=None):
        """Append items: codes (n x bits, 0/1), and per item optionally fc7 (n x D), ids, paths and
        labels. Everything is checked before anything is added.
        """
        packed = self._pack(codes, "codes")
        n = packed.shape[0]
        fc7 = self._check_fc7(fc7, n)
        ids = self._check_ids(ids, n)
        labels = self._check_labels(labels, n)
        encoded = self._check_paths(paths, n)
        if n == 0:
            return
        self._packed = np.concatenate([self._packed, packed])
        self._ids = np.concatenate([self._ids, ids])
        if labels is not None:
            base = self._labels if self._labels is not None else np.zeros(0, np.int64)
            self._labels = np.concatenate([base, labels])
        if fc7 is not None:
            base = self._fc7 if self._fc7 is not None else np.zeros((0, fc7.shape[1]), np.float32)
            self._fc7 = np.concatenate([base, fc7])
        lengths = np.array([len(p) for p in encoded], np.int64)
        offsets = self._path_offsets[-1] + np.cumsum(lengths)
        self._path_offsets = np.concatenate([self._path_offsets, offsets])
        self._path_bytes = np.concatenate(
            [self._path_bytes, np.frombuffer(b"".join(encoded), np.uint8)])
        self._row_of_id = None

    def search(self, queries, k):
        """(distances int32 [nq, k], ids int64 [nq, k]): the k nearest items of each query by
        Hamming distance, ties in index order. ``k`` must not exceed ``ntotal``.
        """
        rows, distances = self.rank(queries, k)
        return distances.astype(np.int32), self._ids[rows]

    def range_search(self, queries, r):
        """Every item within Hamming distance r (``<= r``) of each query, faiss-style:
        ``(lims, distances, ids)``; query i's results are ``[lims[i]:lims[i + 1]]``, ordered by
        distance and then index order.
        """
        lims, rows, distances = self.within(queries, r)
        return lims, distances.astype(np.int32), self._ids[rows]

    # ------------------------------------------------------------ rows (for composites)

    def rank(self, queries, k):
        """(rows int64 [nq, k], distances uint16 [nq, k]) of the Hamming ranking's top k."""
        packed = self._check_queries(queries)
        return hamming.rank(packed, self._packed, self.check_k(k))

    def check_k(self, k):
        """``k`` as an int, if it is a positive integer no larger than ``ntotal``."""
        if not _is_int(k) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if k > self.ntotal:
            raise ValueError(f"k={k} is larger than the index ({self.ntotal} items): ask for at "
                             f"most {self.ntotal}")
        return int(k)

    def within(self, queries, r):
        """(lims, rows, distances) of every item within Hamming distance r (``<= r``)."""
        packed = self._check_queries(queries)
        if not _is_int(r) or r < 0:
            raise ValueError(f"r must be a non-negative integer (a Hamming distance), got {r!r}")
        return hamming.radius(packed, self._packed, int(r))

    def hamming_to(self, queries, rows):
        """Hamming distances (uint16 [nq, len(rows)]) from each query to the given rows."""
        packed = self._check_queries(queries)
        rows = np.asarray(rows, np.int64).ravel()
        return hamming.hamming_distances(packed, np.ascontiguousarray(self._packed[rows]))

    def rows_of(self, ids):
        """Row numbers of the given ids (each must be in the index)."""
        ids = np.asarray(ids, np.int64)
        if self._row_of_id is None:
            order = np.argsort(self._ids, kind="stable")
            self._row_of_id = (self._ids[order], order)
        sorted_ids, order = self._row_of_id
        if len(sorted_ids) == 0:
            raise KeyError("the index is empty: it has no ids")
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        missing = sorted_ids[pos] != ids
        if np.any(missing):
            raise KeyError(f"id {int(ids[missing].ravel()[0])} is not in the index")
        return order[pos]

    # ------------------------------------------------------------ contents

    @property
    def packed(self):
        """Codes packed by :func:`dlbhc_caffe.hamming.pack_codes`, uint64 [ntotal, words]."""
        return self._packed

    @property
    def codes(self):
        """Codes as 0/1 uint8 [ntotal, bits]."""
        if self.ntotal == 0:
            return np.zeros((0, self.bits), np.uint8)
        return hamming.unpack_codes(np.ascontiguousarray(self._packed), self.bits)

    @property
    def ids(self):
        return self._ids

    @property
    def labels(self):
        """int64 [ntotal], or None when the items' labels are not known."""
        return self._labels

    @property
    def fc7(self):
        """float32 [ntotal, D], or None when the index holds no fc7 features."""
        return self._fc7

    @property
    def fc7_dim(self):
        return None if self._fc7 is None else int(self._fc7.shape[1])

    @property
    def paths(self):
        """Every item's path, as a list of str."""
        return self.paths_of(np.arange(self.ntotal))

    def paths_of(self, rows):
        """The paths of the given rows (a list of str)."""
        data = self._path_bytes
        offsets = self._path_offsets
        return [bytes(data[offsets[r]:offsets[r + 1]]).decode("utf-8")
                for r in np.asarray(rows, np.int64).ravel()]

    # ------------------------------------------------------------ checks

    def _pack(self, codes, name):
        arr = np.asarray(codes)
        if arr.ndim == 1 and arr.dtype != np.uint64:
            arr = arr.reshape(1, -1)  # a single code is a batch of one
        if arr.ndim == 2 and arr.shape[0] == 0:
            if arr.shape[1] not in (0, self.bits):
                raise ValueError(f"{name} have {arr.shape[1]} bits per code but the index holds "
                                 f"{self.bits}-bit codes")
            return np.zeros((0, self.words), np.uint64)
        packed, bits = hamming.as_packed(arr, name)
        if bits is not None and bits != self.bits:
            raise ValueError(f"{name} have {bits} bits per code but the index holds "
                             f"{self.bits}-bit codes: they must come from the same model")
        if bits is None and packed.shape[1] != self.words:
            raise ValueError(f"packed {name} have {packed.shape[1]} word(s) per code but the "
                             f"index's {self.bits}-bit codes take {self.words}")
        return packed

    def _check_queries(self, queries):
        if self.ntotal == 0:
            raise ValueError("the index is empty (ntotal = 0): add database codes before "
                             "searching")
        packed = self._pack(queries, "queries")
        if packed.shape[0] == 0:
            raise ValueError("no queries were given (0 codes)")
        return packed

    def _check_fc7(self, fc7, n):
        if fc7 is None:
            if self._fc7 is not None:
                raise ValueError(f"the index holds fc7 features ({self.fc7_dim} wide): add fc7 "
                                 f"for the {n} new items too")
            return None
        fc7 = np.asarray(fc7, np.float32)
        if fc7.ndim != 2 or fc7.shape[0] != n:
            raise ValueError(f"fc7 must be one row per code ({n} x D), got shape {fc7.shape}")
        if self._fc7 is None and self.ntotal > 0:
            raise ValueError(f"the index's {self.ntotal} items have no fc7 features, so new items "
                             f"cannot bring them; build a new index with fc7 for all items")
        if self._fc7 is not None and fc7.shape[1] != self.fc7_dim:
            raise ValueError(f"fc7 rows are {fc7.shape[1]} wide but the index's are "
                             f"{self.fc7_dim}: they must come from the same model")
        if not np.all(np.isfinite(fc7)):
            raise ValueError("fc7 holds NaN or infinite values")
        return fc7

    def _check_ids(self, ids, n):
        if ids is None:
            start = int(self._ids.max()) + 1 if self.ntotal else 0
            return np.arange(start, start + n, dtype=np.int64)
        ids = np.asarray(ids)
        if ids.ndim != 1 or len(ids) != n or (n and ids.dtype.kind not in "iu"):
            raise ValueError(f"ids must be {n} integers (one per code), got {ids.dtype} of shape "
                             f"{ids.shape}")
        ids = ids.astype(np.int64)
        everything = np.concatenate([self._ids, ids])
        if len(np.unique(everything)) != len(everything):
            raise ValueError("ids must be unique: some given ids repeat or are already in the "
                             "index")
        return ids

    def _check_labels(self, labels, n):
        if labels is None:
            if self._labels is not None:
                raise ValueError(f"the index holds labels: give labels for the {n} new items too")
            return None
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != n:
            raise ValueError(f"{labels.size} labels for {n} codes: give one label per code")
        if n and labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        if self._labels is None and self.ntotal > 0:
            raise ValueError(f"the index's {self.ntotal} items have no labels, so new items "
                             f"cannot bring them")
        return labels.astype(np.int64)

    def _check_paths(self, paths, n):
        if paths is None:
            return [b""] * n
        paths = [os.fspath(p) for p in paths]
        if len(paths) != n:
            raise ValueError(f"{len(paths)} paths for {n} codes: give one path per code")
        return [p.encode("utf-8") for p in paths]

    # ------------------------------------------------------------ disk

    def save(self, path):
        """Write the index to ``path`` (whole or not at all: a temporary file, renamed)."""
        return save_index(self, path)

    @classmethod
    def load(cls, path, mmap=True):
        """Read an index file; ``mmap`` maps its sections read-only instead of reading them."""
        return load_index(path, mmap=mmap)


def _aligned(offset):
    return (offset + ALIGN - 1) // ALIGN * ALIGN


def _sections(index):
    arrays = {"codes": index._packed, "ids": index._ids}
    if index._labels is not None:
        arrays["labels"] = index._labels
    if index._fc7 is not None:
        arrays["fc7"] = index._fc7
    arrays["path_offsets"] = index._path_offsets
    arrays["path_bytes"] = index._path_bytes
    return {name: np.ascontiguousarray(a, dtype=_DTYPES[name]) for name, a in arrays.items()}


def save_index(index, path):
    """Write ``index`` to ``path`` atomically; returns the path."""
    path = Path(path)
    arrays = _sections(index)
    header = {"format": "dlbhc-caffe hash index", "bits": index.bits, "ntotal": index.ntotal,
              "words": index.words, "fc7_dim": index.fc7_dim,
              "labels": index._labels is not None, "meta": index.meta, "sections": {}}
    # The header holds the offsets, which depend on the header's length: place the sections after
    # a header padded to a generous fixed size, then fill in the numbers.
    body = json.dumps(header).encode()
    reserve = _aligned(_PREFIX + len(body) + 64 * (len(arrays) + 2) + 64)
    offset = reserve
    for name, array in arrays.items():
        header["sections"][name] = [offset, int(array.nbytes)]
        offset = _aligned(offset + array.nbytes)
    header["file_size"] = offset
    body = json.dumps(header).encode()
    if _PREFIX + len(body) > reserve:  # cannot happen: the reserve covers every number we add
        raise AssertionError("index header outgrew its reserve")
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(MAGIC + np.array([VERSION, len(body)], "<u4").tobytes() + body)
        for name, array in arrays.items():
            start = header["sections"][name][0]
            out.write(b"\0" * (start - out.tell()))
            if array.nbytes:
                out.write(memoryview(array).cast("B"))
        out.write(b"\0" * (offset - out.tell()))
    return path


def _read_header(path, size):
    if size < _PREFIX:
        raise IndexFormatError(f"{path}: {size} bytes is too short for a hash index "
                               f"(truncated or not an index)")
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX)
        if prefix[:len(MAGIC)] != MAGIC:
            raise IndexFormatError(f"{path}: not a dlbhc-caffe hash index (starts with "
                                   f"{prefix[:len(MAGIC)]!r}, expected {MAGIC!r})")
        version, length = np.frombuffer(prefix[len(MAGIC):], "<u4")
        if version != VERSION:
            raise IndexFormatError(f"{path}: index format version {version}; this dlbhc-caffe "
                                   f"reads version {VERSION}"
                                   + (" (rebuild the index, or upgrade dlbhc-caffe)"
                                      if version > VERSION else ""))
        if _PREFIX + int(length) > size:
            raise IndexFormatError(f"{path}: truncated: the file is {size} bytes, its header "
                                   f"alone needs {_PREFIX + int(length)}")
        try:
            header = json.loads(f.read(int(length)).decode())
        except (ValueError, RecursionError) as err:
            raise IndexFormatError(f"{path}: corrupt header ({err})") from None
    return header


def load_index(path, mmap=True):
    """Read a hash index written by :meth:`HashIndex.save`.

    With ``mmap`` (the default) the sections are memory-mapped read-only (the index can still be
    added to: that copies into memory). Raises FileNotFoundError for a missing file and
    :class:`IndexFormatError` for anything else wrong with it, truncation included.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such index file")
    size = path.stat().st_size
    header = _read_header(path, size)
    bits, ntotal, words, sections, fc7_dim, expected_size = check_header(path, header)
    if expected_size > size:
        raise IndexFormatError(f"{path}: truncated: the file is {size} bytes, its header says "
                               f"{expected_size} ({expected_size - size} missing)")
    if expected_size != size:
        raise IndexFormatError(f"{path}: the file is {size} bytes, its header says "
                               f"{expected_size} (trailing data: corrupt)")
    shapes = {"codes": (ntotal, words), "ids": (ntotal,), "labels": (ntotal,),
              "fc7": (ntotal, fc7_dim or 0), "path_offsets": (ntotal + 1,)}
    arrays = {}
    for name, (offset, nbytes) in sections.items():
        if name not in _DTYPES:
            raise IndexFormatError(f"{path}: unknown section '{name}'")
        dtype = np.dtype(_DTYPES[name])
        shape = shapes.get(name, (nbytes // dtype.itemsize,))
        want = math.prod(shape) * dtype.itemsize
        if nbytes != want or offset < _PREFIX or offset + nbytes > size:
            raise IndexFormatError(f"{path}: section '{name}' ({nbytes} bytes at {offset}) does "
                                   f"not fit {ntotal} items or the file's {size} bytes")
        if want == 0:
            arrays[name] = np.zeros(shape, dtype)
        elif mmap:
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        else:
            with open(path, "rb") as f:
                f.seek(offset)
                arrays[name] = np.frombuffer(f.read(nbytes), dtype).reshape(shape)
    for name in ("codes", "ids", "path_offsets", "path_bytes"):
        if name not in arrays:
            raise IndexFormatError(f"{path}: section '{name}' is missing")
    check_sections(path, bits, arrays)
    offsets = arrays["path_offsets"]
    index = HashIndex(bits, meta=header.get("meta"))
    index._packed = arrays["codes"]
    index._ids = arrays["ids"]
    index._labels = arrays.get("labels")
    index._fc7 = arrays.get("fc7")
    index._path_offsets = offsets
    index._path_bytes = arrays["path_bytes"]
    index.path = path
    return index


# The loader's checks of a file's header and sections (they raise this module's IndexFormatError).
from .index_check import check_header, check_sections  # noqa: E402
