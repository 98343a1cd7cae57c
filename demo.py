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
the digits and retrains the default model; Ctrl-C during its training snapshots it, and
--resume continues from there.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dlbhc_caffe import cli  # noqa: E402
from dlbhc_caffe.demo import DemoOptions, run  # noqa: E402
from dlbhc_caffe.encode import EncodeError, add_model_options  # noqa: E402
from dlbhc_caffe.proto import ProtoError  # noqa: E402
from dlbhc_caffe.search import DEFAULT_RADIUS, IndexFormatError  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    g = add_model_options(p, "your model and images (otherwise: the digits default; --run "
                             "with the digits default: use this run)")
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
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="SOLVERSTATE",
                   help="continue the default model's stopped training from SOLVERSTATE "
                        "(default: its latest snapshot), then go on with the demo")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run(DemoOptions(**vars(args)))
    except (EncodeError, IndexFormatError, ProtoError, FileNotFoundError, ValueError,
            ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli.run(main, "demo.py"))
