"""The user's own images: a list file (convert_imageset's format) or a folder of class folders.

List file: one `path label` a line (the label after the last space, so paths may hold spaces);
relative paths are taken from `images_root`, or else from the list file's folder. Blank lines and
lines starting with '#' are skipped. Class names come from `class_names` (a file, one name a line,
line i names label i) or are the label numbers.

Folder: one sub-folder per class (sorted names -> labels 0, 1, ...), image files anywhere below.

The test split is a second list (`test_list`) or folder (`test_folder`), or a seeded, stratified
fraction of the images (`test_fraction`, 0.2 when nothing else is given), kept in list order.
The training items are shuffled with the seed unless `shuffle` is off, as convert_imageset
--shuffle did: Caffe's Data layer reads in key order, and a class-sorted list otherwise trains on
one class at a time. File list names are the images' absolute paths, in database order.
"""
from pathlib import Path

import numpy as np

from .build import Source, Split, stratified_split
from .manifest import DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm",
                  ".pbm", ".webp"}
DEFAULT_TEST_FRACTION = 0.2


def read_list(list_file, images_root=None, require_labels=True):
    """(absolute paths, labels) of an image list: convert_imageset's `path label` lines (the
    label after the last space), relative paths from `images_root` or else the list's folder.

    With require_labels=False a list of bare paths is accepted too, and labels is then None
    (when no line ends in one). Blank lines and '#' lines are skipped;
    errors name the file and line.
    """
    list_file = Path(list_file)
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{list_file}: cannot read the list ({err})") from None
    base = Path(images_root) if images_root is not None else list_file.parent
    entries = [(n, line.strip()) for n, line in enumerate(lines, 1)
               if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise DatasetError(f"{list_file}: no images listed")
    parsed = [_split_line(text) for _, text in entries]
    # A list where some lines end in a label is a labelled list: a line without one is an
    # error naming that line, not a path with " x" in its name (nor a reason to blame the rest).
    with_labels = require_labels or any(label is not None for _, label in parsed)
    paths, labels = [], []
    for (number, text), (path, label) in zip(entries, parsed):
        if with_labels:
            if label is None:
                head, sep, tail = text.rpartition(" ")
                if sep and head.strip():
                    raise DatasetError(f"{list_file}:{number}: label {tail!r} is not an integer")
                raise DatasetError(f"{list_file}:{number}: expected 'path label', got {text!r}")
            if label < 0:
                raise DatasetError(f"{list_file}:{number}: label {label} is negative")
        else:
            path = text
        path = Path(path)
        paths.append(str((path if path.is_absolute() else base / path).absolute()))
        labels.append(label)
    return paths, (np.array(labels, np.int64) if with_labels else None)


def _split_line(text):
    """(path, label or None): the label is an integer after the last space."""
    head, sep, tail = text.rpartition(" ")
    if sep and head.strip() and tail.lstrip("-").isdigit():
        return head.strip(), int(tail)
    return text, None


def parse_list(list_file, images_root=None):
    """[(absolute path, label)] of a convert_imageset list; errors name the file and line."""
    paths, labels = read_list(list_file, images_root)
    return list(zip(paths, labels.tolist()))


def image_files(folder):
    """The image files below ``folder`` (any depth, IMAGE_SUFFIXES, any case), sorted: the one
    scanner of image folders (prepare's --folder, search's --folder)."""
    return sorted(p for p in Path(folder).rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan_folder(folder, class_names=None):
    """([(absolute path, label)], class names) of a folder of class sub-folders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_names is None:
        class_names = found
        if not class_names:
            raise DatasetError(f"{folder}: no class sub-folders")
    else:
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise DatasetError(f"{folder}: class folder(s) {', '.join(unknown)} are not among "
                               f"the training classes {class_names}")
    entries = []
    for label, name in enumerate(class_names):
        sub = folder / name
        if not sub.is_dir():
            continue
        files = image_files(sub)
        entries.extend((str(p.absolute()), label) for p in files)
    if not entries:
        raise DatasetError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return entries, list(class_names)


def _read_class_names(path):
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path}: no class names")
    return names


def load(opts):
    """The Source of a list or folder of images (see module docstring)."""
    if (opts.list_file is None) == (opts.folder is None):
        raise DatasetError("--dataset list needs one of --list FILE or --folder DIR")
    if opts.test_list is not None and opts.test_folder is not None:
        raise DatasetError("give one of --test-list and --test-folder, not both")
    held_out = opts.test_list is not None or opts.test_folder is not None
    if held_out and opts.test_fraction is not None:
        raise DatasetError("--test-fraction draws the test split from the training list; "
                           "it goes with neither --test-list nor --test-folder")

    if opts.folder is not None:
        if opts.class_names_file is not None:
            raise DatasetError("--class-names goes with --list; a --folder names its classes")
        train, class_names = scan_folder(opts.folder)
    else:
        train = parse_list(opts.list_file, opts.images_root)
        class_names = None
        if opts.class_names_file is not None:
            class_names = _read_class_names(opts.class_names_file)

    if opts.test_folder is not None:
        test, class_names = scan_folder(opts.test_folder, class_names)
    elif opts.test_list is not None:
        test = parse_list(opts.test_list, opts.images_root)
    else:
        fraction = DEFAULT_TEST_FRACTION if opts.test_fraction is None else opts.test_fraction
        train_idx, test_idx = stratified_split([label for _, label in train], fraction,
                                                 opts.seed)
        train, test = [train[i] for i in train_idx], [train[i] for i in test_idx]
        opts.log(f"test split: {len(test):,} of {len(train) + len(test):,} images "
                 f"(--test-fraction {fraction}, seed {opts.seed})")
    if not test:
        raise DatasetError("the test split is empty; give --test-list, --test-folder or a "
                           "larger --test-fraction")

    top = max(label for _, label in train + test)
    if class_names is None:
        class_names = [str(i) for i in range(top + 1)]
    elif top >= len(class_names):
        raise DatasetError(f"{opts.class_names_file or opts.folder}: {len(class_names)} class "
                           f"names, but a label is {top}")

    if opts.shuffle:
        train = [train[i] for i in np.random.default_rng(opts.seed).permutation(len(train))]

    def split(entries):
        return Split(((path, label, path) for path, label in entries), len(entries))

    return Source(class_names=class_names, train=split(train), test=split(test),
                  images_on_disk=True, shuffle_seed=opts.seed if opts.shuffle else None,
                  split_seed=opts.seed if not held_out else None)
