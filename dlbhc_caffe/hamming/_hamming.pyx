# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Hamming kernels: bit packing, XOR+popcount distances, stable counting-sort ranking.

Internal module. The validated public API is `dlbhc_caffe.hamming`; these functions trust their
arguments (C-contiguous arrays of the right dtypes, k in 1..ndb, matching word counts).

Packed codes are uint64 words: bit j of a code lives in word j // 64 at bit position j % 64
(least significant bit first); unused high bits of the last word are zero.

Ranking is a counting sort over the distance (distances are integers in 0..64*words) of the items
that can make the top k, kept in database order, so ties keep database order: the result equals
numpy's `argsort(distances, kind='stable')`. Each query runs independently on one thread (prange
over queries, no GIL), so the result does not depend on the number of threads.
"""

from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cimport openmp


cdef extern from "hamming_kernels.h":
    void _cpu_init "dlbhc_cpu_init"() noexcept nogil
    int _has_popcnt "dlbhc_has_popcnt"
    int _has_avx512 "dlbhc_has_avx512"
    int _use_avx512 "dlbhc_use_avx512"
    double _whole_ranking "dlbhc_whole_ranking"(uint16_t* dist, const int32_t* labels,
                                                int32_t label, Py_ssize_t n, int maxd,
                                                int64_t* all, int64_t* relevant,
                                                int64_t* scratch, uint32_t* ranks) noexcept nogil
    void _pack_row "dlbhc_pack_row"(const uint8_t* codes, Py_ssize_t bits,
                                    uint64_t* out) noexcept nogil
    void _unpack_row "dlbhc_unpack_row"(const uint64_t* packed, Py_ssize_t bits,
                                        uint8_t* out) noexcept nogil
    void _distance_row "dlbhc_distance_row"(const uint64_t* q, const uint64_t* db, Py_ssize_t n,
                                            int words, uint16_t* out) noexcept nogil
    Py_ssize_t _collect "dlbhc_collect"(const uint64_t* q, const uint64_t* db, Py_ssize_t n,
                                        int words, Py_ssize_t k, int maxd, uint32_t* cand_j,
                                        uint16_t* cand_d, int64_t* cnt,
                                        int* threshold) noexcept nogil
    void _topk_split "dlbhc_topk_split"(const uint64_t* q, const uint64_t* db, Py_ssize_t n,
                                        int words, Py_ssize_t k, int maxd, int T,
                                        uint32_t* cand_j, uint16_t* cand_d, int64_t* hist,
                                        int64_t* cnt_all, int64_t* out_ids,
                                        uint16_t* out_d) noexcept nogil
    void _verify "dlbhc_verify"(const uint64_t* queries, const int64_t* qi, const uint64_t* db,
                                const int64_t* rows, Py_ssize_t nc, int words,
                                const uint64_t* masks, int n_masks, int s, int r,
                                int32_t* out) noexcept nogil
    void _place "dlbhc_place"(Py_ssize_t nc, const uint32_t* cand_j, const uint16_t* cand_d,
                              int64_t* cnt, int maxd, int threshold, Py_ssize_t k,
                              int64_t* out_ids,
                              uint16_t* out_d) noexcept nogil

_cpu_init()
if not _has_popcnt:
    raise ImportError("dlbhc_caffe.hamming needs a CPU with the POPCNT instruction "
                      "(any x86-64 CPU since 2008); this one lacks it.")


def max_threads():
    """OpenMP's default thread count (all cores, or OMP_NUM_THREADS)."""
    return openmp.omp_get_max_threads()


def simd(enable=None):
    """Whether the AVX-512 VPOPCNTDQ kernels are in use; ``enable`` switches them (when the CPU
    has them; otherwise they stay off). Results are identical either way."""
    global _use_avx512
    if enable is not None:
        _use_avx512 = 1 if (enable and _has_avx512) else 0
    return bool(_use_avx512)


# ----------------------------------------------------------------------------------------------
# packing

def pack(const uint8_t[:, ::1] codes, uint64_t[:, ::1] out, int num_threads):
    """Pack 0/1 bytes [n, bits] into out [n, words] (any nonzero byte is a 1)."""
    cdef Py_ssize_t n = codes.shape[0], bits = codes.shape[1], i
    if n == 0:
        return
    for i in prange(n, nogil=True, num_threads=num_threads, schedule="static"):
        _pack_row(&codes[i, 0], bits, &out[i, 0])


def unpack(const uint64_t[:, ::1] packed, uint8_t[:, ::1] out, int num_threads):
    """Unpack words [n, words] into 0/1 bytes out [n, bits]."""
    cdef Py_ssize_t n = out.shape[0], bits = out.shape[1], i
    if n == 0:
        return
    for i in prange(n, nogil=True, num_threads=num_threads, schedule="static"):
        _unpack_row(&packed[i, 0], bits, &out[i, 0])


# ----------------------------------------------------------------------------------------------
# all distances

def distances(const uint64_t[:, ::1] queries, const uint64_t[:, ::1] database,
              uint16_t[:, ::1] out, int num_threads):
    """out[i, j] = popcount(queries[i] ^ database[j])."""
    cdef Py_ssize_t nq = queries.shape[0], ndb = database.shape[0], i
    cdef int words = <int>queries.shape[1]
    if nq == 0 or ndb == 0:
        return
    for i in prange(nq, nogil=True, num_threads=num_threads, schedule="dynamic", chunksize=4):
        _distance_row(&queries[i, 0], &database[0, 0], ndb, words, &out[i, 0])


# ----------------------------------------------------------------------------------------------
# top-k by counting sort
#
# Pass 1 (dlbhc_collect) visits the database once and keeps the items that can be among the k
# nearest, in database order: those within an upper bound of the k-th distance, estimated on a
# sample and checked (or tightened as the scan goes). Pass 2 (dlbhc_place) scatters them to their
# ranks by a counting sort on the distance. Both are in the C block above.

def topk(const uint64_t[:, ::1] queries, const uint64_t[:, ::1] database, Py_ssize_t k,
         int64_t[:, ::1] out_ids, uint16_t[:, ::1] out_d, int num_threads):
    """The k nearest database items of each query, ranked by (distance, database index)."""
    cdef Py_ssize_t nq = queries.shape[0], ndb = database.shape[0], i, nc
    cdef int words = <int>queries.shape[1], maxd = 64 * words, threshold
    cdef uint32_t* cand_j
    cdef uint16_t* cand_d
    cdef int64_t* cnt
    cdef int64_t* ranked
    cdef uint16_t* ranked_d
    cdef int failed[1]
    if nq == 0:
        return
    failed[0] = 0
    with nogil, parallel(num_threads=num_threads):
        cand_j = <uint32_t*>malloc(ndb * sizeof(uint32_t))
        cand_d = <uint16_t*>malloc(ndb * sizeof(uint16_t))
        cnt = <int64_t*>malloc(4 * (maxd + 2) * sizeof(int64_t))
        ranked = <int64_t*>malloc((k + 1) * sizeof(int64_t))
        ranked_d = <uint16_t*>malloc((k + 1) * sizeof(uint16_t))
        if (cand_j == NULL or cand_d == NULL or cnt == NULL or ranked == NULL
                or ranked_d == NULL):
            failed[0] = 1
        else:
            for i in prange(nq, schedule="dynamic", chunksize=8):
                threshold = maxd
                nc = _collect(&queries[i, 0], &database[0, 0], ndb, words, k, maxd,
                              cand_j, cand_d, cnt, &threshold)
                _place(nc, cand_j, cand_d, cnt, maxd, threshold, k, ranked, ranked_d)
                memcpy(&out_ids[i, 0], ranked, k * sizeof(int64_t))
                memcpy(&out_d[i, 0], ranked_d, k * sizeof(uint16_t))
        free(cand_j)
        free(cand_d)
        free(cnt)
        free(ranked)
        free(ranked_d)
    if failed[0]:
        raise MemoryError(f"could not allocate the ranking buffers for {ndb} database items")


def topk_one(const uint64_t[:, ::1] queries, const uint64_t[:, ::1] database, Py_ssize_t k,
             int64_t[:, ::1] out_ids, uint16_t[:, ::1] out_d, int num_threads):
    """The k nearest database items of ONE query (queries[0]), its scan split across
    num_threads threads; the same stable ranking as topk."""
    cdef Py_ssize_t ndb = database.shape[0]
    cdef int words = <int>queries.shape[1], maxd = 64 * words
    cdef uint32_t* cand_j = <uint32_t*>malloc(ndb * sizeof(uint32_t))
    cdef uint16_t* cand_d = <uint16_t*>malloc(ndb * sizeof(uint16_t))
    cdef int64_t* hist = <int64_t*>malloc(num_threads * (maxd + 2) * sizeof(int64_t))
    cdef int64_t* cnt = <int64_t*>malloc(num_threads * 4 * (maxd + 2) * sizeof(int64_t))
    if cand_j == NULL or cand_d == NULL or hist == NULL or cnt == NULL:
        free(cand_j)
        free(cand_d)
        free(hist)
        free(cnt)
        raise MemoryError(f"could not allocate the ranking buffers for {ndb} database items")
    with nogil:
        _topk_split(&queries[0, 0], &database[0, 0], ndb, words, k, maxd, num_threads, cand_j,
                    cand_d, hist, cnt, &out_ids[0, 0], &out_d[0, 0])
    free(cand_j)
    free(cand_d)
    free(hist)
    free(cnt)


def verify(const uint64_t[:, ::1] queries, const int64_t[::1] qi,
           const uint64_t[:, ::1] database, const int64_t[::1] rows,
           const uint64_t[:, ::1] masks, int s, int r, int32_t[::1] out):
    """Multi-index hashing candidates: out[c] = the distance of (qi[c], rows[c]), or -1 when it
    exceeds r or an earlier table (a row of masks, substring within s) reports the pair."""
    cdef Py_ssize_t nc = qi.shape[0]
    if nc == 0:
        return
    with nogil:
        _verify(&queries[0, 0], &qi[0], &database[0, 0], &rows[0], nc, <int>queries.shape[1],
                &masks[0, 0], <int>masks.shape[0], s, r, &out[0])


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
    cdef uint32_t* cand_j
    cdef uint16_t* cand_d
    cdef int64_t* cnt
    cdef int64_t* ranked
    cdef uint16_t* ranked_d
    cdef int64_t* hits_at
    cdef int64_t hits
    cdef int32_t label
    cdef double ap
    cdef int failed[1]
    if nq == 0:
        return
    failed[0] = 0
    with nogil, parallel(num_threads=num_threads):
        t = threadid()
        cand_j = <uint32_t*>malloc(ndb * sizeof(uint32_t))
        cand_d = <uint16_t*>malloc(ndb * sizeof(uint16_t))
        cnt = <int64_t*>malloc(4 * (maxd + 2) * sizeof(int64_t))
        ranked = <int64_t*>malloc((k + 1) * sizeof(int64_t))
        ranked_d = <uint16_t*>malloc((k + 1) * sizeof(uint16_t))
        if (cand_j == NULL or cand_d == NULL or cnt == NULL or ranked == NULL
                or ranked_d == NULL):
            failed[0] = 1
        else:
            hits_at = &out_hits[t, 0]
            for i in prange(nq, schedule="dynamic", chunksize=8):
                threshold = maxd
                nc = _collect(&queries[i, 0], &database[0, 0], ndb, words, k, maxd,
                              cand_j, cand_d, cnt, &threshold)
                _place(nc, cand_j, cand_d, cnt, maxd, threshold, k, ranked, ranked_d)
                label = query_labels[i]
                hits = 0
                ap = 0.0
                for p in range(k):
                    if database_labels[ranked[p]] == label:
                        hits = hits + 1
                        ap = ap + (<double>hits) / (p + 1)
                        hits_at[p] += 1
                if hits > 0:
                    out_ap[i] = ap / hits
                else:
                    out_ap[i] = 0.0
        free(cand_j)
        free(cand_d)
        free(cnt)
        free(ranked)
        free(ranked_d)
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
    (out_ap; 0 when the database holds no relevant item). See dlbhc_whole_ranking."""
    cdef Py_ssize_t nq = queries.shape[0], ndb = database.shape[0], i
    cdef int words = <int>queries.shape[1], maxd = 64 * words
    cdef uint16_t* dist
    cdef int64_t* scratch
    cdef uint32_t* ranks
    cdef int failed[1]
    if nq == 0:
        return
    failed[0] = 0
    with nogil, parallel(num_threads=num_threads):
        dist = <uint16_t*>malloc(ndb * sizeof(uint16_t))
        scratch = <int64_t*>malloc(6 * (maxd + 1) * sizeof(int64_t))
        ranks = <uint32_t*>malloc(2 * ndb * sizeof(uint32_t))
        if dist == NULL or scratch == NULL or ranks == NULL:
            failed[0] = 1
        else:
            for i in prange(nq, schedule="dynamic", chunksize=4):
                _distance_row(&queries[i, 0], &database[0, 0], ndb, words, dist)
                out_ap[i] = _whole_ranking(dist, &database_labels[0], query_labels[i], ndb, maxd,
                                           &out_all[i, 0], &out_relevant[i, 0], scratch, ranks)
        free(dist)
        free(scratch)
        free(ranks)
    if failed[0]:
        raise MemoryError(f"could not allocate the ranking buffers for {ndb} database items")


# ----------------------------------------------------------------------------------------------
# radius search

def radius_counts(const uint64_t[:, ::1] queries, const uint64_t[:, ::1] database, int r,
                  int64_t[:, ::1] out_counts, int num_threads):
    """out_counts[i, d] = number of database items at distance d (0..r) from query i."""
    cdef Py_ssize_t nq = queries.shape[0], ndb = database.shape[0], i, j
    cdef int words = <int>queries.shape[1], d
    cdef uint16_t* dist
    cdef int failed[1]
    if nq == 0:
        return
    failed[0] = 0
    with nogil, parallel(num_threads=num_threads):
        dist = <uint16_t*>malloc(ndb * sizeof(uint16_t))
        if dist == NULL:
            failed[0] = 1
        else:
            for i in prange(nq, schedule="dynamic", chunksize=4):
                _distance_row(&queries[i, 0], &database[0, 0], ndb, words, dist)
                for j in range(ndb):
                    d = dist[j]
                    if d <= r:
                        out_counts[i, d] += 1
        free(dist)
    if failed[0]:
        raise MemoryError(f"could not allocate a distance buffer for {ndb} database items")


def radius_fill(const uint64_t[:, ::1] queries, const uint64_t[:, ::1] database, int r,
                int64_t[:, ::1] offsets, int64_t[::1] out_ids, uint16_t[::1] out_d,
                int num_threads):
    """Scatter the items within radius r: offsets[i, d] is where query i's items at distance d
    start in out_ids/out_d (advanced in place); database order is kept within a distance."""
    cdef Py_ssize_t nq = queries.shape[0], ndb = database.shape[0], i, j, p
    cdef int words = <int>queries.shape[1], d
    cdef uint16_t* dist
    cdef int failed[1]
    if nq == 0:
        return
    failed[0] = 0
    with nogil, parallel(num_threads=num_threads):
        dist = <uint16_t*>malloc(ndb * sizeof(uint16_t))
        if dist == NULL:
            failed[0] = 1
        else:
            for i in prange(nq, schedule="dynamic", chunksize=4):
                _distance_row(&queries[i, 0], &database[0, 0], ndb, words, dist)
                for j in range(ndb):
                    d = dist[j]
                    if d <= r:
                        p = offsets[i, d]
                        offsets[i, d] = p + 1
                        out_ids[p] = j
                        out_d[p] = <uint16_t>d
        free(dist)
    if failed[0]:
        raise MemoryError(f"could not allocate a distance buffer for {ndb} database items")
