#!/usr/bin/env python3
"""Every benchmark, one after the other (`make bench`): Hamming ranking against numpy and faiss,
prepare's records per second, KevinNet training/forward throughput per backend.

    .venv/bin/python benchmarks/run_all.py            # full runs
    .venv/bin/python benchmarks/run_all.py --quick    # smaller runs, for a first look

Each benchmark measures its baseline in the same run and prints medians and ratios; run them on a
machine that is otherwise idle, and quote only figures measured side by side.
"""
import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "hamming": (["bench_hamming.py"], ["--quick"]),
    "prepare": (["bench_prepare.py"], ["--records", "500", "--repeats", "3"]),
    "throughput": (["bench_throughput.py"], ["--repeats", "3"]),
    "scale": (["bench_scale.py"], ["--quick"]),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs of each benchmark")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append",
                        help="run only this benchmark (repeatable)")
    args = parser.parse_args(argv)
    failed = []
    for name in args.only or BENCHMARKS:
        script, quick = BENCHMARKS[name]
        command = [sys.executable, str(HERE / script[0])] + (quick if args.quick else [])
        print(f"\n===== {name}: {' '.join(command[1:])}", flush=True)
        if subprocess.run(command).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
