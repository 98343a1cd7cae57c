#!/usr/bin/env python3
"""Prepare a dataset (and/or CaffeNet's weights) for training: data/<name>/ with dataset.json.

    python tools/prepare.py --dataset digits                     # offline, seconds
    python tools/prepare.py --dataset cifar10                    # the paper's data, ~12 GB raw
    python tools/prepare.py --dataset cifar10 --encoded png      # the small alternative
    python tools/prepare.py --dataset mnist --resize 32 --max-train 5000
    python tools/prepare.py --dataset list --folder photos/ --test-fraction 0.1
    python tools/prepare.py --weights caffenet                   # data/models, data/ilsvrc12
    python tools/prepare.py --dataset cifar10 --from ~/downloads # offline copies, verified
"""
import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlbhc_caffe import cli  # noqa: E402
from dlbhc_caffe import datasets  # noqa: E402
from dlbhc_caffe.datasets.download import parse_checksum  # noqa: E402


def checksum_option(text):
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FILE=ALGO:HEX")
    try:
        parse_checksum(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return name, value


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--dataset", choices=sorted(datasets.DATASETS))
    p.add_argument("--weights", choices=datasets.WEIGHTS,
                   help="fetch ImageNet weights and the ILSVRC-2012 mean")
    p.add_argument("--root", default="data", help="data folder (default: data)")
    p.add_argument("--name", help="dataset folder name (default: the dataset; for list, the "
                                  "list file's stem or the folder's name)")
    p.add_argument("--db", choices=datasets.BACKENDS, default="leveldb",
                   help="database backend (default: leveldb, as the paper)")
    p.add_argument("--resize", type=int, help="record size N x N (default 256; 32 for digits)")
    p.add_argument("--gray", action="store_true", help="one gray channel instead of BGR")
    p.add_argument("--encoded", choices=datasets.ENCODINGS, default="raw",
                   help="raw pixels (default; every Caffe reads them) or png/jpg records "
                        "(need a Caffe built with OpenCV)")
    p.add_argument("--force", action="store_true", help="replace an existing dataset folder "
                                                        "or weights")
    p.add_argument("--seed", type=int, default=0, help="seed of splits and shuffles (default 0)")
    p.add_argument("--max-train", type=int, help="keep the first N training records")
    p.add_argument("--max-test", type=int, help="keep the first N test records")
    p.add_argument("--workers", type=int, help="threads making records (default: the CPUs, "
                                                "at most 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    g = p.add_argument_group("downloads")
    g.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="take the source files from DIR (offline machines); still verified")
    g.add_argument("--mirror", action="append", default=[], metavar="URL",
                   help="try this URL first (one ending in / is a folder); repeatable")
    g.add_argument("--checksum", action="append", default=[], type=checksum_option,
                   metavar="FILE=ALGO:HEX", help="expect this checksum for FILE; repeatable")
    g.add_argument("--skip-checksum", action="store_true",
                   help="use files whose checksum differs (a modified mirror), loudly")
    g.add_argument("--downloads", metavar="DIR", help="download folder (default ROOT/downloads)")

    g = p.add_argument_group("--dataset list")
    g.add_argument("--list", dest="list_file", metavar="FILE",
                   help="'path label' lines, as convert_imageset reads")
    g.add_argument("--images-root", metavar="DIR",
                   help="folder the list's paths are relative to (default: the list's folder)")
    g.add_argument("--folder", metavar="DIR", help="a folder of class sub-folders")
    g.add_argument("--test-list", metavar="FILE", help="the held-out images, as --list")
    g.add_argument("--test-folder", metavar="DIR", help="the held-out images, as --folder")
    g.add_argument("--test-fraction", type=float, metavar="F",
                   help="hold out F of each class (seeded; default 0.2 without a test list)")
    g.add_argument("--class-names", metavar="FILE", help="one class name a line, for --list")
    g.add_argument("--no-shuffle", action="store_true",
                   help="keep the list's order in the training database")
    g.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if not args.dataset and not args.weights:
        parser().error("nothing to do: give --dataset and/or --weights")
    command = " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(
        sys.argv[1:] if argv is None else argv))
    try:
        if args.weights:
            paths = datasets.fetch_caffenet(
                args.root, from_dir=args.from_dir, mirrors=args.mirror, force=args.force,
                skip_checksum=args.skip_checksum,
                checksum=dict(args.checksum).get(datasets.weights.CAFFENET.filename),
                downloads=args.downloads, progress=not args.quiet)
            print(f"weights: {paths['weights']}\nmean: {paths['mean']}")
        if args.dataset:
            datasets.prepare(
                args.dataset, args.root, name=args.name, db=args.db, resize=args.resize,
                gray=args.gray, encoded=args.encoded, force=args.force, seed=args.seed,
                shuffle=not args.no_shuffle, from_dir=args.from_dir, mirrors=args.mirror,
                checksums=dict(args.checksum), skip_checksum=args.skip_checksum,
                downloads=args.downloads, list_file=args.list_file,
                images_root=args.images_root, folder=args.folder, test_list=args.test_list,
                test_folder=args.test_folder, test_fraction=args.test_fraction,
                strict=args.strict, class_names=args.class_names, max_train=args.max_train,
                max_test=args.max_test, workers=args.workers, progress=not args.quiet,
                command=command)
    except (datasets.DatasetError, datasets.DatabaseError, datasets.ChecksumError,
            datasets.DownloadError, datasets.ImageError) as err:
        print(f"prepare: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "prepare.py"))
