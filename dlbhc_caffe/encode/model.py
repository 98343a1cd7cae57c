"""The model that encodes images, and the one set of command-line options that names it.

Every tool that runs a trained net (tools/search.py, tools/evaluate.py, demo.py) takes the model
the same way: a training run folder (`--run DIR`), or a deploy prototxt and its weights
(`--deploy`, `--model`) with the preprocessing they were trained with (`--mean` or
`--mean-value`, `--resize`, `--scale`). `add_model_options` adds these flags to a parser and
`resolve_model` turns the parsed arguments into a :class:`Model`, with the same rules and the same
messages in every tool.

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> _ = add_model_options(parser)
>>> args = parser.parse_args(["--deploy", "d.prototxt", "--model", "m.caffemodel",
...                           "--mean-value", "104,117,123"])
>>> model = resolve_model(args)
>>> model.mean_values, model.scale, Path(model.deploy).name
([104.0, 117.0, 123.0], 1.0, 'd.prototxt')
>>> resolve_model(parser.parse_args(["--run", "r", "--model", "m.caffemodel"]))
Traceback (most recent call last):
...
dlbhc_caffe.encode.transform.EncodeError: --run takes the model from the run folder: drop --model
"""
import argparse
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import runs
from ..rules.validate import ALLOW_LAYER_FLAG, check_beside
from ..rules.weights import ALLOW_FLAG
from .encoder import BATCH_SIZE, Encoder
from .transform import EncodeError

# The flags that name a model apart from --run, as (flag, attribute); --scale counts when given.
FILE_FLAGS = (("--deploy", "deploy"), ("--model", "model"), ("--mean", "mean"),
              ("--mean-value", "mean_value"), ("--resize", "resize"), ("--scale", "scale"))


def _size_list(size):
    """None, N or (H, W) -> None or [H, W]."""
    if size is None:
        return None
    size = [int(s) for s in np.atleast_1d(size)]
    return size * 2 if len(size) == 1 else size


def _absolute(path):
    return None if path is None else str(Path(path).resolve())


@dataclass
class Model:
    """The net that encodes images: a run folder, or deploy + weights (+ mean, resize, scale).

    Saved in an index's meta (:meth:`to_meta`), so a query encodes its images as the database
    was encoded without being told the model again. What the user allowed on the command line
    (``allow_layers``, ``allow_missing_weights``) is never saved nor read from a meta: a file
    must not grant itself trust.
    """

    deploy: str
    weights: str
    mean: str = None
    mean_values: list = None
    resize: list = None
    scale: float = 1.0
    run: str = None
    allow_layers: tuple = field(default=(), metadata={"trust": True})
    allow_missing_weights: bool = field(default=False, metadata={"trust": True})

    @classmethod
    def from_run(cls, run_dir):
        """The model of a training run folder (see :func:`dlbhc_caffe.runs.run_settings`)."""
        settings = runs.run_settings(run_dir)
        return cls(deploy=_absolute(settings["deploy"]), weights=_absolute(settings["weights"]),
                   mean=_absolute(settings["mean"]),
                   mean_values=None if settings["mean_values"] is None
                   else [float(v) for v in np.atleast_1d(settings["mean_values"])],
                   resize=_size_list(settings["resize"]), scale=float(settings["scale"]),
                   run=_absolute(run_dir))

    @classmethod
    def from_files(cls, deploy, weights, mean=None, mean_values=None, resize=None, scale=None):
        return cls(deploy=_absolute(deploy), weights=_absolute(weights), mean=_absolute(mean),
                   mean_values=None if mean_values is None
                   else [float(v) for v in np.atleast_1d(mean_values)],
                   resize=_size_list(resize), scale=1.0 if scale is None else float(scale))

    @classmethod
    def from_meta(cls, meta):
        """The model recorded in an index's meta (None when there is none)."""
        model = (meta or {}).get("model")
        if not isinstance(model, dict) or not model.get("deploy") or not model.get("weights"):
            return None
        return cls(**{k: model.get(k) for k in _saved_fields() if k in model})

    @classmethod
    def recorded_beside(cls, index_path, meta):
        """The model an index recorded, only if its files sit beside the index (None when it
        recorded none): a crafted index must not make a query load files from elsewhere."""
        model = cls.from_meta(meta)
        if model is not None:
            files = [f for f in (model.deploy, model.weights, model.mean) if f]
            check_beside(index_path, files, "model file")
        return model

    def to_meta(self):
        saved = _saved_fields()
        return {k: v for k, v in asdict(self).items() if k in saved}

    def trusting(self, allow_layers=(), allow_missing_weights=False):
        """This model with what the command line allowed (see add_model_options)."""
        return replace(self, allow_layers=tuple(allow_layers or ()),
                       allow_missing_weights=bool(allow_missing_weights))

    def encoder(self, backend="auto", batch_size=BATCH_SIZE, progress=False,
                allow_missing_weights=None):
        if allow_missing_weights is None:
            allow_missing_weights = self.allow_missing_weights
        return Encoder.from_files(self.deploy, self.weights, mean=self.mean,
                                  mean_values=self.mean_values, resize=self.resize,
                                  scale=self.scale, backend=backend, batch_size=batch_size,
                                  progress=progress, allow_layers=self.allow_layers,
                                  allow_missing_weights=allow_missing_weights)


def _saved_fields():
    """The Model fields an index's meta holds: all but the command line's trust."""
    return [f.name for f in Model.__dataclass_fields__.values() if not f.metadata.get("trust")]


def mean_values(text):
    """argparse type of --mean-value: one number, or one a channel separated by commas."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or comma-separated numbers "
                                         "(e.g. 104,117,123, BGR)") from None


def add_model_options(parser, title="model (a training run, or deploy + model + mean)",
                      resize=True):
    """Add --run, --deploy, --model, --mean | --mean-value, [--resize,] --scale to `parser`
    (an ArgumentParser or a group) in one argument group; returns the group. `resize=False`
    for tools that encode database records only (Caffe never resizes them)."""
    group = parser.add_argument_group(title)
    group.add_argument("--run", metavar="DIR", help="training run folder (run.json, "
                                                   "deploy.prototxt, final.caffemodel)")
    group.add_argument("--deploy", metavar="PROTOTXT", help="deploy prototxt (any Caffe "
                                                           "generation)")
    group.add_argument("--model", metavar="CAFFEMODEL", help="its trained weights")
    mean = group.add_mutually_exclusive_group()
    mean.add_argument("--mean", metavar="BINARYPROTO",
                      help="mean file (BGR) the model was trained with; images are resized to "
                           "its size, then cropped")
    mean.add_argument("--mean-value", metavar="V[,V,V]", type=mean_values,
                      help="mean value(s), BGR, instead of a mean file")
    if resize:
        group.add_argument("--resize", type=int, metavar="N",
                           help="resize images to N x N before cropping (default: the mean "
                                "file's size, else the net's input)")
    group.add_argument("--scale", type=float, metavar="S",
                       help="multiplier of the mean-subtracted pixels (the transform_param.scale "
                            "the model was trained with; default 1)")
    group.add_argument(ALLOW_FLAG, action="store_true",
                       help="use a caffemodel that lacks weights for some learnable layers (they "
                            "keep their fillers: the codes mean little; refused by default)")
    group.add_argument(ALLOW_LAYER_FLAG, action="append", metavar="NAME", dest="allow_layer",
                       help="let the net keep a layer that writes files or runs code "
                            "(HDF5Output, Python), by layer name or type; repeatable (refused "
                            "by default)")
    return group


def model_given(args):
    """Whether parsed `args` name a model at all (--run or any of the file flags)."""
    return bool(getattr(args, "run", None)) or \
        any(getattr(args, name, None) is not None for _, name in FILE_FLAGS)


def resolve_model(args, fallback=None, required=True):
    """The Model that parsed `args` name (see add_model_options), else `fallback`, with what
    `args` allow (--allow-layer, --allow-missing-weights).

    --run excludes every other model flag; --deploy and --model go together; with neither and
    no fallback, EncodeError says what to give (or, not `required`, None: the caller has a
    default of its own, e.g. the model recorded in an index).
    """
    model = _named_model(args, fallback, required)
    if model is None:
        return None
    return model.trusting(getattr(args, "allow_layer", None),
                          getattr(args, "allow_missing_weights", False))


def _named_model(args, fallback, required):
    given = [flag for flag, name in FILE_FLAGS if getattr(args, name, None) is not None]
    if getattr(args, "run", None):
        if given:
            raise EncodeError(f"--run takes the model from the run folder: drop "
                              f"{', '.join(given)}")
        return Model.from_run(args.run)
    if args.deploy or args.model:
        if not (args.deploy and args.model):
            raise EncodeError("--deploy and --model go together (or give --run)")
        return Model.from_files(args.deploy, args.model, mean=args.mean,
                                mean_values=args.mean_value,
                                resize=getattr(args, "resize", None), scale=args.scale)
    if fallback is None:
        if given:
            raise EncodeError(f"{', '.join(given)} need --deploy and --model (or give --run)")
        if not required:
            return None
        raise EncodeError("no model: give --run DIR, or --deploy and --model")
    return fallback
