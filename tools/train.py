#!/usr/bin/env python
"""Train a DLBHC net: write its train_val / deploy / solver into a run folder, then train.

    python tools/train.py --bits 48 --dry-run                 # KevinNet on CIFAR-10, files only
    python tools/train.py --bits 12 --net small --dataset digits --dry-run

The run folder is runs/<dataset>_<net>_<bits>/ unless --out is given; it must not exist yet
(--force starts it over, --resume continues it). With --dry-run the three prototxt files are
written (absolute paths inside) and their paths printed; nothing is trained.

    python tools/train.py --out runs/digits_small_12 --resume  # continue a stopped run

--resume continues with the folder's own nets and solver: the net flags (--bits, --dataset,
--net, --batch-size, --max-iter, ...) may be left out, and any given must agree with the run.

Dataset facts (classes, databases, record shape, mean) come from data/<dataset>/dataset.json,
written by tools/prepare.py; without it CIFAR-10's defaults are used, and a note says so.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlbhc_caffe import cli  # noqa: E402
from dlbhc_caffe import netgen, runs  # noqa: E402


def _mean_values(text):
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected one number or one a channel separated by commas (e.g. 104,117,123), "
            f"got {text!r}") from None


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, default=None,
                   help=f"code length: units of the latent layer fc8_kevin, 1..{netgen.MAX_BITS} "
                        f"(the paper: {', '.join(map(str, netgen.PAPER_BITS))}); required "
                        f"unless --resume")
    p.add_argument("--dataset", default=None,
                   help="dataset name (default: cifar10); reads <root>/<dataset>/dataset.json "
                        "when it exists")
    p.add_argument("--net", choices=netgen.NETS, default=None,
                   help="kevinnet (default): CaffeNet + latent layer on 256x256 records, 227 "
                        "crops (the paper); small: 3 conv + fc7 of 64 for 32x32 records, from "
                        "scratch on a CPU")
    p.add_argument("--root", default=None,
                   help="data folder holding <dataset>/ and ilsvrc12/imagenet_mean.binaryproto "
                        "(default: data)")
    p.add_argument("--db", choices=("leveldb", "lmdb"), default=None,
                   help="database type (default: the manifest's, else leveldb)")
    p.add_argument("--classes", type=int, default=None,
                   help="number of classes (default: the manifest's, else 10 for CIFAR-10)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="training batch size (default: 32 kevinnet, 64 small)")
    p.add_argument("--test-batch-size", type=int, default=None,
                   help="test batch size (default: 32 kevinnet, 100 small)")
    p.add_argument("--crop", type=int, default=None,
                   help="crop size, at most the record size (default: 227 kevinnet, none small)")
    mean = p.add_mutually_exclusive_group()
    mean.add_argument("--mean-file", default=None,
                      help="mean .binaryproto at the record size (default: <root>/ilsvrc12/"
                           "imagenet_mean.binaryproto for kevinnet, the dataset's own mean for "
                           "small)")
    mean.add_argument("--mean-value", type=_mean_values, default=None,
                      help="mean value(s) to subtract instead of a mean file: one, or one a "
                           "channel (BGR), comma separated")
    p.add_argument("--test-interval", type=int, default=None,
                   help="iterations between tests (default: 100 kevinnet as the original, 200 "
                        "small)")
    p.add_argument("--test-iter", type=int, default=None,
                   help="test batches per test (default: 100 kevinnet, the whole test set small)")
    p.add_argument("--max-iter", type=int, default=None,
                   help="training iterations (default: 50000 kevinnet, 1000 small); the lr "
                        "steps down x0.1 at half of it")
    p.add_argument("--base-lr", type=float, default=None,
                   help="base learning rate (default: 0.001 kevinnet, 0.01 small)")
    p.add_argument("--snapshot", type=int, default=None,
                   help="iterations between snapshots, 0 for none (default: 10000 kevinnet, "
                        "500 small)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed (solver random_seed); default: Caffe's own")
    p.add_argument("--solver-mode", choices=("cpu", "gpu"), default="cpu",
                   help="solver_mode written into solver.prototxt, for Caffe's command line "
                        "(default: cpu)")
    p.add_argument("--out", default=None,
                   help="run folder (default: runs/<dataset>_<net>_<bits>)")
    p.add_argument("--force", action="store_true",
                   help="start an existing run folder over (its run files are replaced)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="SOLVERSTATE",
                   help="continue an existing run folder from SOLVERSTATE (default: its latest "
                        "snapshot) with the folder's own nets and solver: the iteration, the lr "
                        "schedule and the momentum history are restored; a .solverstate holds no "
                        "data cursor, so the Data layer reads from the first record again")
    training = p.add_argument_group("training (without --dry-run)")
    training.add_argument("--weights", default=None, metavar="caffenet|PATH|none",
                          help="pretrained caffemodel copied by layer name as `caffe train "
                               "-weights` does (default: caffenet for kevinnet, from <root>/"
                               "models; none for small)")
    device = training.add_mutually_exclusive_group()
    device.add_argument("--gpu", type=int, default=None, metavar="ID",
                        help="train on GPU ID (also writes solver_mode: GPU)")
    device.add_argument("--cpu", action="store_true", help="train on the CPU (the default)")
    training.add_argument("--backend", choices=("auto", "caffe", "torch"), default="auto",
                          help="engine: real Caffe (pycaffe) or PyTorch; auto takes caffe when "
                               "it imports")
    training.add_argument("--verbose", action="store_true",
                          help="show the engine's own log (Caffe's glog INFO lines)")
    training.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true",
                   help="write train_val/deploy/solver prototxt into the run folder, print their "
                        "paths, and stop")
    return p


# The net flags a run folder fixes, and where its run.json keeps each one's value.
def _solver(name):
    return lambda record: (record.get("solver_settings") or {}).get(name)


RUN_FLAGS = {
    "bits": lambda r: r.get("bits"), "dataset": lambda r: r.get("dataset"),
    "net": lambda r: r.get("net"), "classes": lambda r: r.get("classes"),
    "batch_size": lambda r: r.get("batch_size"), "crop": lambda r: r.get("crop"),
    "seed": lambda r: r.get("seed"),
    "mean_file": lambda r: (r.get("mean") or {}).get("file"),
    "mean_value": lambda r: (r.get("mean") or {}).get("values"),
    "base_lr": _solver("base_lr"), "max_iter": _solver("max_iter"),
    "test_interval": _solver("test_interval"), "snapshot": _solver("snapshot"),
    "test_iter": lambda r: ((r.get("solver_settings") or {}).get("test_iter") or [None])[0],
}


def _test_data(train_val):
    """{"test_batch_size", "db"} of a run's TEST-phase Data layer (empty when unreadable)."""
    from dlbhc_caffe import proto  # noqa: PLC0415

    try:
        net = proto.filter_net(proto.read_net(train_val), "TEST")
    except (proto.ProtoError, TypeError):
        return {}
    for layer in net.layer:
        if layer.type == "Data":
            db = proto.pb.DataParameter.DB.Name(layer.data_param.backend).lower()
            return {"test_batch_size": layer.data_param.batch_size, "db": db}
    return {}


# Flags whose absence the run records (None: no seed, no mean file, no pretrained weights).
OPTIONAL_IN_RUN = ("seed", "mean_file", "mean_value", "weights")


def _same(flag, given, recorded):
    if flag in ("mean_file", "weights"):
        return Path(given).resolve() == Path(recorded).resolve()
    if flag in ("mean_value", "base_lr"):
        given, recorded = np.atleast_1d(given), np.atleast_1d(recorded)
        return given.shape == recorded.shape and np.allclose(given, recorded, rtol=1e-6)
    return given == recorded


def resume_record(args):
    """The run.json of the run folder --resume continues (None when it has none), after checking
    that every net flag given agrees with it; fills the flags left out from it."""
    if args.out is None and args.bits is None:
        raise runs.RunFolderError("--resume needs the run folder: give --out DIR (or the "
                                  "--dataset, --net and --bits that named it)")
    folder = Path(args.out) if args.out is not None else runs.RUNS_ROOT / \
        runs.default_run_name(args.dataset or "cifar10", args.net or "kevinnet", args.bits)
    runs.check_run_folder(folder, resume=True)
    path = folder / "run.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        if args.bits is None:
            raise runs.RunFolderError(f"{folder} has no run.json to take the run's settings "
                                      f"from: give them (--bits, --dataset, --net, ...)") from None
        return None
    except (OSError, ValueError) as err:
        raise runs.RunFolderError(f"{path}: not readable ({err}); start the run over with "
                                  f"--force") from None
    found = {flag: value(record) for flag, value in RUN_FLAGS.items()}
    found["weights"] = (record.get("weights") or {}).get("source")
    found.update(_test_data(record.get("train_val")))
    if args.weights is not None:  # the same pretrained weights, resolved as when it started
        from dlbhc_caffe.train import resolve_weights  # noqa: PLC0415

        args.weights = resolve_weights(args.weights, found["net"] or args.net or "kevinnet",
                                       args.root or "data")
    for flag, recorded in found.items():
        given = getattr(args, flag)
        if given is None:
            if flag in ("bits", "dataset", "net"):
                setattr(args, flag, recorded)
            continue
        if recorded is None and flag not in OPTIONAL_IN_RUN:
            continue  # not recorded: nothing to hold it against
        if recorded is None or not _same(flag, given, recorded):
            name = "--" + flag.replace("_", "-")
            raise runs.RunFolderError(
                f"{name} {given} contradicts the run in {folder}, which has "
                f"{name} {'none' if recorded is None else recorded}; --resume continues it as "
                f"it was started: drop {name}, or start a new run (--force, or another --out)")
    args.weights = None  # resumed from the snapshot's weights
    manifest = record.get("dataset_manifest_path")
    if args.root is None and manifest:  # where the run's dataset was, for its plan
        args.root = str(Path(manifest).parent.parent)
    return record


def train(plan, args):
    """The real training: one call into the package (dlbhc_caffe.train.train_run)."""
    from dlbhc_caffe import backends, train as training  # noqa: PLC0415

    try:
        result = training.train_run(
            plan, weights=args.weights, backend=args.backend, gpu=args.gpu, resume=args.resume,
            force=args.force, root=args.root, argv=sys.argv, progress=not args.no_progress,
            verbose=args.verbose)
    except (training.TrainError, backends.BackendUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return training.exit_code(result)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.dry_run and args.resume:
        print("error: --resume continues training; --dry-run trains nothing (drop one)",
              file=sys.stderr)
        return 2
    if not args.resume and args.bits is None:
        build_parser().error("--bits is required (unless --resume continues a run)")
    try:
        if args.resume:
            resume_record(args)
        args.dataset, args.net = args.dataset or "cifar10", args.net or "kevinnet"
        args.root = args.root or "data"
        plan = runs.plan_run(
            dataset=args.dataset, root=args.root, net=args.net, bits=args.bits,
            classes=args.classes, db=args.db, batch_size=args.batch_size,
            test_batch_size=args.test_batch_size, crop=args.crop, mean_file=args.mean_file,
            mean_value=args.mean_value, base_lr=args.base_lr, max_iter=args.max_iter,
            test_iter=args.test_iter, test_interval=args.test_interval, snapshot=args.snapshot,
            seed=args.seed, out=args.out,
            solver_mode="gpu" if args.gpu is not None else args.solver_mode)
        for note in [] if args.resume else plan.notes:  # notes on net files resume never writes
            print(f"note: {note}", file=sys.stderr)
        runs.check_run_folder(plan.folder, force=args.force, resume=args.resume)
        if not args.dry_run:
            return train(plan, args)
        for path in runs.write_net_files(plan, force=args.force).values():
            print(path)
    except (netgen.NetSpecError, runs.RunFolderError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "train.py"))
