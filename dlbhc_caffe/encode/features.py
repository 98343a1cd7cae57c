"""What encoding gives: latent activations, codes and fc7, row-aligned, and their files
(.npz, or .mat for MATLAB)."""
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_bytes
from .transform import EncodeError

THRESHOLD = 0.5
FEATURE_SUFFIXES = (".npz", ".mat")


@dataclass
class Features:
    """What encoding gives, row-aligned: latent sigmoid outputs, fc7, and where each row came from.

    ``codes`` (uint8 0/1) are ``latent > 0.5``. ``paths`` name each row (image files, or
    ``<database>#<key>`` for records); ``labels`` are the records' labels when known.
    """

    latent: np.ndarray
    fc7: np.ndarray
    paths: list
    labels: np.ndarray = None

    @property
    def codes(self):
        return (self.latent > THRESHOLD).astype(np.uint8)

    @property
    def bits(self):
        return self.latent.shape[1]

    def __len__(self):
        return self.latent.shape[0]

    def save(self, path):
        """Write ``.npz`` (keys codes, fc7, latent, paths[, labels]) or ``.mat`` (the same, for
        MATLAB: one row per image, paths as a cell array). Written whole or not at all.

        >>> import tempfile, numpy as np
        >>> f = Features(np.array([[0.9, 0.1]], np.float32), np.ones((1, 3), np.float32), ["a.jpg"])
        >>> p = f.save(tempfile.mkdtemp() + "/codes.npz")
        >>> Features.load(p).codes.tolist()
        [[1, 0]]
        """
        path = Path(path)
        arrays = {"codes": self.codes, "fc7": self.fc7, "latent": self.latent,
                  "paths": np.array([str(p) for p in self.paths], dtype=str)}
        if self.labels is not None:
            arrays["labels"] = np.asarray(self.labels, np.int64)
        out = io.BytesIO()
        if path.suffix == ".npz":
            np.savez(out, **arrays)
        elif path.suffix == ".mat":
            from scipy.io import savemat  # noqa: PLC0415

            arrays["paths"] = np.array([str(p) for p in self.paths], dtype=object).reshape(-1, 1)
            savemat(out, arrays, do_compression=True)
        else:
            raise EncodeError(f"{path}: features are saved as .npz or .mat, not "
                              f"'{path.suffix or 'no suffix'}'")
        return atomic_write_bytes(path, out.getvalue())

    @classmethod
    def load(cls, path):
        """Read features written by :meth:`save` (.npz or .mat)."""
        path = Path(path)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            paths = [str(p) for p in arrays["paths"]]
        elif path.suffix == ".mat":
            from scipy.io import loadmat  # noqa: PLC0415

            arrays = loadmat(path)
            paths = [str(np.asarray(p).ravel()[0]) for p in np.asarray(arrays["paths"]).ravel()]
        else:
            raise EncodeError(f"{path}: not a .npz or .mat features file")
        labels = arrays.get("labels")
        return cls(latent=np.asarray(arrays["latent"], np.float32),
                   fc7=np.asarray(arrays["fc7"], np.float32), paths=paths,
                   labels=None if labels is None else np.asarray(labels, np.int64).ravel())


def concat_features(features):
    """One Features of several, rows in order (labels only when every part has them)."""
    if not features:
        return None
    latent = np.concatenate([f.latent for f in features])
    fc7 = np.concatenate([f.fc7 for f in features])
    paths = [p for f in features for p in f.paths]
    labels = None
    if all(f.labels is not None for f in features):
        labels = np.concatenate([f.labels for f in features])
    return Features(latent, fc7, paths, labels)


