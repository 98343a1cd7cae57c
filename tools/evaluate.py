#!/usr/bin/env python3
"""Evaluate hash codes as the original precision.m does: mAP@k and precision@1..k, plus the mAP
over the whole ranking and the precision within Hamming radius 2.

    python tools/evaluate.py --db-codes binary-train.mat --db-labels train-label.txt \\
        --query-codes binary-test.mat --query-labels test-label.txt --out out/eval48

Codes: .npz ('codes', optionally 'labels' and 'fc7'), .npy (0/1 rows), MATLAB .mat (v7.3 like
the original's binary-train.mat, or older), or an .index from tools/search.py. Labels: .txt (one
a line) or .npy; they may be left out when the codes file holds them. --distance euclidean ranks
real features instead (precision.m's second mode, for the fc7 baseline): .npz 'fc7', .npy, .mat.

Prints `mAP@1000 = 0.897373` and the other figures; with --out, writes precision-at-k.txt (the
original's two columns), metrics.json and precision-at-k.png (against the paper's baselines).
Existing output files are refused unless --force.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlbhc_caffe import codes, metrics  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    files = parser.add_argument_group("codes and labels from files")
    files.add_argument("--db-codes", metavar="FILE", help="database codes (or features)")
    files.add_argument("--db-labels", metavar="FILE", help="database labels")
    files.add_argument("--query-codes", metavar="FILE", help="query codes (or features)")
    files.add_argument("--query-labels", metavar="FILE", help="query labels")
    parser.add_argument("--top-k", type=int, default=1000,
                        help="the k of mAP@k and of precision@1..k (default 1000, the paper's)")
    parser.add_argument("--distance", choices=metrics.DISTANCES, default="hamming",
                        help="hamming (codes, default) or euclidean (real features, e.g. fc7)")
    parser.add_argument("--radius", type=int, default=2,
                        help="Hamming radius for the precision within radius (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads (default: all cores)")
    parser.add_argument("--out", metavar="DIR",
                        help="write precision-at-k.txt, metrics.json and precision-at-k.png here")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    return parser


def inputs_from_files(args, parser):
    """(database, database labels, queries, query labels) from the --db-*/--query-* files."""
    for option in ("db_codes", "query_codes"):
        if getattr(args, option) is None:
            parser.error(f"--{option.replace('_', '-')} is required")
    features = args.distance == "euclidean"
    database, database_labels = codes.load_set(args.db_codes, args.db_labels, features=features)
    queries, query_labels = codes.load_set(args.query_codes, args.query_labels,
                                           features=features)
    return database, database_labels, queries, query_labels


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.out is not None:
            metrics.check_report_dir(args.out, args.force)  # before the work, not after
        # Other sources of codes (a training run, a model) plug in here: each returns arrays.
        database, database_labels, queries, query_labels = inputs_from_files(args, parser)
        result = metrics.evaluate(database, database_labels, queries, query_labels,
                                  top_k=args.top_k, distance=args.distance, radius=args.radius,
                                  num_threads=args.threads)
        print(f"{result.n_queries} queries, {result.n_database} database items, "
              f"{result.dims} {'bits' if args.distance == 'hamming' else 'dimensions'}, "
              f"{args.distance} ranking")
        for line in metrics.format_summary(result):
            print(line)
        if args.out is not None:
            for path in metrics.save_report(result, args.out, force=args.force):
                print(f"wrote {path}")
    except (OSError, ValueError, TypeError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
