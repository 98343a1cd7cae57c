# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Hamming kernels: bit packing, XOR+popcount distances, stable counting-sort ranking.

Internal module. The validated public API is `dlbhc_caffe.hamming`; these functions trust their
arguments (C-contiguous arrays of the right dtypes, k in 1..ndb, matching word counts).

Packed codes are uint64 words: bit j of a code lives in word j // 64 at bit position j % 64
(least significant bit first); unused high bits of the last word are zero.

Ranking is a counting sort over the distance (distances are integers in 0..64*words), visiting the
database in order, so ties keep database order: the result equals numpy's
`argsort(distances, kind='stable')`. Each query runs independently on one thread (prange over
queries, no GIL), so the result does not depend on the number of threads.
"""

from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

cimport openmp

import numpy as np

cdef extern from *:
    """
    /* POPCNT for __builtin_popcountll without touching the build flags: every function after this
       point may use the instruction (x86-64 CPUs have had it since 2008; checked at import). */
    #if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
    #pragma GCC target("popcnt")
    #endif
    #if defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
    #pragma clang attribute push (__attribute__((target("popcnt"))), apply_to = function)
    #define DLBHC_CLANG_PUSHED 1
    #endif
    static int dlbhc_cpu_has_popcnt(void) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("popcnt") ? 1 : 0;
    #else
        return 1;
    #endif
    }
    """
    int _cpu_has_popcnt "dlbhc_cpu_has_popcnt"() noexcept nogil
    int popcount "__builtin_popcountll"(unsigned long long x) noexcept nogil

if not _cpu_has_popcnt():
    raise ImportError("dlbhc_caffe.hamming needs a CPU with the POPCNT instruction "
                      "(any x86-64 CPU since 2008); this one lacks it.")


def max_threads():
    """OpenMP's default thread count (all cores, or OMP_NUM_THREADS)."""
    return openmp.omp_get_max_threads()


cdef inline int _distance(const uint64_t* a, const uint64_t* b, int words) noexcept nogil:
    cdef int w, d = 0
    for w in range(words):
        d += popcount(a[w] ^ b[w])
    return d


# ----------------------------------------------------------------------------------------------
# packing

def pack(const uint8_t[:, ::1] codes, uint64_t[:, ::1] out, int num_threads):
    """Pack 0/1 bytes [n, bits] into out [n, words] (zeroed by the caller). Returns the number of
    entries that were neither 0 nor 1 (they are packed as 1)."""
    cdef Py_ssize_t n = codes.shape[0], bits = codes.shape[1], i, j
    cdef Py_ssize_t bad = 0
    cdef uint64_t word
    cdef uint8_t v
    for i in prange(n, nogil=True, num_threads=num_threads, schedule="static"):
        word = 0
        for j in range(bits):
            v = codes[i, j]
            if v > 1:
                bad += 1
            if v != 0:
                word = word | ((<uint64_t>1) << (j & 63))
            if (j & 63) == 63 or j == bits - 1:
                out[i, j >> 6] = word
                word = 0
    return bad


def unpack(const uint64_t[:, ::1] packed, uint8_t[:, ::1] out, int num_threads):
    """Unpack words [n, words] into 0/1 bytes out [n, bits]."""
    cdef Py_ssize_t n = out.shape[0], bits = out.shape[1], i, j
    for i in prange(n, nogil=True, num_threads=num_threads, schedule="static"):
        for j in range(bits):
            out[i, j] = <uint8_t>((packed[i, j >> 6] >> (j & 63)) & 1)


# ----------------------------------------------------------------------------------------------
# all distances

def distances(const uint64_t[:, ::1] queries, const uint64_t[:, ::1] database,
              uint16_t[:, ::1] out, int num_threads):
    """out[i, j] = popcount(queries[i] ^ database[j])."""
    cdef Py_ssize_t nq = queries.shape[0], ndb = database.shape[0], i, j
    cdef int words = <int>queries.shape[1]
    cdef uint64_t q0
    if nq == 0 or ndb == 0:
        return
    for i in prange(nq, nogil=True, num_threads=num_threads, schedule="dynamic", chunksize=4):
        if words == 1:
            q0 = queries[i, 0]
            for j in range(ndb):
                out[i, j] = <uint16_t>popcount(q0 ^ database[j, 0])
        else:
            for j in range(ndb):
                out[i, j] = <uint16_t>_distance(&queries[i, 0], &database[j, 0], words)


# ----------------------------------------------------------------------------------------------
# top-k by counting sort
#
# Pass 1 visits the database once and keeps the items that can still be among the k nearest:
# `bound` is the k-th smallest distance seen so far (an upper bound of the final k-th distance),
# so an item farther than `bound` can never enter the top k. cnt[d] counts the kept items at
# distance d; every item at distance <= the final threshold T is kept, so cnt is exact there.
# Pass 2 scatters the kept items (still in database order) to their ranks: d < T at the running
# offset of bucket d, d == T while ranks remain; ties therefore stay in database order.

cdef Py_ssize_t _collect(const uint64_t* q, const uint64_t* db, Py_ssize_t ndb, int words,
                         Py_ssize_t k, int maxd, int64_t* cand_j, uint16_t* cand_d,
                         int64_t* cnt, int* threshold) noexcept nogil:
    cdef int bound = maxd, d
    cdef Py_ssize_t j, nc = 0, cum = 0
    cdef uint64_t q0 = q[0]
    memset(cnt, 0, (maxd + 1) * sizeof(int64_t))
    if words == 1:
        for j in range(ndb):
            d = popcount(q0 ^ db[j])
            if d <= bound:
                cand_j[nc] = j
                cand_d[nc] = <uint16_t>d
                nc += 1
                cnt[d] += 1
                cum += 1
                while cum - cnt[bound] >= k:
                    cum -= cnt[bound]
                    bound -= 1
    else:
        for j in range(ndb):
            d = _distance(q, db + j * words, words)
            if d <= bound:
                cand_j[nc] = j
                cand_d[nc] = <uint16_t>d
                nc += 1
                cnt[d] += 1
                cum += 1
                while cum - cnt[bound] >= k:
                    cum -= cnt[bound]
                    bound -= 1
    threshold[0] = bound
    return nc


cdef void _place(Py_ssize_t nc, const int64_t* cand_j, const uint16_t* cand_d, int64_t* cnt,
                 int threshold, Py_ssize_t k, int64_t* out_ids, uint16_t* out_d) noexcept nogil:
    cdef Py_ssize_t c, p, start = 0, size
    cdef int d
    for d in range(threshold + 1):        # counts -> first rank of each bucket
        size = cnt[d]
        cnt[d] = start
        start += size
    for c in range(nc):
        d = cand_d[c]
        if d < threshold or (d == threshold and cnt[d] < k):
            p = cnt[d]
            cnt[d] = p + 1
            out_ids[p] = cand_j[c]
            if out_d != NULL:
                out_d[p] = <uint16_t>d


def topk(const uint64_t[:, ::1] queries, const uint64_t[:, ::1] database, Py_ssize_t k,
         int64_t[:, ::1] out_ids, uint16_t[:, ::1] out_d, int num_threads):
    """The k nearest database items of each query, ranked by (distance, database index)."""
    cdef Py_ssize_t nq = queries.shape[0], ndb = database.shape[0], i, nc
    cdef int words = <int>queries.shape[1], maxd = 64 * words, threshold
    cdef int64_t* cand_j
    cdef uint16_t* cand_d
    cdef int64_t* cnt
    cdef int failed[1]
    if nq == 0:
        return
    failed[0] = 0
    with nogil, parallel(num_threads=num_threads):
        cand_j = <int64_t*>malloc(ndb * sizeof(int64_t))
        cand_d = <uint16_t*>malloc(ndb * sizeof(uint16_t))
        cnt = <int64_t*>malloc((maxd + 1) * sizeof(int64_t))
        if cand_j == NULL or cand_d == NULL or cnt == NULL:
            failed[0] = 1
        else:
            for i in prange(nq, schedule="dynamic", chunksize=8):
                threshold = maxd
                nc = _collect(&queries[i, 0], &database[0, 0], ndb, words, k, maxd,
                              cand_j, cand_d, cnt, &threshold)
                _place(nc, cand_j, cand_d, cnt, threshold, k, &out_ids[i, 0], &out_d[i, 0])
        free(cand_j)
        free(cand_d)
        free(cnt)
    if failed[0]:
        raise MemoryError(f"could not allocate the ranking buffers for {ndb} database items")


def topk_label_hits(const uint64_t[:, ::1] queries, const uint64_t[:, ::1] database,
                    const int32_t[::1] query_labels, const int32_t[::1] database_labels,
                    Py_ssize_t k, double[::1] out_ap, int64_t[:, ::1] out_hits, int num_threads):
    """precision.m's top-k statistics without materialising the ranking.

    out_ap[i]: average precision of query i within its top k (0 when no relevant item there).
    out_hits[t, p]: number of queries handled by thread t whose item at rank p is relevant
    (integer counts, so their sum over t is exact whatever the thread count).
    """
    cdef Py_ssize_t nq = queries.shape[0], ndb = database.shape[0], i, nc, p
    cdef int words = <int>queries.shape[1], maxd = 64 * words, threshold, t
    cdef int64_t* cand_j
    cdef uint16_t* cand_d
    cdef int64_t* cnt
    cdef int64_t* ranked
    cdef int64_t hits
    cdef int32_t label
    cdef double ap
    cdef int failed[1]
    if nq == 0:
        return
    failed[0] = 0
    with nogil, parallel(num_threads=num_threads):
        t = threadid()
        cand_j = <int64_t*>malloc(ndb * sizeof(int64_t))
        cand_d = <uint16_t*>malloc(ndb * sizeof(uint16_t))
        cnt = <int64_t*>malloc((maxd + 1) * sizeof(int64_t))
        ranked = <int64_t*>malloc(k * sizeof(int64_t))
        if cand_j == NULL or cand_d == NULL or cnt == NULL or ranked == NULL:
            failed[0] = 1
        else:
            for i in prange(nq, schedule="dynamic", chunksize=8):
                threshold = maxd
                nc = _collect(&queries[i, 0], &database[0, 0], ndb, words, k, maxd,
                              cand_j, cand_d, cnt, &threshold)
                _place(nc, cand_j, cand_d, cnt, threshold, k, ranked, NULL)
                label = query_labels[i]
                hits = 0
                ap = 0.0
                for p in range(k):
                    if database_labels[ranked[p]] == label:
                        hits = hits + 1
                        ap = ap + (<double>hits) / (p + 1)
                        out_hits[t, p] += 1
                if hits > 0:
                    out_ap[i] = ap / hits
                else:
                    out_ap[i] = 0.0
        free(cand_j)
        free(cand_d)
        free(cnt)
        free(ranked)
    if failed[0]:
        raise MemoryError(f"could not allocate the ranking buffers for {ndb} database items")


# ----------------------------------------------------------------------------------------------
# whole-ranking statistics per query

def bucket_label_stats(const uint64_t[:, ::1] queries, const uint64_t[:, ::1] database,
                       const int32_t[::1] query_labels, const int32_t[::1] database_labels,
                       int64_t[:, ::1] out_all, int64_t[:, ::1] out_relevant,
                       double[::1] out_ap, int num_threads):
    """Per query: how many database items (out_all) and how many relevant ones (out_relevant) lie
    at each distance 0..64*words, and the average precision over the whole stable ranking
    (out_ap; 0 when the database holds no relevant item).

    The ranking is never sorted: an item's rank is the number of items in closer buckets plus its
    place among the items of its own bucket in database order; a second pass counts that place.
    """
    cdef Py_ssize_t nq = queries.shape[0], ndb = database.shape[0], i, j
    cdef int words = <int>queries.shape[1], maxd = 64 * words, d
    cdef uint16_t* dist
    cdef int64_t* seen
    cdef int64_t* seen_relevant
    cdef int64_t* first_rank
    cdef int64_t* relevant_before
    cdef int64_t total_rank, total_relevant, c, r
    cdef int32_t label
    cdef uint64_t q0
    cdef double ap
    cdef int failed[1]
    if nq == 0:
        return
    failed[0] = 0
    with nogil, parallel(num_threads=num_threads):
        dist = <uint16_t*>malloc(ndb * sizeof(uint16_t))
        seen = <int64_t*>malloc((maxd + 1) * sizeof(int64_t))
        seen_relevant = <int64_t*>malloc((maxd + 1) * sizeof(int64_t))
        first_rank = <int64_t*>malloc((maxd + 1) * sizeof(int64_t))
        relevant_before = <int64_t*>malloc((maxd + 1) * sizeof(int64_t))
        if (dist == NULL or seen == NULL or seen_relevant == NULL or first_rank == NULL
                or relevant_before == NULL):
            failed[0] = 1
        else:
            for i in prange(nq, schedule="dynamic", chunksize=4):
                label = query_labels[i]
                if words == 1:
                    q0 = queries[i, 0]
                    for j in range(ndb):
                        d = popcount(q0 ^ database[j, 0])
                        dist[j] = <uint16_t>d
                        out_all[i, d] += 1
                        if database_labels[j] == label:
                            out_relevant[i, d] += 1
                else:
                    for j in range(ndb):
                        d = _distance(&queries[i, 0], &database[j, 0], words)
                        dist[j] = <uint16_t>d
                        out_all[i, d] += 1
                        if database_labels[j] == label:
                            out_relevant[i, d] += 1
                total_rank = 0
                total_relevant = 0
                for d in range(maxd + 1):
                    first_rank[d] = total_rank
                    relevant_before[d] = total_relevant
                    total_rank = total_rank + out_all[i, d]
                    total_relevant = total_relevant + out_relevant[i, d]
                    seen[d] = 0
                    seen_relevant[d] = 0
                ap = 0.0
                for j in range(ndb):
                    d = dist[j]
                    seen[d] += 1
                    if database_labels[j] == label:
                        seen_relevant[d] += 1
                        c = first_rank[d] + seen[d]               # 1-based rank of item j
                        r = relevant_before[d] + seen_relevant[d]  # relevant items up to it
                        ap = ap + (<double>r) / c
                if total_relevant > 0:
                    out_ap[i] = ap / total_relevant
                else:
                    out_ap[i] = 0.0
        free(dist)
        free(seen)
        free(seen_relevant)
        free(first_rank)
        free(relevant_before)
    if failed[0]:
        raise MemoryError(f"could not allocate the ranking buffers for {ndb} database items")


# ----------------------------------------------------------------------------------------------
# radius search

def radius_counts(const uint64_t[:, ::1] queries, const uint64_t[:, ::1] database, int r,
                  int64_t[:, ::1] out_counts, int num_threads):
    """out_counts[i, d] = number of database items at distance d (0..r) from query i."""
    cdef Py_ssize_t nq = queries.shape[0], ndb = database.shape[0], i, j
    cdef int words = <int>queries.shape[1], d
    cdef uint64_t q0
    for i in prange(nq, nogil=True, num_threads=num_threads, schedule="dynamic", chunksize=4):
        if words == 1:
            q0 = queries[i, 0]
            for j in range(ndb):
                d = popcount(q0 ^ database[j, 0])
                if d <= r:
                    out_counts[i, d] += 1
        else:
            for j in range(ndb):
                d = _distance(&queries[i, 0], &database[j, 0], words)
                if d <= r:
                    out_counts[i, d] += 1


def radius_fill(const uint64_t[:, ::1] queries, const uint64_t[:, ::1] database, int r,
                int64_t[:, ::1] offsets, int64_t[::1] out_ids, uint16_t[::1] out_d,
                int num_threads):
    """Scatter the items within radius r: offsets[i, d] is where query i's items at distance d
    start in out_ids/out_d (advanced in place); database order is kept within a distance."""
    cdef Py_ssize_t nq = queries.shape[0], ndb = database.shape[0], i, j, p
    cdef int words = <int>queries.shape[1], d
    cdef uint64_t q0
    for i in prange(nq, nogil=True, num_threads=num_threads, schedule="dynamic", chunksize=4):
        q0 = queries[i, 0]
        for j in range(ndb):
            if words == 1:
                d = popcount(q0 ^ database[j, 0])
            else:
                d = _distance(&queries[i, 0], &database[j, 0], words)
            if d <= r:
                p = offsets[i, d]
                offsets[i, d] = p + 1
                out_ids[p] = j
                out_d[p] = <uint16_t>d
