"""The evaluation protocol of run_cifar10.m, from a model: encode a prepared dataset's test split
(queries) and train split (database) with a deploy net + caffemodel, ready for `metrics.evaluate`.

>>> from dlbhc_caffe import evaluation
>>> callable(evaluation.encode_for_evaluation)
True
"""
import json
from pathlib import Path

from .features import EncodeError, Encoder, encode_dataset

SAVED = ("database.npz", "queries.npz")


def _engine(backend, gpu):
    """The backend module, in GPU or CPU mode before any net is built (nets pick their device
    when built)."""
    from . import backends  # noqa: PLC0415

    engine = backends.get(backend)
    if gpu is None:
        engine.set_mode_cpu()
    else:
        engine.set_mode_gpu()
        engine.set_device(int(gpu))
    return engine


def _dataset_manifest(dataset, root, run_record):
    from .datasets import load_manifest  # noqa: PLC0415

    if dataset is not None:
        return load_manifest(root, dataset)
    if run_record is not None and run_record.get("dataset_manifest_path"):
        return load_manifest(run_record["dataset_manifest_path"])
    raise EncodeError("name the prepared dataset to evaluate on (--dataset NAME)")


def encode_for_evaluation(run=None, deploy=None, model=None, mean=None, scale=1.0, dataset=None,
                          root="data", backend="auto", gpu=None, batch_size=100, out=None,
                          force=False, progress=True):
    """(database, queries) Features of a dataset's train and test splits through a model.

    The model is a training run folder (`run`), or `deploy` + `model` (+ `mean`, the mean file it
    was trained with, and `scale`, its transform_param.scale). With `out`, the features are also saved there as database.npz and
    queries.npz (refused when present, unless `force`).
    """
    if out is not None and not force:
        present = [name for name in SAVED if (Path(out) / name).exists()]
        if present:
            raise FileExistsError(f"{out} already holds {', '.join(present)}; choose another "
                                  f"output folder or overwrite with --force")
    engine = _engine(backend, gpu)
    if run is not None:
        record_path = Path(run) / "run.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else None
        encoder = Encoder.from_run(run, backend=engine.name, batch_size=batch_size,
                                   progress=progress)
    else:
        record = None
        encoder = Encoder.from_files(deploy, model, mean=mean, scale=scale, backend=engine.name,
                                     batch_size=batch_size, progress=progress)
    manifest = _dataset_manifest(dataset, root, record)
    database, queries = encode_dataset(encoder, manifest)
    if out is not None:
        for features, name in zip((database, queries), SAVED):
            features.save(Path(out) / name)
    return database, queries
