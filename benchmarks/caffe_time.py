#!/usr/bin/env python
"""Where real Caffe's CPU time goes: `caffe time` per layer on KevinNet (batch 32, 227 x 227),
for each BLAS thread count.

    .venv/bin/python benchmarks/caffe_time.py                    # 1 and 2 OpenBLAS threads
    .venv/bin/python benchmarks/caffe_time.py --threads 2 --iterations 5 --json out.json

Runs the `caffe` tool that scripts/build_caffe.sh built (.venv/caffe_home) on the same train net
benchmarks/bench_throughput.py times (Input layers, so no data loading), once per thread count
(OPENBLAS_NUM_THREADS / OMP_NUM_THREADS), and prints each layer's forward and backward
milliseconds (Caffe's own averages), the share of the total, the load average beside it, and the
whole run's wall and CPU seconds (net set-up, Caffe's warm-up pass, the timed passes): on a shared
machine the CPU seconds at equal work show what more threads cost. Repeat --threads to
interleave runs (--threads 1 --threads 2 --threads 1 --threads 2).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_throughput import kevinnet_files  # noqa: E402

LAYER_LINE = re.compile(r"\]\s+(\S+)\s+(forward|backward): ([\d.]+) ms\.")
TOTAL_LINE = re.compile(r"Average Forward-Backward: ([\d.]+) ms\.")


def caffe_tool():
    home = ROOT / ".venv" / "caffe_home"
    if not home.is_file():
        raise SystemExit(f"no {home}: build real Caffe with `make setup` first")
    tool = Path(home.read_text().strip()) / "build" / "tools" / "caffe"
    if not tool.is_file():
        raise SystemExit(f"no caffe tool at {tool}")
    return tool


def time_layers(model, threads, iterations):
    """{layer: {forward, backward}} ms, and the forward-backward total, from `caffe time`."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               GLOG_minloglevel="0", GLOG_logtostderr="1")
    before, start = os.times(), time.perf_counter()
    done = subprocess.run([str(caffe_tool()), "time", "-model", str(model), "-iterations",
                           str(iterations)], env=env, capture_output=True, text=True)
    wall, after = time.perf_counter() - start, os.times()
    if done.returncode != 0:
        raise SystemExit(f"caffe time failed: {done.stderr.strip().splitlines()[-1:]}")
    layers = {}
    for match in LAYER_LINE.finditer(done.stderr):
        layers.setdefault(match.group(1), {})[match.group(2)] = float(match.group(3))
    total = float(TOTAL_LINE.search(done.stderr).group(1))
    # the whole run (set-up, a warm-up pass, the timed passes): wall and CPU seconds of Caffe's
    # threads, user and system; at equal work, extra CPU is threads waiting for each other
    cpu = {"wall": wall, "user": after.children_user - before.children_user,
           "system": after.children_system - before.children_system}
    return layers, total, cpu


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, action="append", help="BLAS threads (repeatable; "
                                                                "default 1 and 2)")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    report = {"cpu": _cpu_model(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="caffe-time-") as tmp:
        model = kevinnet_files(tmp, 48, args.batch)["train"]
        for threads in args.threads or [1, 2]:
            load = os.getloadavg()[0]
            layers, total, cpu = time_layers(model, threads, args.iterations)
            report["runs"].append({"threads": threads, "total_ms": total, "layers": layers,
                                   "run_seconds": cpu, "load_before": load,
                                   "load_after": os.getloadavg()[0]})
            print(f"\n{threads} BLAS thread(s): forward-backward {total:.0f} ms per batch of "
                  f"{args.batch} ({args.batch / total * 1000:.1f} img/s), load average "
                  f"{load:.1f} -> {os.getloadavg()[0]:.1f}; whole run {cpu['wall']:.1f} s wall, "
                  f"{cpu['user']:.1f} s user + {cpu['system']:.1f} s system CPU")
            ranked = sorted(layers.items(), key=lambda kv: -sum(kv[1].values()))
            for name, times in ranked:
                both = sum(times.values())
                if both >= 0.01 * total:
                    print(f"  {name:<18} fwd {times.get('forward', 0):8.1f} ms  bwd "
                          f"{times.get('backward', 0):8.1f} ms  {100 * both / total:5.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
