"""The in-memory core of the index: packed codes, ids, labels, fc7 and paths in growable arrays.

A faiss-shaped surface (``d``, ``ntotal``, ``add``, ``search``, ``range_search``, ``reset``) over
:mod:`dlbhc_caffe.hamming`: ``search`` ranks the whole index by Hamming distance with ties in
index order (the original's stable sort) and returns the top k; ``range_search`` returns every item
within Hamming distance r (``distance <= r``; faiss's binary range_search is ``< r``). Every search
returns faiss's order: ``(distances, ids)``, or ``(lims, distances, ids)``.

``add`` appends into arrays that grow by doubling (amortised O(1) per row, no re-concatenation
of what is already there); arrays memory-mapped from a file are copied into such an array on the
first add. fc7 is kept as float32 or float16 (``fc7_dtype``): half the memory and disk, and the
re-ranking reads only the candidates' rows.

>>> index = HashIndexCore(bits=4)
>>> index.add([[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], labels=[0, 1, 0])
>>> distances, ids = index.search([[1, 0, 0, 1]], k=2)
>>> distances.tolist(), ids.tolist()
([[1, 2]], [[2, 0]])
"""
import os

import numpy as np

from .. import hamming
from ..errors import DlbhcError
from .mih import MultiIndexHash

FC7_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
# radius searches use the multi-index tables (built once, kept until the next add) from this
# many query x item pairs; below it building them costs more than a linear scan
MIH_MIN_PAIRS = 1 << 24


class _Rows:
    """A growable array of rows: ``view`` is the filled part; ``append`` doubles the capacity
    when it runs out, so n appends of small batches cost O(total) copies, not O(n * total)."""

    def __init__(self, width, dtype, data=None):
        self.shape_tail = () if width is None else (width,)
        self.dtype = np.dtype(dtype)
        self.data = np.zeros((0,) + self.shape_tail, self.dtype) if data is None else data
        self.n = len(self.data)

    @property
    def view(self):
        return self.data[:self.n]

    def append(self, rows):
        need = self.n + len(rows)
        if need > len(self.data) or not self.data.flags.writeable:
            grown = np.empty((max(need, 2 * len(self.data), 16),) + self.shape_tail, self.dtype)
            grown[:self.n] = self.data[:self.n]
            self.data = grown
        self.data[self.n:need] = rows
        self.n = need


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_fc7_dtype(name):
    """The numpy dtype of an fc7 storage name (float32 or float16)."""
    if name not in FC7_DTYPES:
        raise DlbhcError(f"fc7 is stored as {' or '.join(FC7_DTYPES)}, not {name!r}")
    return FC7_DTYPES[name]


class HashIndexCore:
    """Hash codes of a database, with what each item is, searched by Hamming distance.

    bits: the code length (``d``, as faiss's binary indexes count it).
    meta: a JSON-serialisable dict saved with the index (e.g. the model that made the codes).
    fc7_dtype: "float32" (default) or "float16", how fc7 rows are kept and saved.

    Rows are kept in the order added. ``ids`` default to consecutive numbers after the largest
    id; ``paths`` to ""; ``labels`` and ``fc7`` are optional but all-or-none: once the index holds
    them every add must bring them, and an index without them cannot take them later.
    """

    def __init__(self, bits, meta=None, fc7_dtype="float32"):
        if not _is_int(bits) or bits < 1:
            raise DlbhcError(f"bits must be a positive integer, got {bits!r}")
        self.bits = int(bits)
        self.meta = dict(meta or {})
        self.fc7_dtype = check_fc7_dtype(fc7_dtype).name
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
        return self._codes.n

    def __len__(self):
        return self.ntotal

    def __repr__(self):
        extra = "".join([f", fc7={self.fc7_dim} {self.fc7_dtype}" if self._fc7 else "",
                         ", labels" if self._labels else ""])
        return f"HashIndex(bits={self.bits}, ntotal={self.ntotal}{extra})"

    def reset(self):
        """Remove every item (bits and meta stay)."""
        self._codes = _Rows(self.words, np.uint64)
        self._ids = _Rows(None, np.int64)
        self._labels = None
        self._fc7 = None
        self._path_offsets = _Rows(None, np.int64, np.zeros(1, np.int64))
        self._path_bytes = _Rows(None, np.uint8)
        self._row_of_id = None
        self._tables = None
        self._next_id = 0
        self.path = None  # the file this index was loaded from, if any
        self.build = None  # how far a streaming build got (see search.builder), if unfinished

    def adopt(self, codes, ids, labels, fc7, path_offsets, path_bytes):
        """Take arrays (e.g. memory-mapped from a file) as the index's contents, as they are."""
        self._codes = _Rows(self.words, np.uint64, codes)
        self._ids = _Rows(None, np.int64, ids)
        self._labels = None if labels is None else _Rows(None, np.int64, labels)
        self._fc7 = None if fc7 is None else _Rows(fc7.shape[1], fc7.dtype, fc7)
        self._path_offsets = _Rows(None, np.int64, path_offsets)
        self._path_bytes = _Rows(None, np.uint8, path_bytes)
        self._row_of_id = None
        self._tables = None
        self._next_id = int(ids.max()) + 1 if len(ids) else 0

    def add(self, codes, fc7=None, ids=None, paths=None, labels=None):
        """Append items: codes (n x bits, 0/1, or packed uint64), and per item optionally fc7
        (n x D), ids, paths and labels. Everything is checked before anything is added.
        """
        packed = self._pack(codes, "codes")
        n = packed.shape[0]
        fc7 = self._check_fc7(fc7, n)
        ids = self._check_ids(ids, n)
        labels = self._check_labels(labels, n)
        encoded = self._check_paths(paths, n)
        if n == 0:
            return
        self._codes.append(packed)
        self._ids.append(ids)
        if labels is not None:
            self._labels = self._labels or _Rows(None, np.int64)
            self._labels.append(labels)
        if fc7 is not None:
            self._fc7 = self._fc7 or _Rows(fc7.shape[1], self.fc7_dtype)
            self._fc7.append(fc7)
        lengths = np.array([len(p) for p in encoded], np.int64)
        self._path_offsets.append(self._path_offsets.view[-1] + np.cumsum(lengths))
        self._path_bytes.append(np.frombuffer(b"".join(encoded), np.uint8))
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        self._row_of_id = None
        self._tables = None

    def search(self, queries, k):
        """(distances int32 [nq, k], ids int64 [nq, k]): the k nearest items of each query by
        Hamming distance, ties in index order. ``k`` must not exceed ``ntotal``.
        """
        distances, rows = self.rank(queries, k)
        return distances.astype(np.int32), self.ids[rows]

    def range_search(self, queries, r):
        """Every item within Hamming distance r (``<= r``) of each query, faiss-style:
        ``(lims, distances, ids)``; query i's results are ``[lims[i]:lims[i + 1]]``, ordered by
        distance and then index order.
        """
        lims, distances, rows = self.within(queries, r)
        return lims, distances.astype(np.int32), self.ids[rows]

    # ------------------------------------------------------------ rows (for composites)

    def rank(self, queries, k):
        """(distances uint16 [nq, k], rows int64 [nq, k]) of the Hamming ranking's top k."""
        packed = self._check_queries(queries)
        return hamming.rank(packed, self.packed, self.check_k(k))

    def check_k(self, k):
        """``k`` as an int, if it is a positive integer no larger than ``ntotal``."""
        return hamming.check_k(k, self.ntotal, database="the index")

    def within(self, queries, r, method="auto"):
        """(lims, distances, rows) of every item within Hamming distance r (``<= r``), ordered by
        distance then row.

        method: "scan" (the linear scan), "mih" (multi-index hashing, see :meth:`radius_tables`)
        or "auto": the tables when they are built or the search is big enough to pay for them.
        The answer is the same whichever runs.
        """
        packed = self._check_queries(queries)
        r = hamming.check_radius(r, "r")
        if method not in ("auto", "scan", "mih"):
            raise DlbhcError(f"method must be auto, scan or mih, got {method!r}")
        tables = self._tables
        usable = tables is not None and tables.fits(r)
        if method == "auto":
            method = "mih" if usable or (len(packed) * self.ntotal >= MIH_MIN_PAIRS
                                         and r <= 3 and self.bits >= 16) else "scan"
        if method == "scan":
            return hamming.radius(packed, self.packed, r)
        if not usable or tables.m < min(r + 1, self.bits // 8):
            tables = self.radius_tables(r)
            if not tables.fits(r):
                return hamming.radius(packed, self.packed, r)
        return tables.radius(packed, r)

    def radius_tables(self, r=2):
        """The multi-index hashing tables for radius searches up to ``r`` (built now, kept)."""
        self._tables = MultiIndexHash(self.packed, self.bits, r)
        return self._tables

    def hamming_to(self, queries, rows):
        """Hamming distances (uint16 [nq, len(rows)]) from each query to the given rows."""
        packed = self._check_queries(queries)
        rows = np.asarray(rows, np.int64).ravel()
        return hamming.hamming_distances(packed, np.ascontiguousarray(self.packed[rows]))

    def rows_of(self, ids):
        """Row numbers of the given ids (each must be in the index)."""
        ids = np.asarray(ids, np.int64)
        if self._row_of_id is None:
            order = np.argsort(self.ids, kind="stable")
            self._row_of_id = (self.ids[order], order)
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
        return self._codes.view

    @property
    def codes(self):
        """Codes as 0/1 uint8 [ntotal, bits]."""
        if self.ntotal == 0:
            return np.zeros((0, self.bits), np.uint8)
        return hamming.unpack_codes(np.ascontiguousarray(self.packed), self.bits)

    @property
    def ids(self):
        return self._ids.view

    @property
    def labels(self):
        """int64 [ntotal], or None when the items' labels are not known."""
        return None if self._labels is None else self._labels.view

    @property
    def fc7(self):
        """[ntotal, D] (float32 or float16, see ``fc7_dtype``), or None without fc7 features."""
        return None if self._fc7 is None else self._fc7.view

    @property
    def fc7_dim(self):
        return None if self._fc7 is None else int(self._fc7.shape_tail[0])

    @property
    def path_offsets(self):
        return self._path_offsets.view

    @property
    def path_bytes(self):
        return self._path_bytes.view

    @property
    def paths(self):
        """Every item's path, as a list of str."""
        return self.paths_of(np.arange(self.ntotal))

    def paths_of(self, rows):
        """The paths of the given rows (a list of str)."""
        data, offsets = self.path_bytes, self.path_offsets
        return [bytes(data[offsets[r]:offsets[r + 1]]).decode("utf-8")
                for r in np.asarray(rows, np.int64).ravel()]

    # ------------------------------------------------------------ checks

    def _pack(self, codes, name):
        arr = np.asarray(codes)
        if arr.ndim == 1 and arr.dtype != np.uint64:
            arr = arr.reshape(1, -1)  # a single code is a batch of one
        if arr.ndim == 2 and arr.shape[0] == 0:
            width = self.words if arr.dtype == np.uint64 else self.bits
            if arr.shape[1] not in (0, width):
                raise DlbhcError(f"{name} have {arr.shape[1]} bits per code but the index holds "
                                 f"{self.bits}-bit codes")
            return np.zeros((0, self.words), np.uint64)
        packed, bits = hamming.as_packed(arr, name)
        if bits is not None and bits != self.bits:
            raise DlbhcError(f"{name} have {bits} bits per code but the index holds "
                             f"{self.bits}-bit codes: they must come from the same model")
        if bits is None and packed.shape[1] != self.words:
            raise DlbhcError(f"packed {name} have {packed.shape[1]} word(s) per code but the "
                             f"index's {self.bits}-bit codes take {self.words}")
        return packed

    def _check_queries(self, queries):
        if self.ntotal == 0:
            raise DlbhcError("the index is empty (ntotal = 0): add database codes before "
                             "searching")
        packed = self._pack(queries, "queries")
        if packed.shape[0] == 0:
            raise DlbhcError("no queries were given (0 codes)")
        return packed

    def _check_fc7(self, fc7, n):
        if fc7 is None:
            if self._fc7 is not None:
                raise DlbhcError(f"the index holds fc7 features ({self.fc7_dim} wide): add fc7 "
                                 f"for the {n} new items too")
            return None
        fc7 = np.asarray(fc7)
        if fc7.ndim != 2 or fc7.shape[0] != n:
            raise DlbhcError(f"fc7 must be one row per code ({n} x D), got shape {fc7.shape}")
        if self._fc7 is None and self.ntotal > 0:
            raise DlbhcError(f"the index's {self.ntotal} items have no fc7 features, so new "
                             f"items cannot bring them; build a new index with fc7 for all items")
        if self._fc7 is not None and fc7.shape[1] != self.fc7_dim:
            raise DlbhcError(f"fc7 rows are {fc7.shape[1]} wide but the index's are "
                             f"{self.fc7_dim}: they must come from the same model")
        if not np.all(np.isfinite(fc7)):
            raise DlbhcError("fc7 holds NaN or infinite values")
        return fc7.astype(self.fc7_dtype, copy=False)

    def _check_ids(self, ids, n):
        if ids is None:
            return np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        ids = np.asarray(ids)
        if ids.ndim != 1 or len(ids) != n or (n and ids.dtype.kind not in "iu"):
            raise DlbhcError(f"ids must be {n} integers (one per code), got {ids.dtype} of "
                             f"shape {ids.shape}")
        ids = ids.astype(np.int64)
        # ids above every id so far (the streaming and merge case) need no global check
        if n and (self.ntotal == 0 or ids.min() >= self._next_id):
            if len(np.unique(ids)) == n:
                return ids
        elif len(np.unique(np.concatenate([self.ids, ids]))) == self.ntotal + n:
            return ids
        raise DlbhcError("ids must be unique: some given ids repeat or are already in the index")

    def _check_labels(self, labels, n):
        if labels is None:
            if self._labels is not None:
                raise DlbhcError(f"the index holds labels: give labels for the {n} new items too")
            return None
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != n:
            raise DlbhcError(f"{labels.size} labels for {n} codes: give one label per code")
        if n and labels.dtype.kind not in "iu":
            raise DlbhcError(f"labels must be integers, got dtype {labels.dtype}")
        if self._labels is None and self.ntotal > 0:
            raise DlbhcError(f"the index's {self.ntotal} items have no labels, so new items "
                             f"cannot bring them")
        return labels.astype(np.int64)

    def _check_paths(self, paths, n):
        if paths is None:
            return [b""] * n
        paths = [os.fspath(p) for p in paths]
        if len(paths) != n:
            raise DlbhcError(f"{len(paths)} paths for {n} codes: give one path per code")
        return [p.encode("utf-8") for p in paths]
