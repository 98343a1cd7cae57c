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
    python tools/evaluate.py --deploy KevinNet_CIFAR10_48_deploy.prototxt \\
        --model KevinNet_CIFAR10_48.caffemodel --mean data/ilsvrc12/imagenet_mean.binaryproto \\
        --dataset cifar10

The extracted codes and fc7 features are saved with the report (database.npz, queries.npz).
Arguments are checked before any encoding (--top-k against the dataset's size), and a failed
evaluation writes nothing.

Prints `mAP@1000 = 0.897373` and the other figures; with --out, writes precision-at-k.txt (the
original's two columns), metrics.json and precision-at-k.png (on CIFAR-10, against the paper's
baselines).
Existing output files are refused unless --force.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlbhc_caffe import cli  # noqa: E402
from dlbhc_caffe import codes, evaluation, metrics, plots  # noqa: E402
from dlbhc_caffe.encode import add_model_options, model_given, resolve_model  # noqa: E402
from dlbhc_caffe.errors import DlbhcError  # noqa: E402


def top_k_option(text):
    """--top-k: a positive integer, or `all` for the whole ranking."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return value


def radius_option(text):
    """--radius: a non-negative integer."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def check_top_k(top_k, n_database, where):
    """--top-k against the database size, in the flags' words (before any work)."""
    if top_k is not None and top_k > n_database:
        raise DlbhcError(f"--top-k {top_k} is larger than the database ({n_database} items in "
                         f"{where}); give --top-k {n_database} or less, or --top-k all for the "
                         f"whole ranking")


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
    model = add_model_options(parser, "or codes extracted from a model over a prepared dataset",
                              resize=False)
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
    parser.add_argument("--top-k", type=top_k_option, default=1000, metavar="K|all",
                        help="the k of mAP@k and of precision@1..k (default 1000, the paper's; "
                             "all: the whole ranking)")
    parser.add_argument("--distance", choices=metrics.DISTANCES, default="hamming",
                        help="hamming (codes, default) or euclidean (real features, e.g. fc7)")
    parser.add_argument("--radius", type=radius_option, default=2,
                        help="Hamming radius for the precision within radius (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads (default: all cores)")
    parser.add_argument("--out", metavar="DIR",
                        help="write precision-at-k.txt, metrics.json and precision-at-k.png here")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def inputs_from_model(args, parser):
    """Codes (or fc7 for --distance euclidean) extracted from a model over a prepared dataset,
    and the extracted Features (database, queries) to save with the report."""
    model = resolve_model(args)
    if args.out is not None:
        evaluation.check_saved(args.out, args.force)
    manifest = evaluation.dataset_manifest(model.run, args.dataset, args.root)
    check_top_k(args.top_k, int(manifest["train_count"]),
                f"the {manifest.get('name', 'dataset')} train split")
    database, queries = evaluation.encode_for_evaluation(
        run=model.run, deploy=model.deploy, model=model.weights, mean=model.mean,
        mean_values=model.mean_values, scale=model.scale, backend=args.backend, gpu=args.gpu,
        batch_size=args.batch_size, progress=not args.quiet,
        allow_layers=model.allow_layers, allow_missing_weights=model.allow_missing_weights,
        manifest=manifest)
    field = "fc7" if args.distance == "euclidean" else "codes"
    return (getattr(database, field), database.labels, getattr(queries, field),
            queries.labels), (database, queries), manifest


def inputs_from_files(args, parser):
    """(database, database labels, queries, query labels) from the --db-*/--query-* files."""
    for option in ("db_codes", "query_codes"):
        if getattr(args, option) is None:
            parser.error(f"--{option.replace('_', '-')} is required")
    features = args.distance == "euclidean"
    database, database_labels = codes.load_set(args.db_codes, args.db_labels, features=features)
    check_top_k(args.top_k, len(database), args.db_codes)
    queries, query_labels = codes.load_set(args.query_codes, args.query_labels,
                                           features=features)
    return (database, database_labels, queries, query_labels), None, None


def write_outputs(result, extracted, out, force, baselines):
    """The report (and the extracted features) in `out`, all or nothing: what was written is
    removed again when a later file fails."""
    written = []
    try:
        if extracted is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            for path in evaluation.save_features(out, *extracted):
                written.append(Path(path))
        for path in metrics.save_report(result, out, force=force, baselines=baselines):
            written.append(Path(path))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.out is not None:
            metrics.check_report_dir(args.out, args.force)  # before the work, not after
        from_model = model_given(args)
        source = inputs_from_model if from_model else inputs_from_files
        (database, database_labels, queries, query_labels), extracted, manifest = \
            source(args, parser)
        result = metrics.evaluate(database, database_labels, queries, query_labels,
                                  top_k=args.top_k, distance=args.distance, radius=args.radius,
                                  num_threads=args.threads)
        print(f"{result.n_queries} queries, {result.n_database} database items, "
              f"{result.dims} {'bits' if args.distance == 'hamming' else 'dimensions'}, "
              f"{args.distance} ranking")
        for line in metrics.format_summary(result):
            print(line)
        if args.out is not None:
            cifar10 = plots.is_cifar10(manifest, result.n_database, result.n_queries,
                                       database_labels)
            for path in write_outputs(result, extracted, args.out, args.force, cifar10):
                print(f"wrote {path}")
    except (OSError, ValueError, TypeError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "evaluate.py"))
