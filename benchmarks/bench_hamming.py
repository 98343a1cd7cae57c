"""Hamming ranking speed: dlbhc_caffe.hamming against the numpy reference and faiss.

    .venv/bin/python benchmarks/bench_hamming.py            # full run (a few minutes)
    .venv/bin/python benchmarks/bench_hamming.py --quick    # smaller, fewer repeats

(a) The CIFAR-10 protocol of the paper: 10,000 query codes against 50,000 database codes (random
    48-bit codes, 10 random labels), rank the whole database for each query, keep the top 1000,
    and compute mAP@1000 and precision@1..1000.
(b) Single queries (a batch of one) over 1,000,000 random 48-bit codes, k = 10 and k = 1000.

Contenders: ours (dlbhc_caffe.metrics / dlbhc_caffe.hamming.rank, Cython + OpenMP), the numpy
reference (dlbhc_caffe.hamming.reference: table popcount + stable argsort, one thread), and faiss
IndexBinaryFlat on the codes padded to 64 bits, at the best of its settings (use_heap on/off,
query batch sizes 32 and 256: each is tried, the fastest is timed). For faiss the protocol time is
its search plus the metrics computed from its ranking with numpy; its search time alone is shown
too. Every number is the median of repeated runs made in this process; ratios compare numbers
of the same run (>1: ours is faster). The machine may be shared: medians, not minima.
"""
import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dlbhc_caffe import hamming, metrics  # noqa: E402
from dlbhc_caffe.hamming.reference import rank as reference_rank  # noqa: E402

try:
    import faiss
except ImportError:  # the benchmark still runs, without the faiss rows
    faiss = None


def timed(function, repeats):
    """(median seconds, last result) over repeats calls."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def faiss_codes(codes01):
    """0/1 codes -> uint8 bytes padded to a multiple of 8 bytes (64 bits), as faiss wants."""
    packed = np.packbits(codes01, axis=1, bitorder="little")
    width = 8 * ((packed.shape[1] + 7) // 8)
    out = np.zeros((packed.shape[0], width), dtype=np.uint8)
    out[:, : packed.shape[1]] = packed
    return out


def faiss_index(db01):
    index = faiss.IndexBinaryFlat(8 * faiss_codes(db01[:1]).shape[1])
    index.add(faiss_codes(db01))
    return index


FAISS_SETTINGS = [(use_heap, batch) for use_heap in (False, True) for batch in (32, 256)]


def faiss_best(index, queries, k, threads, repeats):
    """(median seconds, (D, I), setting) of faiss at its fastest setting: each setting is tried
    twice on the first 1000 queries, and the fastest is timed on them all."""
    faiss.omp_set_num_threads(threads)
    trials = []
    for use_heap, batch in FAISS_SETTINGS:
        index.use_heap = use_heap
        index.query_batch_size = batch
        seconds, _ = timed(lambda: index.search(queries[:1000], k), 2)
        trials.append((seconds, use_heap, batch))
    _, use_heap, batch = min(trials)
    index.use_heap = use_heap
    index.query_batch_size = batch
    seconds, result = timed(lambda: index.search(queries, k), repeats)
    return seconds, result, f"use_heap={use_heap}, query_batch_size={batch}"


def protocol_metrics(ids, db_labels, q_labels):
    """mAP and precision@k from explicit rankings, with numpy."""
    ap, hits = metrics._ranking_stats(ids, db_labels, q_labels)
    return float(ap.mean()), metrics._precision_from_hits(hits, len(q_labels))


def line(name, seconds, baseline=None, extra=""):
    ratio = f"   x{baseline / seconds:6.2f}" if baseline else " " * 11
    print(f"  {name:<50s} {seconds * 1e3:10.2f} ms{ratio}  {extra}")


def bench_protocol(args, rng):
    n_db, n_q, bits, k = 50_000, 10_000, 48, 1000
    if args.quick:
        n_q = 2_000
    db01 = rng.integers(0, 2, (n_db, bits), dtype=np.uint8)
    q01 = rng.integers(0, 2, (n_q, bits), dtype=np.uint8)
    db_labels = rng.integers(0, 10, n_db)
    q_labels = rng.integers(0, 10, n_q)
    db, q = hamming.pack_codes(db01), hamming.pack_codes(q01)
    print(f"\n(a) protocol: {n_q} queries x {n_db} codes, {bits} bits, top {k}, mAP + "
          f"precision@1..{k}  (median of {args.repeats} runs)")

    reference = None
    if not args.skip_numpy:
        n_ref = min(n_q, args.numpy_queries)

        def numpy_protocol():
            _, ids = reference_rank(q01[:n_ref], db01, k)
            return protocol_metrics(ids, db_labels, q_labels[:n_ref])

        seconds, (ref_map, _) = timed(numpy_protocol, 1)
        reference = (seconds * n_q / n_ref, n_ref, ref_map)
        scaled = f", measured on the first {n_ref} queries and scaled" if n_ref != n_q else ""
        line(f"numpy reference, 1 thread{scaled}", reference[0],
             extra=f"mAP {ref_map:.6f} (those queries)")

    index = faiss_index(db01) if faiss is not None else None
    q_faiss = faiss_codes(q01) if faiss is not None else None
    for threads in args.threads:
        print(f" threads = {threads}")
        ours_seconds, result = timed(
            lambda: metrics.evaluate(db, db_labels, q, q_labels, top_k=k, full=False,
                                     num_threads=threads), args.repeats)
        line("ours: metrics.evaluate (rank + metrics)", ours_seconds,
             extra=f"mAP {result.map_at_k:.6f}")
        ours_rank, _ = timed(lambda: hamming.rank(q, db, k, num_threads=threads), args.repeats)
        line("ours: hamming.rank alone (ids + distances)", ours_rank)
        if index is not None:
            search_seconds, (_, ids), setting = faiss_best(index, q_faiss, k, threads,
                                                           args.repeats)
            metric_seconds, (faiss_map, faiss_precision) = timed(
                lambda: protocol_metrics(ids, db_labels, q_labels), args.repeats)
            same = np.allclose(faiss_precision, result.precision_at_k, rtol=0, atol=1e-12)
            line("faiss: search + numpy metrics", search_seconds + metric_seconds,
                 extra=f"mAP {faiss_map:.6f}; precision@k equal to ours: {same}")
            line("faiss: search alone", search_seconds, extra=setting)
            faiss_protocol = search_seconds + metric_seconds
            print(f"  -> faiss / ours: protocol x{faiss_protocol / ours_seconds:.2f}"
                  f", faiss search alone / our protocol x{search_seconds / ours_seconds:.2f}"
                  f", search / rank x{search_seconds / ours_rank:.2f}")
        if reference is not None:
            ours_subset = result.average_precision_at_k[:reference[1]].mean()
            print(f"  -> numpy reference / ours: x{reference[0] / ours_seconds:.1f} (mAP on the "
                  f"reference's queries: ours {ours_subset:.6f}, equal: "
                  f"{abs(ours_subset - reference[2]) < 1e-12})")


def bench_single(args, rng):
    n_db, bits = 1_000_000, 48
    n_queries = 20 if args.quick else 100
    db01 = rng.integers(0, 2, (n_db, bits), dtype=np.uint8)
    q01 = rng.integers(0, 2, (n_queries, bits), dtype=np.uint8)
    db, q = hamming.pack_codes(db01), hamming.pack_codes(q01)
    index = faiss_index(db01) if faiss is not None else None
    q_faiss = faiss_codes(q01) if faiss is not None else None
    print(f"\n(b) single queries over {n_db} codes, {bits} bits: median time per query over "
          f"{n_queries} queries (one query per call; ours shares queries out to threads, so one "
          f"query runs on one thread whatever the setting)")

    def per_query(function):
        times = []
        for i in range(n_queries):
            start = time.perf_counter()
            function(i)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    for k in (10, 1000):
        print(f" k = {k}")
        reference_seconds = None
        if not args.skip_numpy:
            n_ref = 5
            times = []
            for i in range(n_ref):
                start = time.perf_counter()
                reference_rank(q01[i:i + 1], db01, k)
                times.append(time.perf_counter() - start)
            reference_seconds = statistics.median(times)
            line(f"numpy reference, 1 thread ({n_ref} queries)", reference_seconds)
        for threads in args.threads:
            ours = per_query(lambda i: hamming.rank(q[i:i + 1], db, k, num_threads=threads))
            best = None
            if index is not None:
                faiss.omp_set_num_threads(threads)
                for use_heap in (False, True):
                    index.use_heap = use_heap
                    seconds = per_query(lambda i: index.search(q_faiss[i:i + 1], k))
                    if best is None or seconds < best[0]:
                        best = (seconds, f"use_heap={use_heap}")
                line(f"faiss, {threads} thread(s) ({best[1]})", best[0])
            line(f"ours, {threads} thread(s)", ours, best[0] if best else None,
                 "(ratio: faiss / ours)" if best else "")
            if reference_seconds is not None:
                print(f"  -> ours vs numpy reference: x{reference_seconds / ours:.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2,000 protocol queries, 20 single queries, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per measurement (default 7, 3 with --quick)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-numpy", action="store_true",
                        help="leave out the (slow) numpy reference")
    parser.add_argument("--numpy-queries", type=int, default=None,
                        help="protocol queries the numpy reference runs, its time scaled to all "
                             "(default 2000, 500 with --quick; about 10 ms each)")
    parser.add_argument("--only", choices=("protocol", "single"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.numpy_queries is None:
        args.numpy_queries = 500 if args.quick else 2000
    print(f"dlbhc_caffe.hamming benchmark: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, AVX-512 kernels: {hamming._hamming.simd()}, "
          f"faiss {faiss.__version__ if faiss else 'not installed'}, numpy {np.__version__}")
    rng = np.random.default_rng(args.seed)
    if args.only in (None, "protocol"):
        bench_protocol(args, rng)
    if args.only in (None, "single"):
        bench_single(args, rng)


if __name__ == "__main__":
    main()
