#!/usr/bin/env python
"""Search at scale, side by side in one run (medians; the machine is shared, so the load average
is printed with the figures).

    .venv/bin/python benchmarks/bench_scale.py                  # the issue's sizes
    .venv/bin/python benchmarks/bench_scale.py --quick          # a tenth of them

1. index: N images' codes (48 bits) + fc7 (4096 wide) through IndexWriter.append (the path
   `tools/search.py index` takes), peak RSS of this process (ru_maxrss) while writing;
   4 shards merged == the one-go index.
2. radius 2 over M 48-bit codes, clustered (class centres + a few flipped bits) and random:
   multi-index hashing vs the linear scan vs faiss IndexBinaryFlat range_search and
   IndexBinaryMultiHash; identical results checked.
3. top-10 of one query over 1,000,000 codes vs reading the codes once.
4. (--milvus) Milvus BIN_FLAT / BIN_IVF_FLAT latency and batch throughput beside ours and faiss.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlbhc_caffe import hamming  # noqa: E402
from dlbhc_caffe.search import MultiIndexHash, load_index  # noqa: E402
from dlbhc_caffe.search.builder import IndexWriter, merge, shard_range  # noqa: E402


def median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def codes48(rng, n, clustered, centres=100, flips=3):
    """Packed 48-bit codes: class centres with `flips` random bits flipped each, or random."""
    mask = np.uint64((1 << 48) - 1)
    if not clustered:
        return (rng.integers(0, 2**63, n, dtype=np.uint64) & mask).reshape(n, 1)
    centre = rng.integers(0, 2**63, centres, dtype=np.uint64) & mask
    out = centre[rng.integers(0, centres, n)]
    for _ in range(flips):
        out ^= np.left_shift(np.uint64(1), rng.integers(0, 48, n).astype(np.uint64))
    return out.reshape(n, 1)


# ---------------------------------------------------------------- 1. index

def write_index(path, start, stop, fc7_dim, fc7_dtype, chunk, seed=0):
    n = stop - start
    paths = [f"/data/images/{i:08d}.jpg" for i in range(start, stop)]
    writer = IndexWriter.create(path, 48, n, sum(len(p) for p in paths), fc7_dim, fc7_dtype,
                                True, {"model": "synthetic"},
                                {"list": "synthetic", "total": n})
    for c in range(start // chunk * chunk, stop, chunk):
        # rows depend on their position only (a chunk of the global grid, seeded by its start),
        # so shards hold exactly the one-go index's rows
        rng = np.random.default_rng(seed + c)
        codes = codes48(rng, chunk, clustered=True)
        fc7 = rng.standard_normal((chunk, fc7_dim), np.float32)
        a, b = max(c, start), min(c + chunk, stop)
        writer.append(codes[a - c:b - c], np.arange(a, b), paths[a - start:b - start],
                      np.arange(a, b) % 100, fc7[a - c:b - c], done=b - start)
    writer.finish()


def bench_index(args, work):
    print(f"\n1. index: {args.n_index:,} images, 48-bit codes + fc7 {args.fc7_dim} "
          f"{args.fc7_dtype}, {args.chunk} rows per append")
    # in a child process, so that its peak RSS is the writing's alone
    start = time.perf_counter()
    child = subprocess.run([sys.executable, __file__, "--write-only", str(work / "one.index"),
                            "--n-index", str(args.n_index), "--fc7-dim", str(args.fc7_dim),
                            "--fc7-dtype", args.fc7_dtype, "--chunk", str(args.chunk)],
                           check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    child_rss = int(child.stdout.split("VmHWM_KB=")[1].split()[0]) / 1024
    size = os.path.getsize(work / "one.index") / 2**30
    print(f"   wrote {size:.2f} GiB in {seconds:.1f} s ({args.n_index / seconds:,.0f} rows/s); "
          f"peak RSS of the writing process {child_rss:.0f} MB")
    (work / "one.index").unlink()
    n = args.n_merge
    write_index(work / "m.index", 0, n, args.fc7_dim, args.fc7_dtype, args.chunk)
    shards = []
    for i in range(1, 5):
        a, b = shard_range(n, (i, 4))
        write_index(work / f"s{i}.index", a, b, args.fc7_dim, args.fc7_dtype, args.chunk)
        shards.append(work / f"s{i}.index")
    start = time.perf_counter()
    merge(shards, work / "merged.index")
    seconds = time.perf_counter() - start
    one, merged = load_index(work / "m.index"), load_index(work / "merged.index")
    same = all(np.array_equal(getattr(one, a), getattr(merged, a))
               for a in ("packed", "ids", "labels", "fc7", "path_offsets", "path_bytes"))
    print(f"   merge of 4 shards ({n:,} rows): {seconds:.1f} s; equal to the one-go index: {same}")
    for p in [*shards, work / "m.index", work / "merged.index"]:
        p.unlink()
    return same


# ---------------------------------------------------------------- 2. radius

def bench_radius(args):
    import faiss  # noqa: PLC0415

    rng = np.random.default_rng(1)
    print(f"\n2. radius 2 over {args.n_radius:,} 48-bit codes, {args.queries} queries "
          f"(drawn from the database), median of {args.repeats}")
    ok = True
    for clustered in (True, False):
        db = codes48(rng, args.n_radius, clustered)
        q = db[rng.choice(args.n_radius, args.queries, replace=False)]
        build, tables = median_time(lambda: MultiIndexHash(db, 48, 2), 1)
        scan_s, scan = median_time(lambda: hamming.radius(q, db, 2), args.repeats)
        mih_s, mih = median_time(lambda: tables.radius(q, 2), args.repeats)
        same = all(np.array_equal(a, b) for a, b in zip(scan, mih))
        fb = np.ascontiguousarray(db.view(np.uint8)[:, :6])
        fq = np.ascontiguousarray(q.view(np.uint8)[:, :6])
        flat = faiss.IndexBinaryFlat(48)
        flat.add(fb)
        flat_s, (lims, _, ids) = median_time(lambda: flat.range_search(fq, 3), args.repeats)
        multi = faiss.IndexBinaryMultiHash(48, 3, 16)
        multi.add(fb)
        multi_s, (mlims, _, mids) = median_time(lambda: multi.range_search(fq, 3),
                                               args.repeats)
        faiss_same = all(set(ids[lims[i]:lims[i + 1]]) == set(scan[2][scan[0][i]:scan[0][i + 1]])
                         and set(mids[mlims[i]:mlims[i + 1]]) ==
                         set(scan[2][scan[0][i]:scan[0][i + 1]]) for i in range(len(q)))
        ok = ok and same and faiss_same
        kind = "clustered (100 centres, 3 flipped bits)" if clustered else "random"
        print(f"   {kind}: {scan[0][-1] / len(q):,.0f} results per query")
        print(f"     linear scan (ours)         {1e3 * scan_s / len(q):9.3f} ms/query")
        print(f"     multi-index hashing (ours) {1e3 * mih_s / len(q):9.3f} ms/query  "
              f"x{scan_s / mih_s:.1f} vs scan  (tables built in {build:.1f} s)")
        print(f"     faiss IndexBinaryFlat      {1e3 * flat_s / len(q):9.3f} ms/query  "
              f"x{scan_s / flat_s:.2f}")
        print(f"     faiss IndexBinaryMultiHash {1e3 * multi_s / len(q):9.3f} ms/query  "
              f"x{scan_s / multi_s:.2f}")
        print(f"     identical results: ours {same}, faiss (as sets) {faiss_same}")
    return ok


# ---------------------------------------------------------------- 3. top-k

def bench_topk(args):
    rng = np.random.default_rng(2)
    n = args.n_topk
    db = codes48(rng, n, clustered=False)
    q = codes48(rng, 200, clustered=False)
    print(f"\n3. top-10 of one query over {n:,} codes, median over 200 queries")
    for threads in (1, 2):
        read_s, _ = median_time(lambda: np.bitwise_or.reduce(db, axis=0), 21)
        times = []
        for i in range(len(q)):
            start = time.perf_counter()
            hamming.rank(q[i:i + 1], db, 10, num_threads=threads)
            times.append(time.perf_counter() - start)
        ours = statistics.median(times)
        print(f"   read the codes once: {1e3 * read_s:.3f} ms; hamming.rank k=10, {threads} "
              f"thread(s): {1e3 * ours:.3f} ms (x{ours / read_s:.2f} the read)")


# ---------------------------------------------------------------- 4. Milvus

def bench_milvus(args, work):
    import faiss  # noqa: PLC0415

    from dlbhc_caffe.search import HashIndex, milvus  # noqa: PLC0415

    rng = np.random.default_rng(3)
    n = args.n_milvus
    db = codes48(rng, n, clustered=True)
    index = HashIndex(48)
    index.add(db, paths=[""] * n)
    q = db[rng.choice(n, 100, replace=False)]
    print(f"\n4. Milvus (embedded 2.3.5) vs ours vs faiss, {n:,} clustered codes, k=10")
    conn = milvus.connect(data_dir=work / "milvus")
    try:
        start = time.perf_counter()
        milvus.export(conn, "bench_flat", index, batch=50000)
        print(f"   export: {time.perf_counter() - start:.1f} s")
        rows = []
        for name, kind, extra in (("BIN_FLAT", "BIN_FLAT", {}),
                                  ("BIN_IVF_FLAT nlist 1024 nprobe 16", "BIN_IVF_FLAT", {})):
            milvus.ensure_index(conn.collection("bench_flat"), kind, 1024)
            one, _ = median_time(lambda: [milvus.search(conn, "bench_flat", q[i:i + 1], 10)
                                          for i in range(20)], 3)
            batch, _ = median_time(lambda: milvus.search(conn, "bench_flat", q, 10), 3)
            rows.append((f"Milvus {name}", one / 20, batch))
        flat = faiss.IndexBinaryFlat(48)
        flat.add(np.ascontiguousarray(db.view(np.uint8)[:, :6]))
        fq = np.ascontiguousarray(q.view(np.uint8)[:, :6])
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # one query on one thread, as ours
        one, _ = median_time(lambda: [flat.search(fq[i:i + 1], 10) for i in range(20)], 3)
        faiss.omp_set_num_threads(threads)
        batch, _ = median_time(lambda: flat.search(fq, 10), 3)
        rows.append(("faiss IndexBinaryFlat", one / 20, batch))
        one, _ = median_time(lambda: [index.search(q[i:i + 1], 10) for i in range(20)], 3)
        batch, _ = median_time(lambda: index.search(q, 10), 3)
        rows.append(("ours (HashIndex.search)", one / 20, batch))
        for name, one, batch in rows:
            print(f"   {name:36s} {1e3 * one:8.2f} ms/query alone, {len(q) / batch:9.0f} "
                  f"queries/s in a batch of {len(q)}")
    finally:
        conn.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a tenth of every size")
    p.add_argument("--n-index", type=int, default=1_000_000)
    p.add_argument("--n-merge", type=int, default=100_000)
    p.add_argument("--n-radius", type=int, default=10_000_000)
    p.add_argument("--n-topk", type=int, default=1_000_000)
    p.add_argument("--n-milvus", type=int, default=1_000_000)
    p.add_argument("--fc7-dim", type=int, default=4096)
    p.add_argument("--fc7-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--milvus", action="store_true", help="also the Milvus comparison")
    p.add_argument("--only", choices=("index", "radius", "topk", "milvus"))
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--write-only", metavar="INDEX", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.write_only:
        write_index(args.write_only, 0, args.n_index, args.fc7_dim, args.fc7_dtype, args.chunk)
        # this process's own peak (ru_maxrss would count the parent's pages forked before exec)
        status = Path("/proc/self/status").read_text()
        print("VmHWM_KB=" + status.split("VmHWM:")[1].split()[0])
        return 0
    if args.quick:
        for name in ("n_index", "n_merge", "n_radius", "n_topk", "n_milvus"):
            setattr(args, name, getattr(args, name) // 10)
    print(f"bench_scale: {os.cpu_count()} cores, load average {os.getloadavg()} at start "
          f"(shared machine: figures are medians and noisy)")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_scale."))
    work.mkdir(parents=True, exist_ok=True)
    ok = True
    if args.only in (None, "topk"):
        bench_topk(args)
    if args.only in (None, "radius"):
        ok = bench_radius(args) and ok
    if args.only in (None, "index"):
        ok = bench_index(args, work) and ok
    if args.milvus or args.only == "milvus":
        bench_milvus(args, work)
    print(f"\nload average at the end: {os.getloadavg()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
