"""CaffeNet's ImageNet weights and the ILSVRC-2012 mean, where train.py looks for them.

    data/models/bvlc_reference_caffenet.caffemodel   (sha1 published by BVLC)
    data/ilsvrc12/imagenet_mean.binaryproto          (from caffe_ilsvrc12.tar.gz, Caffe's aux data)

The aux archive has no published checksum; the mean extracted from it is compared with the
original project's copy (sha256 below) and a difference is reported loudly. `from_dir` takes the
files from a folder instead of the network: the caffemodel, and either caffe_ilsvrc12.tar.gz or
imagenet_mean.binaryproto itself.
"""
import os
import shutil
import tarfile
from pathlib import Path

from ..fileio import atomic_path, atomic_write_bytes
from ..proto import ProtoError, read_mean
from .build import log_line
from .download import (ChecksumError, DownloadError, Resource, fetch, file_checksum,
                       parse_checksum, verify, warn_loudly)
from .manifest import DatasetError

HOST = "http://dl.caffe.berkeleyvision.org/"
CAFFENET = Resource("bvlc_reference_caffenet.caffemodel", urls=(HOST + "bvlc_reference_caffenet"
                    ".caffemodel",), checksum="sha1:4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46",
                    size=243862414)
AUX = Resource("caffe_ilsvrc12.tar.gz", urls=(HOST + "caffe_ilsvrc12.tar.gz",), checksum=None,
               size=17858008)
MEAN_NAME = "imagenet_mean.binaryproto"
MEAN_SHA256 = "b5863836b6777bdb3d336d94c791864500e2aebb49f7c2bf3d20110223da244f"
MEAN_SHAPE = (3, 256, 256)

WEIGHTS = ("caffenet",)


def caffenet_paths(root="data"):
    """{"weights": data/models/..caffemodel, "mean": data/ilsvrc12/imagenet_mean.binaryproto}."""
    root = Path(root)
    return {"weights": root / "models" / CAFFENET.filename,
            "mean": root / "ilsvrc12" / MEAN_NAME}


def _check_mean(path, log):
    """Parse the mean (1 x 3 x 256 x 256) and compare it with the original project's copy."""
    try:
        shape = read_mean(path).shape
    except ProtoError as err:
        raise DatasetError(f"{path}: not a mean binaryproto ({err})") from None
    if shape != MEAN_SHAPE:
        raise DatasetError(f"{path}: mean of shape {shape}, expected {MEAN_SHAPE}")
    digest = file_checksum(path, "sha256")
    if digest == MEAN_SHA256:
        log(f"{path}: sha256 matches the original project's copy")
        return True
    warn_loudly(log, f"{path}: sha256 {digest} differs from the original project's copy "
               f"({MEAN_SHA256}); it is a valid 1x3x256x256 mean, used as it is")
    return False


def _extract_aux(archive, folder, force, log):
    """Extract the aux archive's plain files into `folder` (existing ones kept unless force)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            for member in members:
                name = Path(member.name).name
                if not name or name.startswith("."):
                    continue
                target = folder / name
                if target.exists() and not force:
                    continue
                with tar.extractfile(member) as src:
                    atomic_write_bytes(target, src.read())
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DatasetError(f"{archive}: not a readable tar archive ({err})") from None
    if not (folder / MEAN_NAME).is_file():
        raise DatasetError(f"{archive}: holds no {MEAN_NAME}")


def _install(source, target, move):
    """Put `source` at `target` in one step: moved (a download) or copied (a --from file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if move:
        try:
            os.replace(source, target)
            return
        except OSError:
            pass  # another file system: copy
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    if move:
        Path(source).unlink()


def fetch_caffenet(root="data", from_dir=None, mirrors=(), force=False, skip_checksum=False,
                   checksum=None, downloads=None, progress=True, log=log_line):
    """Put the CaffeNet weights and the ImageNet mean in place; returns caffenet_paths(root).

    A file already in place that verifies is kept; one that does not is an error unless `force`.
    checksum overrides the caffemodel's published sha1 ("algo:hex"). mirrors: URLs of folders
    (ending in "/") that hold the caffemodel and caffe_ilsvrc12.tar.gz, tried first.
    """
    root = Path(root)
    paths = caffenet_paths(root)
    downloads = Path(downloads) if downloads else root / "downloads"

    weights = paths["weights"]
    expected = checksum or CAFFENET.checksum
    if weights.is_file() and not force:
        try:
            digest = verify(weights, expected, skip=skip_checksum, log=log)
        except ChecksumError as err:
            raise ChecksumError(f"{err}; pass --force to fetch it again") from None
        if digest == parse_checksum(expected)[1]:
            log(f"{weights}: present, {parse_checksum(expected)[0]} ok")
    else:
        fetched = fetch(CAFFENET, downloads / CAFFENET.filename, from_dir=from_dir,
                        mirrors=mirrors, checksum=checksum, skip_checksum=skip_checksum,
                        progress=progress, log=log)
        _install(fetched, weights, move=from_dir is None)
        log(f"{weights}: in place")

    mean = paths["mean"]
    if mean.is_file() and not force:
        if not _check_mean(mean, log):
            log(f"{mean}: kept (pass --force to replace it)")
        return paths
    direct = Path(from_dir) / MEAN_NAME if from_dir is not None else None
    if direct is not None and direct.is_file():
        _install(direct, mean, move=False)
        log(f"copied {direct} -> {mean}")
    else:
        if skip_checksum:
            log(f"{AUX.filename} has no published checksum; the mean inside is checked instead")
        try:
            archive = fetch(AUX, downloads / AUX.filename, from_dir=from_dir, mirrors=mirrors,
                            progress=progress, log=log)
        except DownloadError as err:
            if from_dir is None:
                raise
            raise DownloadError(f"{err}; or put {MEAN_NAME} itself there") from None
        _extract_aux(archive, mean.parent, force, log)
    _check_mean(mean, log)
    return paths
