#!/usr/bin/env python
"""The demo (the original's demo.m): encode images, save their codes and fc7, show a retrieval.

    python demo.py                      # the embedded default, offline: digits, 12 bits
    python demo.py --deploy KevinNet_CIFAR10_48_deploy.prototxt \\
        --model KevinNet_CIFAR10_48.caffemodel --mean imagenet_mean.binaryproto \\
        --list img_list.txt [--query IMAGE] [--k 10]
    python demo.py --run runs/my_run --list img_list.txt

With no model given, it runs the whole pipeline on scikit-learn's digits: prepares them
(data/digits, unless already there), trains the small net at 12 bits (runs/digits_small_12,
unless a finished run is already there), indexes the training set, queries it with the test set,
prints mAP and precision, and writes a montage of a few queries' top k.

With a model (a deploy prototxt + caffemodel of any Caffe generation -- the authors' released V1
files load as they are -- or a training run folder) and an image list (one `path` or
`path label` a line), it encodes the images as prepare_batch.m did, saves codes.npz (codes, fc7,
latent, paths) and codes.mat for MATLAB, indexes them, and shows the top k of a query image
(--query, default the list's first image) as a montage with distances.

Outputs go to --out (default out/demo); they are replaced on each run. --force also re-prepares
the digits and retrains the default model.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from dlbhc_caffe import metrics, montage  # noqa: E402
from dlbhc_caffe.features import EncodeError, Encoder, encode_dataset  # noqa: E402
from dlbhc_caffe.proto import ProtoError, atomic_write_bytes  # noqa: E402
from dlbhc_caffe.search import DEFAULT_RADIUS, IndexFormatError, workflow  # noqa: E402

DATASET, NET, BITS = "digits", "small", 12
MAX_ITER, SEED = 600, 1  # design.md: 600 iterations give mAP@100 0.916 in 1-2 CPU minutes
MONTAGE_QUERIES = 6


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    g = p.add_argument_group("your model and images (otherwise: the digits default)")
    g.add_argument("--deploy", metavar="PROTOTXT", help="deploy prototxt (V0, V1 or current)")
    g.add_argument("--model", metavar="CAFFEMODEL", help="the trained weights")
    g.add_argument("--run", metavar="DIR", help="a training run folder instead of --deploy/--model"
                                                " (with the digits default: use this run)")
    mean = g.add_mutually_exclusive_group()
    mean.add_argument("--mean", metavar="BINARYPROTO",
                      help="mean file (BGR); images are resized to its size, then centre-cropped")
    mean.add_argument("--mean-value", metavar="V[,V,V]",
                      type=lambda t: [float(v) for v in t.split(",")], help="mean value(s), BGR")
    g.add_argument("--resize", type=int, metavar="N",
                   help="resize images to N x N (default: the mean's size, else the input's)")
    g.add_argument("--list", metavar="FILE", help="image list: `path` or `path label` a line")
    g.add_argument("--query", metavar="IMAGE", help="query image (default: the list's first)")
    p.add_argument("--k", type=int, default=10, help="results shown per query (default 10)")
    p.add_argument("--fine", action="store_true",
                   help="show the coarse-to-fine search (Hamming pool, fc7 re-ranking)")
    p.add_argument("--radius", type=int, default=DEFAULT_RADIUS,
                   help=f"Hamming radius of the coarse pool (default {DEFAULT_RADIUS})")
    p.add_argument("--backend", choices=("auto", "caffe", "torch"), default="auto",
                   help="engine (default auto: caffe when it imports, else torch)")
    p.add_argument("--batch-size", type=int, default=10, help="images per forward pass")
    p.add_argument("--root", default="data", help="data folder of the digits default")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--force", action="store_true",
                   help="re-prepare the digits and retrain the default model")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def say(message):
    print(message, flush=True)


def write_json(path, data):
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def save_features(features, out, stem):
    """stem.npz and stem.mat in `out`; returns their paths."""
    return [features.save(Path(out) / f"{stem}{suffix}") for suffix in (".npz", ".mat")]


# ---------------------------------------------------------------- the digits default

def prepare_digits(root, force, quiet):
    from dlbhc_caffe import datasets  # noqa: PLC0415

    if not force:
        try:
            return datasets.load_manifest(root, DATASET)
        except datasets.DatasetError:
            pass
    say(f"[demo] preparing {DATASET} in {root}/{DATASET}")
    return datasets.prepare(DATASET, root, force=force, progress=not quiet)


def finished_run(run_dir):
    """True when run_dir holds a finished training run (run.json and the final model)."""
    run_dir = Path(run_dir)
    return (run_dir / "run.json").is_file() and (run_dir / "final.caffemodel").is_file()


def train_default(root, backend, force, quiet):
    """runs/digits_small_12: reused when finished, else trained as `tools/train.py --dataset
    digits --net small --bits 12 --max-iter 600 --seed 1` would."""
    from dlbhc_caffe import runs  # noqa: PLC0415

    plan = runs.plan_run(dataset=DATASET, root=root, net=NET, bits=BITS, max_iter=MAX_ITER,
                         seed=SEED)
    if finished_run(plan.folder) and not force:
        say(f"[demo] reusing the trained model in {plan.folder}")
        return plan.folder
    if plan.folder.exists() and any(plan.folder.iterdir()) and not force:
        raise EncodeError(f"{plan.folder} holds an unfinished run; resume it with tools/train.py "
                          f"--resume, or pass --force to train it again")
    say(f"[demo] training the {NET} net at {BITS} bits on {DATASET} into {plan.folder}")
    from dlbhc_caffe import train  # noqa: PLC0415

    result = train.train_run(plan, backend=backend, force=force, root=root, progress=not quiet,
                             argv=["demo.py"] + sys.argv[1:])
    if train.exit_code(result) != 0:
        raise EncodeError(f"training stopped before it finished; see {plan.folder / 'log.txt'}")
    if not finished_run(plan.folder):
        raise EncodeError(f"training did not finish: no final.caffemodel in {plan.folder}")
    return plan.folder


def digits_demo(args):
    out = Path(args.out)
    manifest = prepare_digits(args.root, args.force, args.quiet)
    run_dir = Path(args.run) if args.run else train_default(args.root, args.backend, args.force,
                                                            args.quiet)
    encoder = Encoder.from_run(run_dir, backend=args.backend, batch_size=100,
                               progress=not args.quiet)
    say(f"[demo] encoding the database ({manifest['train_count']} records) and the queries "
        f"({manifest['test_count']})")
    database, queries = encode_dataset(encoder, manifest)
    k = args.k
    if k < 1 or k > len(database):
        raise EncodeError(f"--k {k}: choose 1..{len(database)} (the database size)")

    index = workflow.index_features(database, meta={"model": workflow.Model.from_run(
        run_dir).to_meta(), "source": {"database": manifest["train_db"]}})
    out.mkdir(parents=True, exist_ok=True)
    saved = save_features(database, out, "database") + save_features(queries, out, "queries")
    saved.append(index.save(out / "database.index"))

    top = min(100, len(database))
    result = metrics.evaluate(database.codes, database.labels, queries.codes, queries.labels,
                              top_k=top, radius=args.radius)
    results = workflow.query_features(index, queries.latent, queries.fc7, k=k)
    hits = np.array([[hit.label == label for hit in row]
                     for row, label in zip(results, queries.labels)])
    share = float(np.mean(hits.sum(axis=1) >= 0.8 * k))
    fine = workflow.query_features(index, queries.latent, queries.fc7, k=k, fine=True,
                                   radius=args.radius)
    fine_hits = np.array([[hit.label == label for hit in row]
                          for row, label in zip(fine, queries.labels)])
    summary = {"dataset": DATASET, "run": str(Path(run_dir).resolve()), "bits": database.bits,
               "n_database": len(database), "n_queries": len(queries),
               f"map@{top}": result.map_at_k, f"precision@{k}": float(hits.mean()),
               f"queries_with_{int(np.ceil(0.8 * k))}_of_top_{k}_same_label": share,
               f"fine_precision@{k}_radius_{args.radius}": float(fine_hits.mean()),
               "precision_within_radius": result.precision_within_radius,
               "radius": args.radius,
               "top_labels_hamming": [[hit.label for hit in row] for row in results],
               "query_labels": queries.labels.tolist()}
    write_json(out / "summary.json", summary)
    for line in metrics.format_summary(result):
        say(f"[demo] {line}")
    say(f"[demo] precision@{k} (Hamming ranking) = {hits.mean():.4f}; coarse-to-fine "
        f"(radius {args.radius}, fc7 re-ranking) = {fine_hits.mean():.4f}")
    say(f"[demo] queries with at least {int(np.ceil(0.8 * k))} of their top {k} sharing their "
        f"label: {share:.1%}")

    # the montage: the first query of each of a few classes, pictures from the records
    from dlbhc_caffe.datasets import read_records  # noqa: PLC0415

    db_images, _ = read_records(manifest["train_db"], manifest["backend"])
    q_images, _ = read_records(manifest["test_db"], manifest["backend"])
    shown = [int(np.flatnonzero(queries.labels == c)[0])
             for c in np.unique(queries.labels)[:MONTAGE_QUERIES]]
    chosen = fine if args.fine else results
    rows = workflow.montage_rows([montage.record_to_rgb(q_images[i]) for i in shown],
                                 [chosen[i] for i in shown], queries.labels[shown],
                                 picture_of=lambda hit: montage.record_to_rgb(db_images[hit.row]))
    title = (f"{DATASET}, {database.bits} bits: top {k} of {len(database)} by "
             + (f"coarse-to-fine (radius {args.radius})" if args.fine else "Hamming distance"))
    saved.append(montage.write_montage(out / "montage.png", rows, title=title))
    for path in saved + [out / "summary.json"]:
        say(f"[demo] wrote {path}")
    return 0


# ---------------------------------------------------------------- your model and images

def model_demo(args):
    out = Path(args.out)
    if args.run and (args.deploy or args.model):
        raise EncodeError("give --run or --deploy/--model, not both")
    if args.run:
        model = workflow.Model.from_run(args.run)
    else:
        if not (args.deploy and args.model):
            raise EncodeError("--deploy and --model go together")
        model = workflow.Model.from_files(args.deploy, args.model, mean=args.mean,
                                          mean_values=args.mean_value, resize=args.resize)
        if args.mean is None and args.mean_value is None:
            say("[demo] note: no --mean or --mean-value given: nothing is subtracted (the "
                "released KevinNet expects the ImageNet mean, imagenet_mean.binaryproto)")
    if not args.list:
        raise EncodeError("give --list FILE: the images to encode and index")
    paths, labels = workflow.read_image_list(args.list)
    query = str(Path(args.query).absolute()) if args.query else paths[0]
    k = min(args.k, len(paths))
    if k < 1:
        raise EncodeError(f"--k {args.k}: must be at least 1")
    encoder = model.encoder(backend=args.backend, batch_size=args.batch_size,
                            progress=not args.quiet)
    say(f"[demo] encoding {len(paths)} images")
    features = encoder.encode_images(paths, labels=labels)
    index = workflow.index_features(features, meta={"model": model.to_meta(),
                                                    "source": {"list": str(args.list)}})
    # the query: the list's first image (already encoded), or --query encoded now
    query_features = encoder.encode_images([query]) if args.query else features
    results = workflow.query_features(index, query_features.latent[:1], query_features.fc7[:1],
                                      k=k, fine=args.fine, radius=args.radius)
    out.mkdir(parents=True, exist_ok=True)
    saved = save_features(features, out, "codes")
    saved.append(index.save(out / "images.index"))
    query_label = None if labels is None or args.query else [int(labels[0])]
    say("\n".join(workflow.format_results([query], results, query_label)))
    rows = workflow.montage_rows([query], results, query_label, query_names=[Path(query).name])
    title = f"top {k} of {len(paths)}, {features.bits}-bit codes" + \
        (f", coarse-to-fine radius {args.radius}" if args.fine else "")
    saved.append(montage.write_montage(out / "montage.png", rows, title=title))
    for path in saved:
        say(f"[demo] wrote {path}")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    custom = args.deploy or args.model or args.list or (args.run and args.list)
    try:
        return model_demo(args) if custom else digits_demo(args)
    except (EncodeError, IndexFormatError, ProtoError, FileNotFoundError, ValueError,
            ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
