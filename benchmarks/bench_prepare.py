#!/usr/bin/env python3
"""Records per second of prepare on CIFAR-10-shaped input, to LevelDB and LMDB.

A synthetic cifar-10-binary.tar.gz (the official layout; random 32x32 pixels) goes through the
whole prepare stage -- archive parsing, bilinear resize, BGR, Datum, batched database writes,
the mean, file lists, dataset.json -- as 256x256 records (the paper's) and as raw 32x32 records.
Each configuration runs `--repeats` times into a fresh folder; the median is reported.

    python benchmarks/bench_prepare.py                 # 2,500 records a run, 5 repeats
    python benchmarks/bench_prepare.py --records 10000 --repeats 3 --json out/bench_prepare.json
"""
import argparse
import hashlib
import io
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlbhc_caffe import datasets  # noqa: E402


def synthetic_cifar(folder, records, seed=0):
    """A cifar-10-binary.tar.gz of `records` records (5/6 train over five batches, 1/6 test)."""
    rng = np.random.default_rng(seed)
    n_test = max(1, records // 6)
    per_batch = max(1, (records - n_test) // 5)
    members = {"batches.meta.txt": "\n".join(f"class{i}" for i in range(10)).encode()}
    for name, n in [(f"data_batch_{i}.bin", per_batch) for i in range(1, 6)] + \
            [("test_batch.bin", n_test)]:
        rows = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
        rows[:, 0] = rng.integers(0, 10, n)
        members[name] = rows.tobytes()
    path = Path(folder) / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, 5 * per_batch + n_test


def run_once(archive, work, backend, size, encoded, workers=None):
    root = Path(tempfile.mkdtemp(dir=work))
    checksum = "md5:" + hashlib.md5(archive.read_bytes()).hexdigest()
    start = time.perf_counter()
    manifest = datasets.prepare("cifar10", root, db=backend, resize=size, encoded=encoded,
                                from_dir=archive.parent, checksums={archive.name: checksum},
                                workers=workers, progress=False, log=lambda *_: None)
    seconds = time.perf_counter() - start
    records = manifest["train_count"] + manifest["test_count"]
    disk = datasets.build.folder_bytes(root / "cifar10")
    shutil.rmtree(root)
    return records, seconds, disk


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=2500, help="records a run (default 2500)")
    p.add_argument("--repeats", type=int, default=5, help="runs per configuration (default 5)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 32])
    p.add_argument("--backends", nargs="+", default=list(datasets.BACKENDS))
    p.add_argument("--encoded", nargs="+", default=["raw"], choices=datasets.ENCODINGS)
    p.add_argument("--workers", type=int, nargs="+", default=[None],
                   help="record threads to compare (default: prepare's default)")
    p.add_argument("--work", help="scratch folder (default: a temporary folder)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_prepare_", dir=args.work))
    configs = list(itertools.product(args.sizes, args.encoded, args.backends, args.workers))
    rates = {config: [] for config in configs}
    results = []
    try:
        archive, total = synthetic_cifar(work, args.records)
        default_workers = datasets.build.default_workers()
        print(f"{total:,} CIFAR-10-shaped records a run, median of {args.repeats} runs, "
              f"configurations interleaved ({platform.machine()}, {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.1f}, Python {platform.python_version()})")
        disk = {}
        for _ in range(args.repeats):  # round-robin, so drift in machine load hits all alike
            for config in configs:
                size, encoded, backend, workers = config
                n, seconds, disk[config] = run_once(archive, work, backend, size, encoded,
                                                    workers)
                rates[config].append(n / seconds)
        print(f"{'backend':8} {'records':>9} {'encoding':8} {'workers':>7} {'rec/s':>8} "
              f"{'min..max rec/s':>17} {'MB/s':>7} {'disk MB':>8}")
        for config in configs:
            size, encoded, backend, workers = config
            median = statistics.median(rates[config])
            pixel_mb_s = median * 3 * size * size / 1e6
            workers = default_workers if workers is None else workers
            results.append({"backend": backend, "size": size, "encoding": encoded,
                            "workers": workers, "records": total, "repeats": args.repeats,
                            "median_records_per_s": median,
                            "min_records_per_s": min(rates[config]),
                            "max_records_per_s": max(rates[config]),
                            "pixel_mb_per_s": pixel_mb_s, "disk_bytes": disk[config]})
            print(f"{backend:8} {f'3x{size}x{size}':>9} {encoded:8} {workers:7d} {median:8.0f} "
                  f"{min(rates[config]):8.0f}..{max(rates[config]):<8.0f} {pixel_mb_s:7.1f} "
                  f"{disk[config] / 1e6:8.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"benchmark": "prepare", "results": results},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
