"""Index a user's images and query them: what tools/search.py and demo.py do, callable from Python.

A :class:`dlbhc_caffe.encode.Model` names the net that makes the codes -- a training run folder,
or a deploy prototxt + caffemodel + mean -- and is saved in the index's ``meta``, so a query encodes its
images exactly as the database was encoded without being told the model again.

>>> import numpy as np
>>> index = HashIndex(bits=2)
>>> index.add([[0, 1], [1, 1]], fc7=[[0.0], [1.0]], paths=["a.jpg", "b.jpg"])
>>> results = query_features(index, np.array([[0.2, 0.9]]), np.array([[0.9]]), k=2, fine=True)
>>> [(hit.rank, hit.id, hit.hamming, round(hit.euclidean, 1)) for hit in results[0]]
[(1, 1, 1, 0.1), (2, 0, 0, 0.9)]
"""
import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets.imagelist import read_list
from ..encode import THRESHOLD, EncodeError, Model
from ..montage import Tile
from .coarse_to_fine import DEFAULT_RADIUS, CoarseToFine
from .index import HashIndex

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm",
                  ".webp"}


# ---------------------------------------------------------------- image sources

def read_image_list(list_file, root=None):
    """(paths, labels or None) of a list file: one image a line, ``path`` or ``path label``
    (convert_imageset's format; see :func:`dlbhc_caffe.datasets.imagelist.read_list`)."""
    return read_list(list_file, root, require_labels=False)


def scan_images(folder):
    """(paths, labels or None) of the image files below ``folder``, sorted.

    When every image lies in a sub-folder, the sub-folders are classes (sorted names -> labels
    0, 1, ...), as prepare's --folder; otherwise there are no labels.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EncodeError(f"{folder}: no such folder")
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EncodeError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    paths = [str(p.absolute()) for p in files]
    if all(p.parent != folder for p in files):
        classes = sorted({p.relative_to(folder).parts[0] for p in files})
        labels = np.array([classes.index(p.relative_to(folder).parts[0]) for p in files])
        return paths, labels
    return paths, None


# ---------------------------------------------------------------- index and query

def index_features(features, meta=None):
    """A HashIndex of encoded Features (codes, fc7, paths, labels when known)."""
    index = HashIndex(features.bits, meta=meta)
    index.add(features.codes, fc7=features.fc7 if features.fc7.shape[1] else None,
              paths=features.paths, labels=features.labels)
    return index


def build_index(model, paths, labels=None, backend="auto", batch_size=10, progress=False,
                source=None):
    """Encode image files with ``model`` and return their HashIndex (the model in its meta)."""
    encoder = model.encoder(backend=backend, batch_size=batch_size, progress=progress)
    features = encoder.encode_images(paths, labels=labels)
    meta = {"model": model.to_meta(), "source": source,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    return index_features(features, meta)


@dataclass
class Hit:
    """One result: rank (1-based), id, row, Hamming distance, fc7 distance (fine search)."""

    rank: int
    id: int
    row: int
    hamming: int
    euclidean: float = None
    label: int = None
    path: str = ""


def query_features(index, latent_or_codes, fc7=None, k=10, fine=False, radius=DEFAULT_RADIUS):
    """The top k of each query as lists of :class:`Hit`: Hamming ranking, or with ``fine`` the
    coarse-to-fine search (pool within ``radius``, re-ranked by fc7)."""
    queries = np.asarray(latent_or_codes)
    if queries.dtype.kind == "f":
        queries = (queries > THRESHOLD).astype(np.uint8)
    if queries.ndim == 1:
        queries = queries.reshape(1, -1)
    if fine:
        if fc7 is None:
            raise ValueError("the fine search needs the queries' fc7 features")
        euclidean, ids = CoarseToFine(index, radius=radius).search(queries, fc7, k)
        rows = index.rows_of(ids)
        hamming = [index.hamming_to(queries[i:i + 1], rows[i])[0] for i in range(len(rows))]
    else:  # the ranking gives the rows and their distances directly
        euclidean = None
        rows, hamming = index.rank(queries, k)
        ids = index.ids[rows]
    labels = index.labels
    results = []
    for i, row_ids in enumerate(ids):
        paths = index.paths_of(rows[i])
        results.append([Hit(rank=r + 1, id=int(row_ids[r]), row=int(rows[i][r]),
                            hamming=int(hamming[i][r]),
                            euclidean=None if euclidean is None else float(euclidean[i, r]),
                            label=None if labels is None else int(labels[rows[i][r]]),
                            path=paths[r]) for r in range(len(row_ids))])
    return results


def format_results(names, results, query_labels=None):
    """Printable lines of query results."""
    lines = []
    for i, (name, hits) in enumerate(zip(names, results)):
        label = "" if query_labels is None else f" (label {query_labels[i]})"
        lines.append(f"query {i + 1}: {name}{label}")
        fine = hits and hits[0].euclidean is not None
        lines.append("  rank  hamming" + ("  fc7-dist" if fine else "") + "  label  id  path")
        for hit in hits:
            lines.append(f"  {hit.rank:4d}  {hit.hamming:7d}"
                         + (f"  {hit.euclidean:8.3f}" if fine else "")
                         + f"  {'-' if hit.label is None else hit.label:>5}  {hit.id}  {hit.path}")
    return lines


def label_text(label, class_names=None):
    """A label as captions show it: its class name when the dataset has names, else the number.

    >>> label_text(1, ["cat", "dog"]), label_text(1)
    ('dog', 'label 1')
    """
    if class_names is not None and 0 <= int(label) < len(class_names):
        return str(class_names[int(label)])
    return f"label {label}"


def montage_rows(query_images, results, query_labels=None, picture_of=None, query_names=None,
                 class_names=None):
    """Rows for :func:`dlbhc_caffe.montage.write_montage`: each query and its hits, captioned
    with rank, distance(s) and label (its class name when `class_names` are given), framed green
    / red when the labels agree or not.

    picture_of(hit) gives a hit's picture (default: the file at its path, or a blank tile).
    """
    def default_picture(hit):
        return hit.path if hit.path and Path(hit.path).is_file() else \
            np.full((8, 8), 200, np.uint8)

    picture_of = picture_of or default_picture
    rows = []
    for i, hits in enumerate(results):
        q_label = None if query_labels is None else int(query_labels[i])
        caption = "query" if query_names is None else str(query_names[i])[:16]
        if q_label is not None:
            caption += f"\n{label_text(q_label, class_names)[:16]}"
        tiles = []
        for hit in hits:
            text = f"#{hit.rank} dH={hit.hamming}"
            if hit.euclidean is not None:
                text += f"\nfc7 {hit.euclidean:.2f}"
            if hit.label is not None:
                text += f"\n{label_text(hit.label, class_names)[:16]}"
            match = None if q_label is None or hit.label is None else hit.label == q_label
            tiles.append(Tile(picture_of(hit), text, match))
        rows.append((Tile(query_images[i], caption), tiles))
    return rows


__all__ = ["read_image_list", "scan_images", "index_features", "build_index", "Hit",
           "query_features", "format_results", "montage_rows"]
