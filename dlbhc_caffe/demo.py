"""The demo (the original's demo.m), as the package runs it; `demo.py` at the repository root
parses the command line into :class:`DemoOptions` and calls :func:`run`.

>>> DemoOptions().out
'out/demo'
"""
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import datasets, metrics, montage, runs, train
from .encode import EncodeError, Encoder, Model, encode_dataset, resolve_model
from .proto import atomic_write_bytes
from .search import DEFAULT_RADIUS, workflow

DATASET, NET, BITS = "digits", "small", 12
MAX_ITER, SEED = 600, 1  # the small net's default run (docs/small-net.md): minutes on a CPU
MONTAGE_QUERIES = 6



@dataclass
class DemoOptions:
    """What the demo does; the fields are demo.py's options (see `python demo.py --help`)."""

    out: str = "out/demo"
    root: str = "data"
    run: str = None
    deploy: str = None
    model: str = None
    mean: str = None
    mean_value: list = None
    resize: int = None
    scale: float = None
    list: str = None
    query: str = None
    k: int = 10
    fine: bool = False
    radius: int = DEFAULT_RADIUS
    backend: str = "auto"
    batch_size: int = 10
    force: bool = False
    quiet: bool = False
    allow_missing_weights: bool = False
    allow_layer: list = None
    resume: object = None  # True (the latest snapshot) or a .solverstate path


def run(opts):
    """The digits default, or -- with a model or an image list -- the model demo; returns the
    exit code (0, or 128 + the signal that stopped the default's training)."""
    custom = opts.deploy or opts.model or opts.list
    if opts.resume and (custom or opts.run or opts.force):
        raise EncodeError("--resume continues the digits default's training: drop "
                          + ("--force" if opts.force else "--run/--deploy/--model/--list"))
    return model_demo(opts) if custom else digits_demo(opts)


def say(message):
    print(message, flush=True)


def write_json(path, data):
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def save_features(features, out, stem):
    """stem.npz and stem.mat in `out`; returns their paths."""
    return [features.save(Path(out) / f"{stem}{suffix}") for suffix in (".npz", ".mat")]


# ---------------------------------------------------------------- the digits default

def prepare_digits(root, force, quiet):
    if not force:
        try:
            return datasets.load_manifest(root, DATASET)
        except datasets.DatasetError:
            pass
    say(f"[demo] preparing {DATASET} in {root}/{DATASET}")
    return datasets.prepare(DATASET, root, force=force, progress=not quiet)


def demo_argv():
    """This demo's command line as run.json records it (its resume command is built from it)."""
    if Path(sys.argv[0]).name == "demo.py":
        return list(sys.argv)
    return [str(Path(__file__).resolve().parents[1] / "demo.py")]


def train_default(root, backend, force, quiet, resume=None):
    """runs/digits_small_12: reused when finished, else trained as `tools/train.py --dataset
    digits --net small --bits 12 --max-iter 600 --seed 1` would (continued from a snapshot with
    `resume`). Returns the run folder, or the TrainResult of a training a signal stopped."""
    plan = runs.plan_run(dataset=DATASET, root=root, net=NET, bits=BITS, max_iter=MAX_ITER,
                         seed=SEED)
    if runs.is_finished(plan.folder) and not force:
        say(f"[demo] reusing the trained model in {plan.folder}"
            + (" (finished: nothing to resume)" if resume else ""))
        return plan.folder
    if plan.folder.exists() and any(plan.folder.iterdir()) and not force and not resume:
        earlier = runs.earlier_run(plan.folder) or "did not finish"
        raise EncodeError(f"{plan.folder} holds a run that {earlier}")
    say(f"[demo] {'continuing' if resume else 'training'} the {NET} net at {BITS} bits on "
        f"{DATASET} in {plan.folder}")
    result = train.train_run(plan, backend=backend, force=force, resume=resume, root=root,
                             progress=not quiet, argv=demo_argv())
    if result.interrupted:
        return result
    if not runs.is_finished(plan.folder):
        raise EncodeError(f"training did not finish: no {runs.FINAL_MODEL} in {plan.folder}")
    return plan.folder


def digits_demo(opts):
    """The embedded default: prepare digits, train (or reuse) the small 12-bit net, encode,
    index, evaluate, query, montage."""
    out = Path(opts.out)
    manifest = prepare_digits(opts.root, opts.force, opts.quiet)
    run_dir = Path(opts.run) if opts.run else train_default(opts.root, opts.backend, opts.force,
                                                            opts.quiet, opts.resume)
    if not isinstance(run_dir, Path):  # a signal stopped the training: its exit code
            return train.exit_code(run_dir)
    encoder = Encoder.from_run(run_dir, backend=opts.backend, batch_size=100,
                               progress=not opts.quiet,
                               allow_layers=opts.allow_layer or (),
                               allow_missing_weights=opts.allow_missing_weights)
    say(f"[demo] encoding the database ({manifest['train_count']} records) and the queries "
        f"({manifest['test_count']})")
    database, queries = encode_dataset(encoder, manifest)
    k = opts.k
    if k < 1 or k > len(database):
        raise EncodeError(f"--k {k}: choose 1..{len(database)} (the database size)")

    index = workflow.index_features(database, meta={"model": Model.from_run(
        run_dir).to_meta(), "source": {"database": manifest["train_db"]}})
    out.mkdir(parents=True, exist_ok=True)
    saved = save_features(database, out, "database") + save_features(queries, out, "queries")
    saved.append(index.save(out / "database.index"))

    top = min(100, len(database))
    result = metrics.evaluate(database.codes, database.labels, queries.codes, queries.labels,
                              top_k=top, radius=opts.radius)
    results = workflow.query_features(index, queries.latent, queries.fc7, k=k)
    hits = np.array([[hit.label == label for hit in row]
                     for row, label in zip(results, queries.labels)])
    share = float(np.mean(hits.sum(axis=1) >= 0.8 * k))
    fine = workflow.query_features(index, queries.latent, queries.fc7, k=k, fine=True,
                                   radius=opts.radius)
    fine_hits = np.array([[hit.label == label for hit in row]
                          for row, label in zip(fine, queries.labels)])
    summary = {"dataset": DATASET, "run": str(Path(run_dir).resolve()), "bits": database.bits,
               "n_database": len(database), "n_queries": len(queries),
               f"map@{top}": result.map_at_k, f"precision@{k}": float(hits.mean()),
               f"queries_with_{int(np.ceil(0.8 * k))}_of_top_{k}_same_label": share,
               f"fine_precision@{k}_radius_{opts.radius}": float(fine_hits.mean()),
               "precision_within_radius": result.precision_within_radius,
               "radius": opts.radius,
               "top_labels_hamming": [[hit.label for hit in row] for row in results],
               "query_labels": queries.labels.tolist()}
    write_json(out / "summary.json", summary)
    for line in metrics.format_summary(result):
        say(f"[demo] {line}")
    say(f"[demo] precision@{k} (Hamming ranking) = {hits.mean():.4f}; coarse-to-fine "
        f"(radius {opts.radius}, fc7 re-ranking) = {fine_hits.mean():.4f}")
    say(f"[demo] queries with at least {int(np.ceil(0.8 * k))} of their top {k} sharing their "
        f"label: {share:.1%}")

    # the montage: the first query of each of a few classes, pictures from the records
    db_images, _ = datasets.read_records(manifest["train_db"], manifest["backend"])
    q_images, _ = datasets.read_records(manifest["test_db"], manifest["backend"])
    shown = [int(np.flatnonzero(queries.labels == c)[0])
             for c in np.unique(queries.labels)[:MONTAGE_QUERIES]]
    chosen = fine if opts.fine else results
    rows = workflow.montage_rows([montage.record_to_rgb(q_images[i]) for i in shown],
                                 [chosen[i] for i in shown], queries.labels[shown],
                                 picture_of=lambda hit: montage.record_to_rgb(db_images[hit.row]),
                                 class_names=manifest.get("class_names"))
    title = (f"{DATASET}, {database.bits} bits: top {k} of {len(database)} by "
             + (f"coarse-to-fine (radius {opts.radius})" if opts.fine else "Hamming distance"))
    saved.append(montage.write_montage(out / "montage.png", rows, title=title))
    for path in saved + [out / "summary.json"]:
        say(f"[demo] wrote {path}")
    return 0


# ---------------------------------------------------------------- your model and images

def model_demo(opts):
    """A model (run folder, or deploy + caffemodel + mean) over an image list: encode, save,
    index, query one image, montage."""
    out = Path(opts.out)
    model = resolve_model(opts)
    if not opts.run:
        if opts.mean is None and opts.mean_value is None:
            say("[demo] note: no --mean or --mean-value given: nothing is subtracted (the "
                "released KevinNet expects the ImageNet mean, imagenet_mean.binaryproto)")
    if not opts.list:
        raise EncodeError("give --list FILE: the images to encode and index")
    paths, labels = workflow.read_image_list(opts.list)
    query = str(Path(opts.query).absolute()) if opts.query else paths[0]
    k = min(opts.k, len(paths))
    if k < 1:
        raise EncodeError(f"--k {opts.k}: must be at least 1")
    encoder = model.encoder(backend=opts.backend, batch_size=opts.batch_size,
                            progress=not opts.quiet)
    say(f"[demo] encoding {len(paths)} images")
    features = encoder.encode_images(paths, labels=labels)
    index = workflow.index_features(features, meta={"model": model.to_meta(),
                                                    "source": {"list": str(opts.list)}})
    # the query: the list's first image (already encoded), or --query encoded now
    query_features = encoder.encode_images([query]) if opts.query else features
    results = workflow.query_features(index, query_features.latent[:1], query_features.fc7[:1],
                                      k=k, fine=opts.fine, radius=opts.radius)
    out.mkdir(parents=True, exist_ok=True)
    saved = save_features(features, out, "codes")
    saved.append(index.save(out / "images.index"))
    query_label = None if labels is None or opts.query else [int(labels[0])]
    say("\n".join(workflow.format_results([query], results, query_label)))
    rows = workflow.montage_rows([query], results, query_label, query_names=[Path(query).name])
    title = f"top {k} of {len(paths)}, {features.bits}-bit codes" + \
        (f", coarse-to-fine radius {opts.radius}" if opts.fine else "")
    saved.append(montage.write_montage(out / "montage.png", rows, title=title))
    for path in saved:
        say(f"[demo] wrote {path}")
    return 0
