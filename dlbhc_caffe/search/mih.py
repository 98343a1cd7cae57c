"""Exact radius search in sub-linear time: multi-index hashing (Norouzi, Punjani and Fleet, CVPR
2012; faiss's IndexBinaryMultiHash is the same idea).

Each code is cut into m substrings, and each substring position gets a table (the database's
substrings sorted, so a lookup is a binary search). If a code lies within Hamming distance r of
the query, then by the pigeonhole principle at least one of its m substrings lies within
floor(r / m) of the query's substring there. So the candidates are the codes that match some
query substring within floor(r / m) -- with m = r + 1 that is an exact lookup per table -- and the
answer is the candidates within r, ordered by (distance, row): exactly what the linear scan
(:func:`dlbhc_caffe.hamming.radius`) returns, in the same order.

>>> import numpy as np
>>> from dlbhc_caffe import hamming
>>> db = hamming.pack_codes(np.eye(48, dtype=np.uint8)[:5])
>>> lims, d, rows = MultiIndexHash(db, bits=48, r=2).radius(db[:1], 2)
>>> lims.tolist(), d.tolist(), rows.tolist()
([0, 5], [0, 2, 2, 2, 2], [0, 1, 2, 3, 4])
"""
from itertools import combinations
from math import comb

import numpy as np

from .. import hamming
from ..errors import DlbhcError

# popcount of every 16-bit value: distances of candidate pairs without the all-pairs kernel
_POP16 = np.array([bin(v).count("1") for v in range(1 << 16)], np.uint8)
# candidates gathered at once (rows x queries), bounding the memory of one step
_CHUNK = 1 << 23


def substrings(bits, m):
    """The m (start, stop) bit ranges, consecutive and as even as can be."""
    edges = [bits * i // m for i in range(m + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _keys(packed, start, stop):
    """Bits start..stop-1 of each packed code as an integer (uint64; stop - start <= 64)."""
    out = np.zeros(len(packed), np.uint64)
    bit = start
    while bit < stop:  # one piece per word the range touches
        word, shift = divmod(bit, 64)
        width = min(stop, (word + 1) * 64) - bit
        part = packed[:, word] >> np.uint64(shift)
        if width < 64:
            part = part & np.uint64((1 << width) - 1)
        out |= part << np.uint64(bit - start)
        bit += width
    return out


def _narrow(keys, width):
    """Keys in the narrowest unsigned type that holds ``width`` bits (sorts faster)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if width <= 8 * np.dtype(dtype).itemsize:
            return keys.astype(dtype)
    return keys


def _popcount(words):
    """Bits set in each row of uint64 words [n, w]."""
    as16 = np.ascontiguousarray(words).view(np.uint16).reshape(len(words), -1)
    return _POP16[as16].sum(axis=1, dtype=np.int64)


class MultiIndexHash:
    """Tables over the substrings of ``packed`` codes (uint64 [n, words] of ``bits`` bits) for
    exact radius searches up to ``r``: m = r + 1 substrings (at most one per 8 bits), so that a
    search within r needs lookups within floor(r / m) per table.
    """

    def __init__(self, packed, bits, r=2):
        self.packed = packed
        self.bits = int(bits)
        self.m = max(1, min(hamming.check_radius(r, "r") + 1, self.bits // 8))
        self.ranges = substrings(self.bits, self.m)
        self.tables = []
        for start, stop in self.ranges:
            keys = _narrow(_keys(packed, start, stop), stop - start)
            order = np.argsort(keys, kind="stable")  # a radix sort for 8..32-bit keys
            self.tables.append((keys[order], order.astype(np.int64)))
        # each substring as a bit mask over the packed words (for the candidates' checks)
        self.masks = np.zeros((self.m, packed.shape[1]), np.uint64)
        for i, (start, stop) in enumerate(self.ranges):
            for bit in range(start, stop):
                self.masks[i, bit // 64] |= np.uint64(1) << np.uint64(bit % 64)

    @property
    def ntotal(self):
        return len(self.packed)

    def fits(self, r):
        """Whether a search within r takes few enough lookups (at most 4096 per table)."""
        s, width = r // self.m, max(b - a for a, b in self.ranges)
        return sum(comb(width, t) for t in range(s + 1)) <= 4096

    def _probes(self, key, width, s):
        """Every key within Hamming distance s of ``key`` on ``width`` bits."""
        flips = [0]
        for t in range(1, s + 1):
            flips += [sum(1 << b for b in c) for c in combinations(range(width), t)]
        return np.uint64(key) ^ np.array(flips, np.uint64)

    def _within(self, queries, s, r):
        """(query index, row, distance) of every pair within r, each once: the candidates of
        table j (substring within s) count only when no earlier table finds them, so no global
        de-duplication is needed."""
        pairs_q, pairs_r, pairs_d = [], [], []
        qkeys = [_keys(queries, a, b) for a, b in self.ranges]
        for j, ((start, stop), (keys, order)) in enumerate(zip(self.ranges, self.tables)):
            probes = [self._probes(k, stop - start, s) for k in qkeys[j]]
            per_query = np.array([len(p) for p in probes])
            flat = np.concatenate(probes).astype(keys.dtype)
            lo = np.searchsorted(keys, flat, "left")
            hi = np.searchsorted(keys, flat, "right")
            sizes = hi - lo
            total = int(sizes.sum())
            if total == 0:
                continue
            # rows of every matching range, laid end to end (a vectorised concatenation)
            starts = np.repeat(lo - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
            rows = order[starts + np.arange(total)]
            qi = np.repeat(np.repeat(np.arange(len(queries)), per_query), sizes)
            d = np.empty(total, np.int32)
            hamming.verify_candidates(queries, qi, self.packed, rows, self.masks[:j], s, r, d)
            keep = d >= 0
            pairs_q.append(qi[keep])
            pairs_r.append(rows[keep])
            pairs_d.append(d[keep])
        if not pairs_r:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(pairs_q), np.concatenate(pairs_r), np.concatenate(pairs_d)

    def radius(self, queries, r):
        """(lims, distances uint16, rows int64) of every code within r of each query, ordered by
        distance then row -- :func:`dlbhc_caffe.hamming.radius`'s answer, found by lookups."""
        r = hamming.check_radius(r, "r")
        if not self.fits(r):
            raise DlbhcError(f"radius {r} is too wide for {self.m} tables of "
                             f"{self.bits // self.m} bits: use the linear scan")
        queries = np.ascontiguousarray(queries, np.uint64)
        parts = [self._radius_chunk(queries[a:b], r, a) for a, b in self._chunks(queries, r)]
        qi = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        lims = np.zeros(len(queries) + 1, np.int64)
        np.cumsum(np.bincount(qi, minlength=len(queries)), out=lims[1:])
        if not parts:
            return lims, np.zeros(0, np.uint16), np.zeros(0, np.int64)
        return (lims, np.concatenate([p[1] for p in parts]).astype(np.uint16),
                np.concatenate([p[2] for p in parts]))

    def _chunks(self, queries, r):
        """Query ranges whose candidates fit one step (a clustered database gives many)."""
        if len(queries) <= 1:
            return [(0, len(queries))]
        keys, _ = self.tables[0]
        qkeys = _keys(queries, *self.ranges[0]).astype(keys.dtype)
        load = (np.searchsorted(keys, qkeys, "right") - np.searchsorted(keys, qkeys, "left")
                + 1) * self.m
        bounds, start, acc = [], 0, 0
        for i, size in enumerate(load):
            if acc and acc + size > _CHUNK:
                bounds.append((start, i))
                start, acc = i, 0
            acc += int(size)
        return bounds + [(start, len(queries))]

    def _radius_chunk(self, queries, r, first):
        qi, rows, d = self._within(queries, r // self.m, r)
        order = np.lexsort((rows, d, qi))  # by query, distance, row: the linear scan's order
        return qi[order] + first, d[order], rows[order]
