#!/usr/bin/env python3
"""Load test of the search service: concurrent clients on 127.0.0.1, mixed searches.

tools/serve.py runs in a child process on 127.0.0.1; `--clients` threads (each one HTTP
keep-alive connection) send searches for `--seconds` or until `--max-requests` in all, each
drawn at random (seeded) from: by id, by id fine, by upload, by upload fine. Reported: errors
(anything but 200), requests/s, p50 / p99 latency overall and per kind, the server's RSS after
warm-up and at the end, the load average around the run, and beside them the same searches
timed in-process (no HTTP) on a Searcher.

    python benchmarks/bench_serve.py                  # the sample digits index, 8 clients, 30 s
    python benchmarks/bench_serve.py --index my.index --run runs/X --clients 8 --seconds 30
    python benchmarks/bench_serve.py --json out/bench_serve.json

Without --index the sample index is built in a temporary folder: the 1,797 embedded digits as
32 x 32 PNG files, indexed by the small net at random weights (dlbhc_caffe.serve.sample; a trained
net costs the same).
"""
import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlbhc_caffe.serve import Searcher, sample  # noqa: E402
from dlbhc_caffe.encode import Model  # noqa: E402
from dlbhc_caffe.search import load_index  # noqa: E402

KINDS = ("id", "id fine", "upload", "upload fine")
MAX_REQUESTS = 200_000


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _request(client, kind, ids, images, rng, k):
    fine = "1" if kind.endswith("fine") else "0"
    if kind.startswith("id"):
        return client.get("/api/search", params={"id": rng.choice(ids), "k": k, "fine": fine})
    name, data = rng.choice(images)
    return client.post("/api/search", files={"image": (name, data, "image/png")},
                       data={"k": str(k), "fine": fine})


def run_load(url, ids, images, clients=8, seconds=30.0, max_requests=MAX_REQUESTS, k=10,
             seed=0):
    """Hammer ``url`` with mixed searches; returns a dict of counts, errors and latencies."""
    import httpx  # noqa: PLC0415

    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    sent = [0]
    latencies = {kind: [] for kind in KINDS}
    errors = []

    def client_loop(number):
        rng = random.Random(seed * 1000 + number)
        with httpx.Client(base_url=url, timeout=60.0) as client:
            while time.monotonic() < deadline:
                with lock:
                    if sent[0] >= max_requests:
                        return
                    sent[0] += 1
                kind = rng.choice(KINDS)
                started = time.perf_counter()
                try:
                    response = _request(client, kind, ids, images, rng, k)
                    ok = response.status_code == 200 and len(response.json()["results"]) == k
                    problem = None if ok else \
                        f"{kind}: {response.status_code} {response.text[:200]}"
                except (httpx.HTTPError, ValueError, KeyError) as err:
                    problem = f"{kind}: {type(err).__name__}: {err}"
                elapsed = time.perf_counter() - started
                with lock:
                    latencies[kind].append(elapsed)
                    if problem:
                        errors.append(problem)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    every = [t for kind in KINDS for t in latencies[kind]]
    return {"requests": len(every), "errors": len(errors), "first_errors": errors[:5],
            "seconds": wall, "requests_per_s": len(every) / wall if wall else 0.0,
            "p50_ms": 1000 * percentile(every, 50) if every else None,
            "p99_ms": 1000 * percentile(every, 99) if every else None,
            "per_kind": {kind: {"n": len(v), "p50_ms": 1000 * percentile(v, 50),
                                "p99_ms": 1000 * percentile(v, 99)}
                         for kind, v in latencies.items() if v}}


def in_process(searcher, ids, images, repeats=100, k=10, seed=0):
    """Median ms of each kind of search on the Searcher itself (no HTTP)."""
    rng = random.Random(seed)
    out = {}
    for kind in KINDS:
        times = []
        for _ in range(repeats):
            values = {"k": k, "fine": kind.endswith("fine")}
            started = time.perf_counter()
            if kind.startswith("id"):
                searcher.search_id({**values, "id": rng.choice(ids)})
            else:
                searcher.search_image(rng.choice(images)[1], values)
            times.append(time.perf_counter() - started)
        out[kind] = 1000 * statistics.median(times)
    return out


def query_material(index_path, count=20, seed=0):
    """(ids, [(name, bytes)]) to query with: every id, and up to ``count`` of the index's images."""
    index = load_index(index_path)
    ids = [int(i) for i in index.ids]
    rng = random.Random(seed)
    images = []
    for row in rng.sample(range(index.ntotal), min(index.ntotal, 10 * count)):
        path = Path(index.paths_of([row])[0])
        if path.is_file():
            images.append((path.name, path.read_bytes()))
        if len(images) == count:
            break
    if not images:
        raise SystemExit(f"{index_path}: none of its paths is an image file here to upload")
    return ids, images


def rss_mb(pid):
    import psutil  # noqa: PLC0415

    return psutil.Process(pid).memory_info().rss / 2**20


def sample_rss(pid, samples, done, every):
    """Append the server's RSS (MB) to ``samples`` every ``every`` seconds until ``done``."""
    while not done.wait(every):
        samples.append(rss_mb(pid))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--index", help="index to serve (default: the sample digits index)")
    p.add_argument("--run", help="its model's run folder (default: the one in the index)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--max-requests", type=int, default=MAX_REQUESTS)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--backend", default="auto", choices=("auto", "caffe", "torch"))
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench_serve_")
    index = args.index
    if index is None:
        model = sample.untrained_model(Path(work) / "model")
        index = sample.build_sample_index(Path(work) / "images", model, Path(work) / "d.index")
    serve_args = ["--backend", args.backend] + (["--run", args.run] if args.run else [])
    ids, images = query_material(index)
    model = Model.from_run(args.run) if args.run else None
    searcher = Searcher(index, model=model, backend=args.backend)
    local = in_process(searcher, ids, images, k=args.k)
    del searcher
    with sample.LocalServer(index, serve_args, log=Path(work) / "server.log") as server:
        run_load(server.url, ids, images, clients=2, seconds=2.0, k=args.k)  # warm-up
        rss_start, load_start = rss_mb(server.process.pid), os.getloadavg()
        samples, done = [], threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(server.process.pid, samples, done,
                                                            args.seconds / 6))
        sampler.start()
        figures = run_load(server.url, ids, images, clients=args.clients, seconds=args.seconds,
                           max_requests=args.max_requests, k=args.k)
        done.set()
        sampler.join()
        rss_end, load_end = rss_mb(server.process.pid), os.getloadavg()
    figures.update({"clients": args.clients, "k": args.k, "index": str(index),
                    "images": len(ids), "rss_start_mb": rss_start, "rss_end_mb": rss_end,
                    "loadavg_start": load_start, "loadavg_end": load_end,
                    "in_process_ms": local, "cpus": os.cpu_count(),
                    "machine": platform.platform()})
    print(f"{figures['requests']} requests from {args.clients} clients in "
          f"{figures['seconds']:.1f} s: {figures['requests_per_s']:.1f} req/s, "
          f"errors {figures['errors']}, p50 {figures['p50_ms']:.1f} ms, "
          f"p99 {figures['p99_ms']:.1f} ms")
    for kind, stats in figures["per_kind"].items():
        print(f"  {kind:12s} n={stats['n']:6d}  p50 {stats['p50_ms']:7.1f} ms  "
              f"p99 {stats['p99_ms']:7.1f} ms  in-process median {local[kind]:6.2f} ms")
    print(f"server RSS {rss_start:.1f} MB after warm-up, {rss_end:.1f} MB at the end (during: "
          f"{', '.join(f'{m:.1f}' for m in samples)}); "
          f"load average {load_start[0]:.2f} -> {load_end[0]:.2f} on {os.cpu_count()} CPUs")
    for line in figures["first_errors"]:
        print("  error:", line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if figures["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
