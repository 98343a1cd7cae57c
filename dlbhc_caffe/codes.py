"""Read hash codes, fc7 features and labels from files.

Formats:

- ``.npz``: arrays ``codes`` (0/1, [n, bits]), optionally ``labels`` ([n]) and ``fc7`` ([n, d]).
- ``.npy``: one array: 0/1 codes [n, bits], float features [n, d], or labels [n].
- ``.mat``: MATLAB files, v7.3 (HDF5, read with h5py) like the original's ``binary-train.mat``,
  or older versions (read with scipy). The original stores a code matrix with one column per
  image; h5py shows a v7.3 matrix transposed, so its rows are already the images, while scipy
  shows the MATLAB orientation and is transposed here. When the number of labels is known and
  only the other orientation matches it, the matrix is turned to match.
- ``.txt`` (labels): one label per line.
- ``.index``: an index saved by :mod:`dlbhc_caffe.search` (``load_index``), when available.

Every error names the file it is about.

>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "db.npz")
>>> np.savez(path, codes=np.array([[0, 1], [1, 1]], np.uint8), labels=np.array([3, 7]))
>>> codes, labels = load_set(path)
>>> codes.tolist(), labels.tolist()
([[0, 1], [1, 1]], [3, 7])
"""
import os

import numpy as np

from . import search
from .hamming import unpack_codes

__all__ = ["load_codes", "load_features", "load_labels", "load_set"]

# Variable names tried, in order, when a .mat file holds several matrices.
_MAT_CODE_NAMES = ("codes", "binary_train", "binary_test", "binary")
_MAT_FEATURE_NAMES = ("fc7", "feat_train", "feat_test", "features", "feat")


def _check_exists(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file.")
    return path


def _suffix(path):
    return os.path.splitext(path)[1].lower()


# ------------------------------------------------------------------------------------------------
# raw readers: .npz and .index give a dict with "codes", "labels", "fc7" (None when absent)

def _read_npz(path):
    with np.load(path, allow_pickle=False) as npz:
        found = {key: npz[key] for key in npz.files}
    return {"codes": found.get("codes"), "labels": found.get("labels"),
            "fc7": found.get("fc7"), "keys": sorted(found)}


def _mat_variables(path):
    """{name: array} of a .mat file, in h5py's (v7.3) or scipy's (older) orientation."""
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        h5py = None
    if h5py is not None and h5py.is_hdf5(path):
        variables = {}
        with h5py.File(path, "r") as mat:
            for name, item in mat.items():
                if isinstance(item, h5py.Dataset) and not name.startswith("#"):
                    variables[name] = item[()]
        return variables
    try:
        from scipy.io import loadmat
    except ImportError as err:  # pragma: no cover - scipy is a dependency
        raise ValueError(f"{path}: not a MATLAB v7.3 (HDF5) file, and scipy is needed to read "
                         f"older .mat files ({err}).") from err
    try:
        raw = loadmat(path)
    except Exception as err:  # scipy raises several types for a broken file
        raise ValueError(f"{path}: cannot read this .mat file ({err}).") from err
    return {name: np.asarray(value).T for name, value in raw.items()
            if not name.startswith("__")}


def _pick_mat_variable(path, variables, preferred, what):
    matrices = {name: value for name, value in variables.items()
                if isinstance(value, np.ndarray) and value.dtype.kind in "biuf"}
    if len(matrices) == 1:
        return next(iter(matrices.values()))
    for name in preferred:
        if name in matrices:
            return matrices[name]
    raise ValueError(f"{path}: cannot tell which variable holds the {what}; it holds "
                     f"{sorted(variables) or 'no variables'}. Save the {what} alone in the file, "
                     f"or under one of the names {list(preferred)}.")


def _read_index(path):
    index = search.load_index(path)

    def field(name):
        if isinstance(index, dict):
            return index.get(name)
        return getattr(index, name, None)

    codes = field("codes")
    if codes is not None and np.asarray(codes).dtype == np.uint64:
        bits = field("bits")
        if bits is None:
            raise ValueError(f"{path}: the index holds packed codes but no bit count ('bits').")
        codes = unpack_codes(codes, int(bits))
    return {"codes": codes, "labels": field("labels"), "fc7": field("fc7")}


# ------------------------------------------------------------------------------------------------
# validation

def _as_codes01(path, array):
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{path}: expected codes as a 2-D array [n, bits] with at least one row "
                         f"and one bit; got shape {array.shape}.")
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{path}: expected 0/1 codes; got dtype {array.dtype}.")
    if not np.all((array == 0) | (array == 1)):
        raise ValueError(f"{path}: codes must hold only 0 and 1 (values from {array.min()} to "
                         f"{array.max()}); binarise activations first (codes = latent > 0.5).")
    return array.astype(np.uint8)


def _as_features(path, array):
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{path}: expected features as a 2-D array [n, dims] with at least one "
                         f"row; got shape {array.shape}.")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{path}: expected numeric features; got dtype {array.dtype}.")
    features = array.astype(np.float32)
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{path}: features hold NaN or infinite values.")
    return features


def _as_labels(path, array):
    array = np.asarray(array)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{path}: expected labels as one value per item (a 1-D array); got "
                         f"shape {array.shape}.")
    if array.dtype.kind == "f":
        if not np.all(array == np.round(array)):
            raise ValueError(f"{path}: labels must be whole numbers; got non-integer values.")
        return array.astype(np.int64)
    if array.dtype.kind in "biu":
        return array.astype(np.int64)
    return array


def _turn_to(path, matrix, n_items, labels_path):
    """Turn a MATLAB matrix so that its rows are the items (n_items of them)."""
    if n_items is None or matrix.ndim != 2 or matrix.shape[0] == n_items:
        return matrix
    if matrix.shape[1] == n_items:
        return matrix.T
    raise ValueError(f"{path}: holds a {matrix.shape[0]}x{matrix.shape[1]} matrix but "
                     f"{labels_path} has {n_items} labels; give one label per item, in the same "
                     f"order.")


# ------------------------------------------------------------------------------------------------
# public

def _read(path, want):
    """The raw contents of a codes/features file: (array or None, labels or None, matlab)."""
    path = _check_exists(path)
    suffix = _suffix(path)
    key = "codes" if want == "codes" else "fc7"
    if suffix in (".npz", ".index"):
        raw = _read_npz(path) if suffix == ".npz" else _read_index(path)
        if raw[key] is None:
            holds = f"has no '{key}' array (it holds {raw['keys']})" if suffix == ".npz" else \
                f"the index holds no {key}"
            raise ValueError(f"{path}: {holds}.")
        return raw[key], raw["labels"], False
    if suffix == ".npy":
        return np.load(path, allow_pickle=False), None, False
    if suffix == ".mat":
        variables = _mat_variables(path)
        preferred = _MAT_CODE_NAMES if want == "codes" else _MAT_FEATURE_NAMES
        what = "codes" if want == "codes" else "features"
        return _pick_mat_variable(path, variables, preferred, what), None, True
    raise ValueError(f"{path}: unknown file type '{suffix}'; expected .npz, .npy, .mat or "
                     f".index.")


def load_codes(path):
    """0/1 hash codes, uint8 [n, bits], from .npz ('codes'), .npy, .mat or .index."""
    array, _, _ = _read(path, "codes")
    return _as_codes01(os.fspath(path), array)


def load_features(path):
    """Float features (fc7, or any real vectors), float32 [n, dims], from .npz ('fc7'), .npy,
    .mat or .index."""
    array, _, _ = _read(path, "features")
    return _as_features(os.fspath(path), array)


def load_labels(path):
    """Labels [n] (int64 when numeric) from .txt (one per line), .npy, .npz ('labels') or .mat."""
    path = _check_exists(path)
    suffix = _suffix(path)
    if suffix == ".txt":
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
        while lines and not lines[-1]:
            lines.pop()
        if not lines:
            raise ValueError(f"{path}: no labels (the file is empty).")
        if any(not line for line in lines):
            blank = lines.index("") + 1
            raise ValueError(f"{path}: line {blank} is blank; expected one label per line.")
        try:
            values = np.array([int(line) for line in lines], dtype=np.int64)
        except ValueError:
            values = np.array(lines)
        return _as_labels(path, values)
    if suffix == ".npy":
        return _as_labels(path, np.load(path, allow_pickle=False))
    if suffix == ".npz":
        raw = _read_npz(path)
        if raw["labels"] is None:
            raise ValueError(f"{path}: has no 'labels' array (it holds {raw['keys']}).")
        return _as_labels(path, raw["labels"])
    if suffix == ".mat":
        variables = _mat_variables(path)
        return _as_labels(path, _pick_mat_variable(path, variables, ("labels", "label"),
                                                   "labels"))
    raise ValueError(f"{path}: unknown labels file type '{suffix}'; expected .txt (one label per "
                     f"line), .npy, .npz or .mat.")


def load_set(path, labels_path=None, *, features=False):
    """Codes (or features, ``features=True``) and their labels: ``(array, labels)``.

    Labels come from ``labels_path`` when given, else from the codes file itself (an .npz with
    'labels', or an index). Their count must match the number of rows.
    """
    path = _check_exists(path)
    array, labels, matlab = _read(path, "features" if features else "codes")
    if labels_path is not None:
        labels = load_labels(labels_path)
        source = os.fspath(labels_path)
    elif labels is not None:
        labels = _as_labels(path, labels)
        source = path
    else:
        raise ValueError(f"{path}: holds no labels; give a labels file (.txt with one label per "
                         f"line, or .npy).")
    if matlab:
        array = _turn_to(path, np.asarray(array), len(labels), source)
    array = _as_features(path, array) if features else _as_codes01(path, array)
    if array.shape[0] != len(labels):
        raise ValueError(f"{path} has {array.shape[0]} rows but {source} has {len(labels)} "
                         f"labels; give one label per item, in the same order.")
    return array, labels
