"""The evaluation protocol of run_cifar10.m, from a model: encode a prepared dataset's test split
(queries) and train split (database) with a deploy net + caffemodel, ready for `metrics.evaluate`.

>>> from dlbhc_caffe import evaluation
>>> callable(evaluation.encode_for_evaluation)
True
"""
from pathlib import Path

from . import backends, runs
from .datasets import load_manifest
from .encode import EncodeError, Encoder, encode_dataset

SAVED = ("database.npz", "queries.npz")


def _engine(backend, gpu):
    """The backend module, in GPU or CPU mode before any net is built (nets pick their device
    when built)."""
    engine = backends.get(backend)
    if gpu is None:
        engine.set_mode_cpu()
    else:
        engine.set_mode_gpu()
        engine.set_device(int(gpu))
    return engine


def dataset_manifest(run=None, dataset=None, root="data"):
    """The prepared dataset to evaluate on: `dataset` in `root`, else the one the training run
    `run` was trained on (its run.json). Cheap: read before any encoding, so the database size
    (``train_count``) can be checked against the k asked for."""
    if dataset is not None:
        return load_manifest(root, dataset)
    if run is not None and (Path(run) / runs.RUN_JSON).is_file():
        record = runs.read_record(run)
        if record.get("dataset_manifest_path"):
            return load_manifest(record["dataset_manifest_path"])
    raise EncodeError("name the prepared dataset to evaluate on (--dataset NAME)")


def check_saved(out, force=False):
    """Refuse (FileExistsError) when `out` already holds database.npz or queries.npz, unless
    `force` (--force)."""
    present = [name for name in SAVED if (Path(out) / name).exists()]
    if present and not force:
        raise FileExistsError(f"{out} already holds {', '.join(present)}; choose another "
                              f"output folder or overwrite with --force")


def encode_for_evaluation(run=None, deploy=None, model=None, mean=None, scale=1.0, dataset=None,
                          root="data", backend="auto", gpu=None, batch_size=100, out=None,
                          force=False, progress=True, allow_missing_weights=False,
                          manifest=None, mean_values=None, allow_layers=()):
    """(database, queries) Features of a dataset's train and test splits through a model.

    The model is a training run folder (`run`), or `deploy` + `model` (+ `mean`, the mean file it
    was trained with, or its `mean_values`, and `scale`, its transform_param.scale). The dataset
    is `manifest` (as :func:`dataset_manifest` gives it), else found from `dataset` / the run. With `out`, the
    features are also saved there as database.npz and queries.npz (refused when present, unless
    `force`), once both are encoded.
    """
    if out is not None:
        check_saved(out, force)
    if manifest is None:
        manifest = dataset_manifest(run, dataset, root)
    engine = _engine(backend, gpu)
    if run is not None:
        encoder = Encoder.from_run(run, backend=engine.name, batch_size=batch_size,
                                   progress=progress, allow_layers=allow_layers,
                                   allow_missing_weights=allow_missing_weights)
    else:
        encoder = Encoder.from_files(deploy, model, mean=mean, mean_values=mean_values,
                                     scale=1.0 if scale is None else scale, backend=engine.name,
                                     batch_size=batch_size, progress=progress,
                                     allow_layers=allow_layers,
                                     allow_missing_weights=allow_missing_weights)
    database, queries = encode_dataset(encoder, manifest)
    if out is not None:
        save_features(out, database, queries)
    return database, queries


def save_features(out, database, queries):
    """database.npz and queries.npz in `out`; returns their paths."""
    return [features.save(Path(out) / name) for features, name in zip((database, queries), SAVED)]
