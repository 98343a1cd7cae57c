#!/usr/bin/env python3
"""Evaluate hash codes as the original precision.m does: mAP@k and precision@1..k, plus the mAP
over the whole ranking and the precision within Hamming radius 2.

    python tools/evaluate.py --db-codes binary-train.mat --db-labels train-label.txt \\
        --query-codes binary-test.mat --query-labels test-label.txt --out out/eval48

Codes: .npz ('codes', optionally 'labels' and 'fc7'), .npy (0/1 rows), MATLAB .mat (v7.3 like
the original's binary-train.mat, or older), or an .index from tools/search.py. Labels: .txt (one
a line) or .npy; they may be left out when the codes file holds them. --distance euclidean ranks
real features instead (precision.m's second mode, for the fc7 baseline): .npz 'fc7', .npy, .mat.

Or let it extract the codes itself, as run_cifar10.m did: the test split of a prepared dataset as
queries against its train split as database, through a training run's model or any deploy +
caffemodel (the authors' released files load as they are):

    python tools/evaluate.py --run runs/cifar10_kevinnet_48 --out runs/cifar10_kevinnet_48/eval
    python tools/evaluate.py --deploy KevinNet_CIFAR10_48_deploy.prototxt \
        --model KevinNet_CIFAR10_48.caffemodel --mean data/ilsvrc12/imagenet_mean.binaryproto \
        --dataset cifar10

The extracted codes and fc7 features are saved with the report (database.npz, queries.npz).

Prints `mAP@1000 = 0.897373` and the other figures; with --out, writes precision-at-k.txt (the
original's two columns), metrics.json and precision-at-k.png (against the paper's baselines).
Existing output files are refused unless --force.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlbhc_caffe import cli  # noqa: E402
from dlbhc_caffe import codes, evaluation, metrics  # noqa: E402


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
    model = parser.add_argument_group("or codes extracted from a model over a prepared dataset")
    model.add_argument("--run", metavar="DIR", help="a tools/train.py run folder")
    model.add_argument("--deploy", metavar="PROTOTXT", help="a deploy net (any Caffe format)")
    model.add_argument("--model", metavar="CAFFEMODEL", help="its weights")
    model.add_argument("--mean", metavar="BINARYPROTO",
                       help="mean file for --deploy/--model (default: the dataset's TEST "
                            "transform has none, so give the mean the model was trained with)")
    model.add_argument("--scale", type=float, default=1.0,
                       help="multiplier of the mean-subtracted pixels for --deploy/--model "
                            "(transform_param.scale the net was trained with; default 1)")
    model.add_argument("--dataset", metavar="NAME",
                       help="prepared dataset (default with --run: the run's own)")
    model.add_argument("--root", default="data", help="where prepare.py put it (default data)")
    model.add_argument("--backend", choices=("auto", "caffe", "torch"), default="auto",
                       help="engine (default auto: caffe when it imports, else torch)")
    device = model.add_mutually_exclusive_group()
    device.add_argument("--gpu", type=int, metavar="ID", help="run the net on this GPU")
    device.add_argument("--cpu", action="store_true", help="run the net on the CPU (default)")
    model.add_argument("--batch-size", type=int, default=100,
                       help="images per forward pass (default 100)")
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


def inputs_from_model(args, parser):
    """Codes (or fc7 for --distance euclidean) extracted from a model over a prepared dataset."""
    if args.run is None and (args.deploy is None or args.model is None):
        parser.error("--deploy and --model go together (or give --run)")
    if args.run is not None and (args.deploy or args.model or args.mean):
        parser.error("--run takes the model from the run folder: drop --deploy/--model/--mean")
    database, queries = evaluation.encode_for_evaluation(
        run=args.run, deploy=args.deploy, model=args.model, mean=args.mean, scale=args.scale,
        dataset=args.dataset, root=args.root, backend=args.backend, gpu=args.gpu,
        batch_size=args.batch_size, out=args.out, force=args.force)
    field = "fc7" if args.distance == "euclidean" else "codes"
    return (getattr(database, field), database.labels, getattr(queries, field), queries.labels)


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
        from_model = args.run or args.deploy or args.model
        source = inputs_from_model if from_model else inputs_from_files
        database, database_labels, queries, query_labels = source(args, parser)
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
    sys.exit(cli.run(main, "evaluate.py"))
