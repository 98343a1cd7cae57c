/* Hamming kernels of dlbhc_caffe.hamming (_hamming.pyx declares and calls them).

   Packed codes are uint64 words: bit j of a code lives in word j / 64 at bit position j % 64
   (least significant first); unused high bits of the last word are zero. Included after
   Python.h (Py_ssize_t). Every function trusts its arguments: the Python layer checks them. */
#ifndef DLBHC_HAMMING_KERNELS_H
#define DLBHC_HAMMING_KERNELS_H

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

/* The distance kernels, in C for the instruction sets: POPCNT for __builtin_popcountll, and
   AVX-512 VPOPCNTDQ (eight 64-bit popcounts at once) chosen at run time when the CPU has it.
   The build flags stay generic; each kernel names its own target. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#define DLBHC_X86 1
#define DLBHC_POPCNT __attribute__((target("popcnt")))
#define DLBHC_AVX512 __attribute__((target("popcnt,avx512f,avx512vpopcntdq")))
#else
#define DLBHC_X86 0
#define DLBHC_POPCNT
#endif

static int dlbhc_has_popcnt = 1;   /* set by dlbhc_cpu_init */
static int dlbhc_has_avx512 = 0;   /* the CPU and OS run AVX-512 VPOPCNTDQ */
static int dlbhc_use_avx512 = 0;   /* the kernels use it (switchable for tests) */

static void dlbhc_cpu_init(void) {
#if DLBHC_X86
    __builtin_cpu_init();
    dlbhc_has_popcnt = __builtin_cpu_supports("popcnt") ? 1 : 0;
    dlbhc_has_avx512 = (__builtin_cpu_supports("avx512f")
                        && __builtin_cpu_supports("avx512vpopcntdq")) ? 1 : 0;
#endif
    dlbhc_use_avx512 = dlbhc_has_avx512;
}

static inline DLBHC_POPCNT int dlbhc_distance(const uint64_t *a, const uint64_t *b,
                                               int words) {
    int d = 0;
    for (int w = 0; w < words; w++) d += __builtin_popcountll(a[w] ^ b[w]);
    return d;
}

/* ---- packing: bit j of a code -> word j / 64, bit j % 64 ---- */

static void dlbhc_pack_row(const uint8_t *codes, Py_ssize_t bits, uint64_t *out) {
    for (Py_ssize_t w = 0; w * 64 < bits; w++) {
        const Py_ssize_t width = bits - w * 64 < 64 ? bits - w * 64 : 64;
        const uint8_t *c = codes + w * 64;
        uint64_t word = 0;
        for (Py_ssize_t b = 0; b < width; b++) word |= (uint64_t)(c[b] != 0) << b;
        out[w] = word;
    }
}

static void dlbhc_unpack_row(const uint64_t *packed, Py_ssize_t bits, uint8_t *out) {
    for (Py_ssize_t j = 0; j < bits; j++) out[j] = (uint8_t)((packed[j >> 6] >> (j & 63)) & 1u);
}

/* ---- all distances of one query: out[j] = distance(q, db[j]) ---- */

static DLBHC_POPCNT void dlbhc_distance_row_scalar(const uint64_t *q, const uint64_t *db,
                                                   Py_ssize_t n, int words, uint16_t *out) {
    if (words == 1) {
        const uint64_t q0 = q[0];
        for (Py_ssize_t j = 0; j < n; j++) out[j] = (uint16_t)__builtin_popcountll(q0 ^ db[j]);
    } else {
        for (Py_ssize_t j = 0; j < n; j++) out[j] = (uint16_t)dlbhc_distance(q, db + j * words, words);
    }
}

#if DLBHC_X86
static DLBHC_AVX512 void dlbhc_distance_row_avx512(const uint64_t *q, const uint64_t *db,
                                                   Py_ssize_t n, int words, uint16_t *out) {
    if (words != 1) {
        dlbhc_distance_row_scalar(q, db, n, words, out);
        return;
    }
    const uint64_t q0 = q[0];
    const __m512i vq = _mm512_set1_epi64((long long)q0);
    Py_ssize_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m512i d = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512((const void *)(db + j)), vq));
        _mm_storeu_si128((__m128i *)(out + j), _mm512_cvtepi64_epi16(d));
    }
    for (; j < n; j++) out[j] = (uint16_t)__builtin_popcountll(q0 ^ db[j]);
}
#endif

static void dlbhc_distance_row(const uint64_t *q, const uint64_t *db, Py_ssize_t n,
                               int words, uint16_t *out) {
#if DLBHC_X86
    if (dlbhc_use_avx512) { dlbhc_distance_row_avx512(q, db, n, words, out); return; }
#endif
    dlbhc_distance_row_scalar(q, db, n, words, out);
}

/* ---- top k, pass 1: the candidates ----
   Keep, in database order, every item that can be among the k nearest (cand_j, cand_d) and
   find the k-th smallest distance (*threshold). Every item at distance <= threshold is
   kept; kept items farther than it are skipped by pass 2. Candidate indices are uint32: the
   public API refuses databases of 2^32 codes or more. */

/* Adaptive scan from an upper bound of the k-th distance: once k items are kept, bound is
   the k-th smallest kept distance and cum counts the kept items within it, so the bound
   tightens as the scan goes. Returns -1 when fewer than k items lie within the starting
   bound (the caller then starts again from the largest distance). */
#define DLBHC_KEEP(jj, dd) do {                                       \
        cand_j[nc] = (uint32_t)(jj); cand_d[nc] = (uint16_t)(dd); nc++; \
        cnt[(dd)]++;                                                   \
        if ((dd) <= bound) {                                           \
            cum++;                                                     \
            while (cum - cnt[bound] >= k) { cum -= cnt[bound]; bound--; } \
        }                                                              \
    } while (0)

static DLBHC_POPCNT Py_ssize_t dlbhc_collect_adaptive(
        const uint64_t *q, const uint64_t *db, Py_ssize_t n, int words, Py_ssize_t k,
        int maxd, int bound, uint32_t *cand_j, uint16_t *cand_d, int64_t *cnt,
        int *threshold) {
    Py_ssize_t nc = 0, cum = 0, j = 0;
    memset(cnt, 0, sizeof(int64_t) * (size_t)(maxd + 1));
    if (words == 1) {
        const uint64_t q0 = q[0];
        for (; j + 8 <= n; j += 8) {      /* one branch per 8 items in the common case */
            int d[8], least = maxd + 1;
            for (int t = 0; t < 8; t++) {
                d[t] = __builtin_popcountll(q0 ^ db[j + t]);
                least = d[t] < least ? d[t] : least;
            }
            if (least <= bound) {
                for (int t = 0; t < 8; t++) if (d[t] <= bound) DLBHC_KEEP(j + t, d[t]);
            }
        }
        for (; j < n; j++) {
            int d = __builtin_popcountll(q0 ^ db[j]);
            if (d <= bound) DLBHC_KEEP(j, d);
        }
    } else {
        for (; j < n; j++) {
            int d = dlbhc_distance(q, db + j * words, words);
            if (d <= bound) DLBHC_KEEP(j, d);
        }
    }
    if (cum < k) return -1;
    *threshold = bound;
    return nc;
}

/* Branch-free scan with a fixed bound: the indices of the items within it. */
static DLBHC_POPCNT Py_ssize_t dlbhc_within_scalar(const uint64_t *q, const uint64_t *db,
                                                   Py_ssize_t n, int words, int bound,
                                                   uint32_t *kept) {
    Py_ssize_t nc = 0;
    if (words == 1) {
        const uint64_t q0 = q[0];
        for (Py_ssize_t j = 0; j < n; j++) {
            kept[nc] = (uint32_t)j;
            nc += __builtin_popcountll(q0 ^ db[j]) <= bound;
        }
    } else {
        for (Py_ssize_t j = 0; j < n; j++) {
            kept[nc] = (uint32_t)j;
            nc += dlbhc_distance(q, db + j * words, words) <= bound;
        }
    }
    return nc;
}

#if DLBHC_X86
static DLBHC_AVX512 Py_ssize_t dlbhc_within_avx512(const uint64_t *q, const uint64_t *db,
                                                   Py_ssize_t n, int words, int bound,
                                                   uint32_t *kept) {
    if (words != 1) return dlbhc_within_scalar(q, db, n, words, bound, kept);
    const uint64_t q0 = q[0];
    const __m512i vq = _mm512_set1_epi64((long long)q0);
    const __m512i vb = _mm512_set1_epi64(bound);
    const __m512i step = _mm512_set1_epi32(16);
    __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    Py_ssize_t nc = 0, j = 0;
    /* each store writes 16 lanes at nc <= j, so it stays below index j + 16 <= n */
    for (; j + 16 <= n; j += 16) {
        __m512i d0 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512((const void *)(db + j)), vq));
        __m512i d1 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512((const void *)(db + j + 8)), vq));
        __mmask16 m = _mm512_kunpackb(_mm512_cmple_epu64_mask(d1, vb),
                                      _mm512_cmple_epu64_mask(d0, vb));
        _mm512_storeu_si512((void *)(kept + nc), _mm512_maskz_compress_epi32(m, idx));
        nc += __builtin_popcount((unsigned)_cvtmask16_u32(m));
        idx = _mm512_add_epi32(idx, step);
    }
    for (; j < n; j++) {
        kept[nc] = (uint32_t)j;
        nc += __builtin_popcountll(q0 ^ db[j]) <= bound;
    }
    return nc;
}
#endif

/* An upper bound of the k-th smallest distance, likely tight: a high quantile of the
   distances to an evenly spread sample of the database; -1 when the database is too small
   for a sample to help. */
static DLBHC_POPCNT int dlbhc_initial_bound(const uint64_t *q, const uint64_t *db,
                                            Py_ssize_t n, int words, Py_ssize_t k, int maxd,
                                            int64_t *cnt) {
    const Py_ssize_t samples = 1024;
    if (n < 8 * samples) return -1;
    const double expected = (double)k * (double)samples / (double)n;
    const double wanted = expected + 4.0 * sqrt(expected) + 2.0;
    if (wanted >= (double)samples) return maxd;
    const Py_ssize_t stride = n / samples;
    memset(cnt, 0, sizeof(int64_t) * (size_t)(maxd + 1));
    for (Py_ssize_t s = 0; s < samples; s++)
        cnt[dlbhc_distance(q, db + s * stride * words, words)]++;
    Py_ssize_t seen = 0;
    for (int b = 0; b <= maxd; b++) {
        seen += cnt[b];
        if ((double)seen >= wanted) return b;
    }
    return maxd;
}

/* Candidates are cut into four consecutive runs, handled side by side (so that
   consecutive items of one distance bucket do not wait on each other's counter). */
#define DLBHC_RUNS(nc, begin, end) do {                                   \
        const Py_ssize_t run_ = (nc) / 4;                                 \
        for (int r_ = 0; r_ < 4; r_++) {                                  \
            (begin)[r_] = r_ * run_;                                      \
            (end)[r_] = r_ == 3 ? (nc) : (r_ + 1) * run_;                 \
        }                                                                 \
    } while (0)

/* cnt[r * stride + d]: the number of candidates of run r at distance d. */
static void dlbhc_run_counts(Py_ssize_t nc, const uint16_t *cand_d, int64_t *cnt,
                             Py_ssize_t stride) {
    Py_ssize_t begin[4], end[4];
    DLBHC_RUNS(nc, begin, end);
    memset(cnt, 0, sizeof(int64_t) * (size_t)(4 * stride));
    const Py_ssize_t run = end[0] - begin[0];
    for (Py_ssize_t i = 0; i < run; i++) {
        cnt[cand_d[begin[0] + i]]++;
        cnt[stride + cand_d[begin[1] + i]]++;
        cnt[2 * stride + cand_d[begin[2] + i]]++;
        cnt[3 * stride + cand_d[begin[3] + i]]++;
    }
    for (Py_ssize_t c = begin[3] + run; c < end[3]; c++) cnt[3 * stride + cand_d[c]]++;
}

/* ---- whole-ranking statistics of one query ----
   dist: the query's distances (high bit free: codes have at most 32704 bits); labels: the
   database labels. Fills all[d] / relevant[d] (items and relevant items at distance d) and
   returns the average precision over the whole stable ranking (0 without relevant items).
   The ranking is never sorted: a relevant item's rank is the number of items in closer
   buckets plus its place among its bucket's items in database order, counted as the scan
   goes. Branch-free; two histograms so that consecutive items of one bucket do not wait
   on each other's counter. scratch: 6 * (maxd + 1) int64; ranks: 2 * n uint32. */
static double dlbhc_whole_ranking(uint16_t *dist, const int32_t *labels, int32_t label,
                                  Py_ssize_t n, int maxd, int64_t *all, int64_t *relevant,
                                  int64_t *scratch, uint32_t *ranks) {
    const Py_ssize_t width = 2 * (maxd + 1);
    int64_t *h0 = scratch, *h1 = scratch + width;
    memset(scratch, 0, sizeof(int64_t) * (size_t)(2 * width));
    Py_ssize_t j = 0;
    for (; j + 2 <= n; j += 2) {
        const int m0 = labels[j] == label, m1 = labels[j + 1] == label;
        h0[2 * dist[j] + m0]++;
        h1[2 * dist[j + 1] + m1]++;
        dist[j] |= (uint16_t)(m0 << 15);
        dist[j + 1] |= (uint16_t)(m1 << 15);
    }
    for (; j < n; j++) {
        const int m = labels[j] == label;
        h0[2 * dist[j] + m]++;
        dist[j] |= (uint16_t)(m << 15);
    }
    int64_t *rank = scratch + 2 * width;
    int64_t *hits = rank + (maxd + 1);
    int64_t closer = 0, closer_relevant = 0;
    for (int d = 0; d <= maxd; d++) {
        const int64_t r = h0[2 * d + 1] + h1[2 * d + 1];
        all[d] = r + h0[2 * d] + h1[2 * d];
        relevant[d] = r;
        rank[d] = closer;
        hits[d] = closer_relevant;
        closer += all[d];
        closer_relevant += r;
    }
    uint32_t *at_hits = ranks, *at_rank = ranks + n;
    Py_ssize_t nr = 0;
    for (j = 0; j < n; j++) {
        const int v = dist[j], d = v & 0x7fff, m = v >> 15;
        const int64_t c = ++rank[d];
        const int64_t r = (hits[d] += m);
        at_hits[nr] = (uint32_t)r;
        at_rank[nr] = (uint32_t)c;
        nr += m;
    }
    if (nr == 0) return 0.0;
    double ap = 0.0;
    for (Py_ssize_t i = 0; i < nr; i++) ap += (double)at_hits[i] / (double)at_rank[i];
    return ap / (double)nr;
}

/* The candidates of one query: returns their number, with cand_j/cand_d (n entries each),
   *threshold and the per-run counts cnt (4 * (maxd + 2) entries, run stride maxd + 2). */
static DLBHC_POPCNT Py_ssize_t dlbhc_collect(const uint64_t *q, const uint64_t *db,
                                             Py_ssize_t n, int words, Py_ssize_t k,
                                             int maxd, uint32_t *cand_j, uint16_t *cand_d,
                                             int64_t *cnt, int *threshold) {
    const Py_ssize_t stride = maxd + 2;
    const int bound = dlbhc_initial_bound(q, db, n, words, k, maxd, cnt);
    Py_ssize_t nc;
    if (bound >= 0) {
#if DLBHC_X86
        if (dlbhc_use_avx512) nc = dlbhc_within_avx512(q, db, n, words, bound, cand_j);
        else
#endif
        nc = dlbhc_within_scalar(q, db, n, words, bound, cand_j);
        /* the distances of the kept items, and their per-run counts */
        Py_ssize_t begin[4], end[4];
        DLBHC_RUNS(nc, begin, end);
        memset(cnt, 0, sizeof(int64_t) * (size_t)(4 * stride));
        const Py_ssize_t run = end[0] - begin[0];
#define DLBHC_MEASURE(r, c) do {                                                     \
        const int d_ = dlbhc_distance(q, db + (Py_ssize_t)cand_j[(c)] * words, words); \
        cand_d[(c)] = (uint16_t)d_;                                                  \
        cnt[(r) * stride + d_]++;                                                    \
    } while (0)
        for (Py_ssize_t i = 0; i < run; i++) {
            DLBHC_MEASURE(0, begin[0] + i);
            DLBHC_MEASURE(1, begin[1] + i);
            DLBHC_MEASURE(2, begin[2] + i);
            DLBHC_MEASURE(3, begin[3] + i);
        }
        for (Py_ssize_t c = begin[3] + run; c < end[3]; c++) DLBHC_MEASURE(3, c);
#undef DLBHC_MEASURE
        Py_ssize_t cum = 0;
        for (int b = 0; b <= bound; b++) {
            cum += cnt[b] + cnt[stride + b] + cnt[2 * stride + b] + cnt[3 * stride + b];
            if (cum >= k) { *threshold = b; return nc; }
        }
        /* fewer than k items within the estimated bound: fall through to a full scan */
    }
    nc = dlbhc_collect_adaptive(q, db, n, words, k, maxd, maxd, cand_j, cand_d, cnt,
                                threshold);
    dlbhc_run_counts(nc, cand_d, cnt, stride);
    return nc;
}

/* ---- top k, pass 2: scatter the candidates to their ranks ----
   A counting sort on the distance: distance d < threshold goes to the running offset of its
   bucket, distance == threshold while ranks remain; ties therefore keep database order
   (run r's items of a bucket go after those of runs 0..r-1). Branch-free: farther
   candidates, and ties past rank k, land in the spare slot out[k], so out_ids and out_d
   need k + 1 entries. cnt holds the per-run counts from dlbhc_collect (overwritten). */
static void dlbhc_place(Py_ssize_t nc, const uint32_t *cand_j, const uint16_t *cand_d,
                        int64_t *cnt, int maxd, int threshold, Py_ssize_t k,
                        int64_t *out_ids, uint16_t *out_d) {
    const Py_ssize_t stride = maxd + 2;
    const int far = threshold + 1;
    Py_ssize_t begin[4], end[4];
    DLBHC_RUNS(nc, begin, end);
    Py_ssize_t start = 0;                  /* counts -> first rank of each (bucket, run) */
    for (int d = 0; d <= threshold; d++) {
        for (int r = 0; r < 4; r++) {
            const Py_ssize_t size = cnt[r * stride + d];
            cnt[r * stride + d] = start;
            start += size;
        }
    }
    for (int r = 0; r < 4; r++) cnt[r * stride + far] = k;
    int64_t *o0 = cnt, *o1 = cnt + stride, *o2 = cnt + 2 * stride, *o3 = cnt + 3 * stride;
#define DLBHC_PUT(o, c) do {                                              \
        const int d = cand_d[(c)];                                        \
        const int b = d <= threshold ? d : far;                           \
        Py_ssize_t p = (o)[b];                                            \
        (o)[b] = p + 1;                                                   \
        p = p < k ? p : k;                                                \
        out_ids[p] = (int64_t)cand_j[(c)];                                \
        out_d[p] = (uint16_t)d;                                           \
    } while (0)
    const Py_ssize_t run = end[0] - begin[0];
    for (Py_ssize_t i = 0; i < run; i++) {
        DLBHC_PUT(o0, begin[0] + i);
        DLBHC_PUT(o1, begin[1] + i);
        DLBHC_PUT(o2, begin[2] + i);
        DLBHC_PUT(o3, begin[3] + i);
    }
    for (Py_ssize_t c = begin[3] + run; c < end[3]; c++) DLBHC_PUT(o3, c);
#undef DLBHC_PUT
}

/* ---- top k of ONE query, its scan split across threads ----
   The database is cut into T consecutive slices; thread t collects its slice's candidates
   (every item within the slice's own k-th distance, which is no smaller than the whole
   database's k-th distance G, so every item within G is kept). Their per-distance counts give
   G and, for each (distance, slice), the first rank: items of a distance go in slice order and,
   within a slice, in database order, so the ranking is the same stable order as one thread's.
   cand_j / cand_d: n entries each; hist: T * (maxd + 2) int64; thr: T ints. */
static void dlbhc_topk_split(const uint64_t *q, const uint64_t *db, Py_ssize_t n, int words,
                             Py_ssize_t k, int maxd, int T, uint32_t *cand_j,
                             uint16_t *cand_d, int64_t *hist, int64_t *cnt_all,
                             int64_t *out_ids, uint16_t *out_d) {
    const Py_ssize_t stride = maxd + 2;
    int global = maxd;
    #pragma omp parallel num_threads(T)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const Py_ssize_t a = n * t / nt, b = n * (t + 1) / nt, len = b - a;
        int64_t *h = hist + t * stride, *cnt = cnt_all + t * 4 * stride;
        Py_ssize_t nc = 0;
        memset(h, 0, sizeof(int64_t) * (size_t)stride);
        if (len > 0) {
            int thr = maxd;
            const Py_ssize_t kt = k < len ? k : len;
            nc = dlbhc_collect(q, db + a * words, len, words, kt, maxd, cand_j + a, cand_d + a,
                               cnt, &thr);
            Py_ssize_t kept = 0;          /* keep those within the slice's threshold, in order */
            for (Py_ssize_t c = 0; c < nc; c++) {
                const int d = cand_d[a + c];
                cand_j[a + kept] = cand_j[a + c];
                cand_d[a + kept] = (uint16_t)d;
                kept += d <= thr;
                h[d] += d <= thr;
            }
            h[maxd + 1] = kept;           /* the slice's candidate count */
        }
        #pragma omp barrier
        #pragma omp single
        {
            Py_ssize_t cum = 0;
            for (int d = 0; d <= maxd; d++) {
                for (int s = 0; s < nt; s++) cum += hist[s * stride + d];
                if (cum >= k) { global = d; break; }
            }
        }   /* implicit barrier */
        /* first rank of (distance d, this slice): items closer, then this distance's items of
           the slices before */
        Py_ssize_t *start = (Py_ssize_t *)cnt;   /* reuse: maxd + 1 entries */
        Py_ssize_t base = 0;
        for (int d = 0; d <= global; d++) {
            Py_ssize_t before = 0, all = 0;
            for (int s = 0; s < nt; s++) {
                before += s < t ? hist[s * stride + d] : 0;
                all += hist[s * stride + d];
            }
            start[d] = base + before;
            base += all;
        }
        const Py_ssize_t kept = len > 0 ? h[maxd + 1] : 0;
        for (Py_ssize_t c = 0; c < kept; c++) {
            const int d = cand_d[a + c];
            if (d > global) continue;
            const Py_ssize_t p = start[d]++;
            if (p < k) {
                out_ids[p] = (int64_t)(a + cand_j[a + c]);
                out_d[p] = (uint16_t)d;
            }
        }
    }
}

/* ---- verify multi-index hashing candidates ----
   For candidate c (query qi[c], database row rows[c]): its distance, or -1 when it is farther
   than r or when one of the n_masks earlier substring masks already finds it (the substring
   there within s: that table reported the pair). masks: n_masks x words. */
static DLBHC_POPCNT void dlbhc_verify(const uint64_t *queries, const int64_t *qi,
                                      const uint64_t *db, const int64_t *rows, Py_ssize_t nc,
                                      int words, const uint64_t *masks, int n_masks, int s,
                                      int r, int32_t *out) {
    for (Py_ssize_t c = 0; c < nc; c++) {
        const uint64_t *q = queries + qi[c] * words, *x = db + rows[c] * words;
        int d = 0;
        for (int w = 0; w < words; w++) d += __builtin_popcountll(q[w] ^ x[w]);
        int keep = d <= r;
        for (int m = 0; m < n_masks && keep; m++) {
            int sub = 0;
            for (int w = 0; w < words; w++)
                sub += __builtin_popcountll((q[w] ^ x[w]) & masks[m * words + w]);
            keep = sub > s;
        }
        out[c] = keep ? d : -1;
    }
}

#endif /* DLBHC_HAMMING_KERNELS_H */
