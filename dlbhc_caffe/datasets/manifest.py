"""dataset.json: what prepare wrote, for every later stage.

Paths in the file are relative to the dataset folder (so the folder can move); `load_manifest`
returns them absolute. Keys:

name, dataset (the source: cifar10, mnist, list, digits), classes (count), class_names,
record_shape [channels, height, width], channels, height, width, channel_order ("BGR"|"gray"),
encoding ("raw"|"png"|"jpg"), backend ("leveldb"|"lmdb"), train_db, test_db, train_count,
test_count, shuffle_seed (None when the training database keeps the source order), split_seed,
mean_file, train_file_list, test_file_list, train_labels, test_labels, images_on_disk (whether the
file lists name real image files), sources (files used and their checksums), skipped (unreadable
images left out), key_digits, format_version, created, command.
"""
import json
from pathlib import Path

from ..proto import atomic_write_bytes
from ..errors import DlbhcError

MANIFEST = "dataset.json"
FORMAT_VERSION = 1
PATH_KEYS = ("train_db", "test_db", "mean_file", "train_file_list", "test_file_list",
             "train_labels", "test_labels")


class DatasetError(DlbhcError):
    """A dataset folder, source or option that cannot be used; names the culprit."""


def write_manifest(folder, manifest):
    """Write `manifest` (paths relative to `folder`) as folder/dataset.json."""
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    return atomic_write_bytes(Path(folder) / MANIFEST, text.encode())


def manifest_path(root, name=None):
    """root/name/dataset.json; with name None, `root` is the dataset folder (or the json)."""
    path = Path(root) if name is None else Path(root) / name
    return path if path.suffix == ".json" else path / MANIFEST


def load_manifest(root, name=None):
    """The dataset.json of data folder `root` and dataset `name`, with absolute paths.

    >>> load_manifest("data", "cifar10")["train_db"]          # doctest: +SKIP
    '/work/main/data/cifar10/cifar10_train_leveldb'
    """
    path = manifest_path(root, name)
    if not path.is_file():
        hint = f" (run tools/prepare.py --dataset {name})" if name else ""
        raise DatasetError(f"{path}: no such dataset manifest{hint}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: not a readable dataset.json ({err})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(f"{path}: format_version {version!r}, this code reads "
                           f"{FORMAT_VERSION}; prepare the dataset again")
    missing = [key for key in PATH_KEYS + ("backend", "record_shape", "classes")
               if key not in manifest]
    if missing:
        raise DatasetError(f"{path}: missing field(s) {', '.join(missing)}")
    folder = path.parent.resolve()
    for key in PATH_KEYS:
        if manifest[key] is not None:
            manifest[key] = str((folder / manifest[key]).resolve())
    manifest["folder"] = str(folder)
    manifest["manifest"] = str(path.resolve())
    return manifest


def read_lines(path):
    """The lines of a file list or label file, without line ends."""
    return Path(path).read_text().splitlines()


def read_labels(path):
    """A label file (one integer a line) as a list of ints; errors name the file and line."""
    labels = []
    for number, line in enumerate(read_lines(path), 1):
        try:
            labels.append(int(line))
        except ValueError:
            raise DatasetError(f"{path}:{number}: not an integer label: {line!r}") from None
    return labels
