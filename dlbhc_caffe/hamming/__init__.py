"""Hamming search over binary hash codes: packing, distances, stable ranking, radius search.

Codes are given either as 0/1 arrays of shape [n, bits] (bool, any integer dtype other than
uint64, or floats holding exactly 0 and 1) or already packed by :func:`pack_codes` (dtype uint64,
shape [n, words]). Packing puts bit j of a code in word j // 64 at bit position j % 64, least
significant first, and leaves the unused high bits of the last word zero; viewed as bytes on a
little-endian machine this is ``np.packbits(codes, axis=1, bitorder="little")`` padded to whole
words.

Ranking sorts the database by Hamming distance with ties in database order, exactly like
``np.argsort(distances, kind="stable")`` and like MATLAB's ``sort`` in the original precision.m.
Distances are small integers, so each query is ranked by a counting sort in O(database) time; many
queries run at once over OpenMP threads (``num_threads``, default: all cores, or OMP_NUM_THREADS),
and the results do not depend on the number of threads.

>>> import numpy as np
>>> from dlbhc_caffe import hamming
>>> db = hamming.pack_codes([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 0, 1]])
>>> dists, ids = hamming.rank(hamming.pack_codes([[0, 0, 0]]), db, k=3)
>>> dists.tolist(), ids.tolist()
([[0, 1, 1]], [[0, 2, 3]])

Every search returns faiss's order: ``(distances, ids)``, and ``(lims, distances, ids)`` for a
radius search.
"""
import numbers

import numpy as np

from ..errors import DlbhcError
from . import _hamming

__all__ = ["pack_codes", "unpack_codes", "as_packed", "hamming_distances", "rank", "radius",
           "check_k", "check_radius", "max_threads"]

# Distances are uint16, with the high bit free for the kernels' flags (up to 32704 bits).
MAX_WORDS = 511
# Ranking keeps candidate indices as uint32.
MAX_DATABASE = 2**32 - 1
# A single query's scan is split across threads from this many database codes.
SPLIT_MIN = 1 << 16


def max_threads():
    """The number of threads used when ``num_threads`` is None (all cores, or OMP_NUM_THREADS)."""
    return _hamming.max_threads()


def _threads(num_threads):
    if num_threads is None:
        return max_threads()
    if isinstance(num_threads, (bool, np.bool_)) or not isinstance(num_threads, numbers.Integral) \
            or num_threads < 1:
        raise DlbhcError(f"num_threads must be a positive integer or None (all cores), "
                         f"got {num_threads!r}.")
    return int(num_threads)


def _team(num_threads, n_queries):
    """Threads for a batch: queries are shared out, so more threads than queries only wait."""
    return max(1, min(_threads(num_threads), n_queries))


def _codes01(codes, name):
    """Validate 0/1 codes [n, bits] and return them as C-contiguous uint8."""
    arr = np.asarray(codes)
    if arr.ndim != 2:
        hint = (f" If it holds a single code, pass {name}.reshape(1, -1)." if arr.ndim == 1
                else "")
        raise DlbhcError(f"Expected {name} as a 2-D array of 0/1 codes, one row per item "
                         f"(shape [n, bits]); got an array of shape {arr.shape}.{hint}")
    if arr.shape[1] == 0:
        raise DlbhcError(f"{name} has 0 bits per code (shape {arr.shape}); codes need at least "
                         f"one bit.")
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr).view(np.uint8)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"Expected {name} as 0/1 numbers (bool or integer dtype); got dtype "
                        f"{arr.dtype}.")
    if arr.size and arr.dtype.kind in "iuf":
        low, high = arr.min(), arr.max()
        if low < 0 or high > 1 or (arr.dtype.kind == "f" and not np.all((arr == 0) | (arr == 1))):
            raise DlbhcError(f"{name} must hold only 0 and 1 (got values from {low} to {high}); "
                             f"binarise activations first, e.g. codes = (latent > 0.5).")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def pack_codes(codes, *, num_threads=None):
    """Pack 0/1 codes [n, bits] into uint64 words [n, ceil(bits / 64)].

    Bit j of a code goes to word j // 64, bit position j % 64 (least significant first); unused
    high bits of the last word are zero, so codes of any length compare correctly.

    >>> pack_codes([[1, 0, 1], [0, 1, 0]]).tolist()
    [[5], [2]]
    """
    arr = _codes01(codes, "codes")
    words = (arr.shape[1] + 63) // 64
    if words > MAX_WORDS:
        raise DlbhcError(f"codes have {arr.shape[1]} bits; at most {64 * MAX_WORDS} are "
                         f"supported.")
    out = np.empty((arr.shape[0], words), dtype=np.uint64)
    _hamming.pack(arr, out, _team(num_threads, arr.shape[0] // 65536 + 1))
    return out


def unpack_codes(packed, bits, *, num_threads=None):
    """Unpack uint64 words [n, words] (from :func:`pack_codes`) into 0/1 uint8 codes [n, bits].

    >>> unpack_codes(pack_codes([[1, 0, 1]]), 3).tolist()
    [[1, 0, 1]]
    """
    arr = _packed(packed, "packed")
    if not isinstance(bits, numbers.Integral) or not 1 <= bits <= 64 * arr.shape[1]:
        raise DlbhcError(f"bits must be an integer in 1..{64 * arr.shape[1]} for "
                         f"{arr.shape[1]} word(s) per code; got {bits!r}.")
    out = np.empty((arr.shape[0], int(bits)), dtype=np.uint8)
    _hamming.unpack(arr, out, _team(num_threads, arr.shape[0] // 65536 + 1))
    return out


def _packed(packed, name):
    arr = np.asarray(packed)
    if arr.dtype != np.uint64:
        raise TypeError(f"Expected {name} packed by pack_codes (dtype uint64); got dtype "
                        f"{arr.dtype}.")
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise DlbhcError(f"Expected {name} as a 2-D array of packed codes [n, words]; got shape "
                         f"{arr.shape}.")
    return np.ascontiguousarray(arr)


def as_packed(codes, name="codes"):
    """Return ``(packed, bits)`` for 0/1 codes or for codes already packed (uint64).

    ``bits`` is the code length for 0/1 codes and None for packed input (its length is only known
    to a multiple of 64).
    """
    arr = np.asarray(codes)
    if arr.dtype == np.uint64:
        packed = _packed(arr, name)
        if packed.shape[1] > MAX_WORDS:
            raise DlbhcError(f"{name} has {packed.shape[1]} words per code; at most {MAX_WORDS} "
                             f"are supported.")
        return packed, None
    arr01 = _codes01(arr, name)
    return pack_codes(arr01), arr01.shape[1]


def _pair(queries, database):
    """Validate a query batch against a database; return both packed."""
    q, qbits = as_packed(queries, "queries")
    db, dbbits = as_packed(database, "database")
    if qbits is not None and dbbits is not None and qbits != dbbits:
        raise DlbhcError(f"queries have {qbits} bits per code but the database has {dbbits}: "
                         f"codes must come from the same model (same number of bits).")
    if q.shape[1] != db.shape[1]:
        what_q = f"{qbits} bits" if qbits is not None else f"{q.shape[1]} packed word(s)"
        what_db = f"{dbbits} bits" if dbbits is not None else f"{db.shape[1]} packed word(s)"
        raise DlbhcError(f"queries have {what_q} per code but the database has {what_db}: "
                         f"codes must come from the same model (same number of bits).")
    if db.shape[0] == 0:
        raise DlbhcError("The database is empty (0 codes); there is nothing to search. Add "
                         "database codes first.")
    if db.shape[0] > MAX_DATABASE:
        raise DlbhcError(f"The database holds {db.shape[0]} codes; at most {MAX_DATABASE} fit "
                         f"one search (32-bit candidate indices). Split it into shards and "
                         f"merge their results.")
    return q, db


def hamming_distances(queries, database, *, num_threads=None):
    """All Hamming distances, uint16 [n_queries, n_database].

    >>> hamming_distances([[0, 1, 1]], [[0, 0, 0], [1, 1, 1]]).tolist()
    [[2, 1]]
    """
    q, db = _pair(queries, database)
    out = np.empty((q.shape[0], db.shape[0]), dtype=np.uint16)
    _hamming.distances(q, db, out, _team(num_threads, q.shape[0]))
    return out


def check_k(k, n_database, name="k", database="the database", whole=True):
    """k as an int (n_database for None); a clear ValueError naming `name` unless 1 <= k <= n.

    The one check of k for every search and metric (``database`` names what is searched;
    ``whole``: k=None, the whole ranking, is allowed and mentioned).
    """
    if k is None and whole:
        return n_database
    rest = f", or {name}=None for the whole ranking" if whole else ""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or k < 1:
        raise DlbhcError(f"{name} must be a positive integer{' (or None)' if whole else ''}; "
                         f"got {k!r}.")
    if k > n_database:
        raise DlbhcError(f"{name}={k} is larger than {database} ({n_database} items); pass "
                         f"{name} <= {n_database}{rest}.")
    return int(k)


def verify_candidates(queries, qi, database, rows, masks, s, r, out):
    """For multi-index hashing (:mod:`dlbhc_caffe.search.mih`): ``out[c]`` = the distance
    between ``queries[qi[c]]`` and ``database[rows[c]]`` (packed), or -1 when it exceeds ``r``
    or an earlier table reports the pair (a row of ``masks`` within ``s`` bits)."""
    if masks.shape[0] == 0:
        masks = np.zeros((1, queries.shape[1]), np.uint64)
        s = -1  # no earlier table: a zero mask is never within -1 bits, so every pair stays
    _hamming.verify(np.ascontiguousarray(queries, np.uint64), np.ascontiguousarray(qi, np.int64),
                    np.ascontiguousarray(database, np.uint64),
                    np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(masks), int(s),
                    int(r), out)


def check_radius(r, name="radius"):
    """r as an int; a clear ValueError naming `name` unless r is a non-negative integer.

    >>> check_radius(2)
    2
    """
    if isinstance(r, (bool, np.bool_)) or not isinstance(r, numbers.Integral) or r < 0:
        raise DlbhcError(f"{name} must be a non-negative integer (a Hamming distance); "
                         f"got {r!r}.")
    return int(r)


def rank(queries, database, k=None, *, num_threads=None):
    """The k nearest database items of each query: ``(distances, ids)``.

    distances (uint16) and ids (int64) have shape [n_queries, k], ordered by distance with ties
    in database order (``np.argsort(d, kind="stable")[:, :k]``). ``k=None`` ranks the whole
    database.

    Queries are shared out among the threads. With fewer queries than an explicit
    ``num_threads``, each query's scan is split across them instead (same order); the default
    (None) does not split: one query is under a millisecond of work, and on a machine shared
    with other work, waking threads for it was measured to cost 100 times more than it saves.

    >>> d, ids = rank([[1, 1, 0, 0]], [[0, 0, 0, 0], [1, 1, 0, 1], [1, 1, 0, 0], [0, 1, 0, 1]], 3)
    >>> d.tolist(), ids.tolist()
    ([[0, 1, 2]], [[2, 1, 0]])
    """
    q, db = _pair(queries, database)
    k = check_k(k, db.shape[0])
    ids = np.empty((q.shape[0], k), dtype=np.int64)
    dists = np.empty((q.shape[0], k), dtype=np.uint16)
    threads = _threads(num_threads)
    if num_threads is not None and q.shape[0] < threads and db.shape[0] >= SPLIT_MIN:
        # fewer queries than threads asked for: each query's scan is split across them
        for i in range(q.shape[0]):
            _hamming.topk_one(q[i:i + 1], db, k, ids[i:i + 1], dists[i:i + 1], threads)
    else:
        _hamming.topk(q, db, k, ids, dists, min(threads, q.shape[0]) or 1)
    return dists, ids


def radius(queries, database, r, *, num_threads=None):
    """All database items within Hamming distance r (``distance <= r``) of each query.

    Returns ``(lims, distances, ids)`` as faiss's range_search does: the results of query i are
    ``distances[lims[i]:lims[i + 1]]`` (uint16) and ``ids[lims[i]:lims[i + 1]]`` (int64), ordered
    by distance and then database index.

    >>> lims, d, ids = radius([[1, 1, 0]], [[0, 0, 0], [1, 1, 1], [1, 1, 0]], 1)
    >>> lims.tolist(), d.tolist(), ids.tolist()
    ([0, 2], [0, 1], [2, 1])
    """
    q, db = _pair(queries, database)
    r = min(check_radius(r, "r"), 64 * q.shape[1])
    threads = _team(num_threads, q.shape[0])
    counts = np.zeros((q.shape[0], r + 1), dtype=np.int64)
    _hamming.radius_counts(q, db, r, counts, threads)
    per_query = counts.sum(axis=1)
    lims = np.zeros(q.shape[0] + 1, dtype=np.int64)
    np.cumsum(per_query, out=lims[1:])
    # where each (query, distance) bucket starts in the flat output
    offsets = np.ascontiguousarray(lims[:-1, None] + np.cumsum(counts, axis=1) - counts)
    ids = np.empty(lims[-1], dtype=np.int64)
    dists = np.empty(lims[-1], dtype=np.uint16)
    _hamming.radius_fill(q, db, r, offsets, ids, dists, threads)
    return lims, dists, ids
