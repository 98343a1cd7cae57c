"""Retrieval metrics of the original evaluation (precision.m), computed fast.

For every query the whole database is ranked by Hamming distance with ties in database order (a
stable sort, as MATLAB's ``sort``); an item is relevant when it has the query's label.

- precision@k for k = 1..K: the share of relevant items among the first k, averaged over queries;
- AP@K: the mean of precision@j over the relevant positions j <= K (0 when there is none);
  mAP@K is its mean over queries. The original uses K = 1000;
- mAP over the whole ranking (K = database size);
- precision within Hamming radius r (distance <= r, default 2): a query with nothing inside counts
  0, and the share of such queries is reported;
- the precision-recall curve over Hamming radii 0..bits (mean over queries; precision 0 for a
  query with nothing inside);
- ``distance="euclidean"``: precision.m's second mode, ranking real features (fc7) by Euclidean
  distance, ties in database order. Distances come from |q|^2 - 2 q.x + |x|^2 in float64 (one
  matrix product per chunk of queries), so two items whose distances differ by less than the
  rounding error may swap places against an exact computation.

The Hamming path never sorts and never stores the distance matrix: the Cython kernels rank each
query by a counting sort and reduce it to the numbers above on the fly.

>>> import numpy as np
>>> db = np.array([[0, 0], [0, 1], [1, 1], [1, 0]])
>>> queries = np.array([[0, 0]])
>>> result = evaluate(db, [0, 1, 0, 1], queries, [0], top_k=2)
>>> round(result.map_at_k, 6), result.precision_at_k.tolist()
(1.0, [1.0, 0.5])
"""
import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import hamming, plots
from .fileio import atomic_path, atomic_write_bytes
from .hamming import _hamming

__all__ = ["RetrievalMetrics", "evaluate", "mean_average_precision", "precision_at_k",
           "precision_recall_curve", "precision_within_radius", "format_summary", "save_report",
           "check_report_dir", "write_precision_at_k", "REPORT_FILES"]

REPORT_FILES = ("precision-at-k.txt", "metrics.json", "precision-at-k.png")
DISTANCES = ("hamming", "euclidean")


@dataclass
class RetrievalMetrics:
    """What :func:`evaluate` measured. Arrays are numpy; :meth:`to_dict` gives plain JSON."""

    distance: str
    top_k: int
    n_queries: int
    n_database: int
    dims: int  # bits of the codes, or dimensions of the features
    map_at_k: float
    precision_at_k: np.ndarray  # [top_k]: precision at k = 1..top_k
    average_precision_at_k: np.ndarray = field(repr=False)  # [n_queries]
    map_whole: Optional[float] = None  # mAP over the whole ranking
    radius: Optional[int] = None
    precision_within_radius: Optional[float] = None
    empty_within_radius: Optional[float] = None  # share of queries with nothing within radius
    pr_curve: Optional[dict] = field(default=None, repr=False)  # radius, precision, recall, empty

    def to_dict(self):
        out = {
            "distance": self.distance,
            "top_k": self.top_k,
            "n_queries": self.n_queries,
            "n_database": self.n_database,
            "bits" if self.distance == "hamming" else "dims": self.dims,
            f"map@{self.top_k}": self.map_at_k,
            "map_whole_ranking": self.map_whole,
        }
        if self.radius is not None:
            out["radius"] = self.radius
            out["precision_within_radius"] = self.precision_within_radius
            out["empty_within_radius"] = self.empty_within_radius
        out["precision_at_k"] = [float(p) for p in self.precision_at_k]
        if self.pr_curve is not None:
            out["pr_curve"] = {key: np.asarray(value).tolist()
                               for key, value in self.pr_curve.items()}
        return out


# ------------------------------------------------------------------------------------------------
# input checks

def _labels_pair(database_labels, query_labels, n_database, n_queries):
    """Validate labels and map them to int32 class indices shared by both sides."""
    db_labels = np.asarray(database_labels)
    q_labels = np.asarray(query_labels)
    for name, labels, count, what in (("database_labels", db_labels, n_database, "database"),
                                      ("query_labels", q_labels, n_queries, "queries")):
        if labels.ndim != 1:
            raise ValueError(f"Expected {name} as a 1-D array (one label per item); got shape "
                             f"{labels.shape}.")
        if len(labels) != count:
            raise ValueError(f"{name} has {len(labels)} labels but the {what} has {count} "
                             f"items; give one label per item, in the same order.")
    try:
        classes, index = np.unique(np.concatenate([db_labels, q_labels]), return_inverse=True)
    except TypeError as err:
        raise TypeError(f"database_labels and query_labels must be comparable values of one "
                        f"kind (both numbers or both strings): {err}") from err
    index = index.astype(np.int32)
    return np.ascontiguousarray(index[:n_database]), np.ascontiguousarray(index[n_database:])


def _check_distance(distance):
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}; got {distance!r}.")


def _features_pair(database, queries):
    out = []
    for name, array in (("database", database), ("queries", queries)):
        array = np.asarray(array)
        if array.ndim != 2:
            raise ValueError(f"Expected {name} as a 2-D array of features [n, dims]; got shape "
                             f"{array.shape}.")
        if array.dtype.kind not in "biuf":
            raise TypeError(f"Expected numeric {name} features; got dtype {array.dtype}.")
        out.append(array)
    db, q = out
    if db.shape[0] == 0:
        raise ValueError("The database is empty (0 items); there is nothing to rank.")
    if db.shape[1] != q.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} dimensions but the database has "
                         f"{db.shape[1]}: features must come from the same layer.")
    return db, q


def _hamming_pair(database, queries):
    q, db = hamming._pair(queries, database)
    bits = np.asarray(database).shape[1]
    if np.asarray(database).dtype == np.uint64:
        bits *= 64
    return db, q, bits


# ------------------------------------------------------------------------------------------------
# kernels

def _precision_from_hits(hits_per_rank, n_queries):
    """precision@k, k = 1..K, from the number of queries with a relevant item at each rank."""
    hits = np.cumsum(hits_per_rank, dtype=np.float64)
    return hits / (np.arange(1, len(hits) + 1, dtype=np.float64) * n_queries)


def _hamming_top_k(db, q, db_labels, q_labels, top_k, threads):
    ap = np.zeros(q.shape[0], dtype=np.float64)
    hits = np.zeros((threads, top_k), dtype=np.int64)
    _hamming.topk_label_hits(q, db, q_labels, db_labels, top_k, ap, hits, threads)
    return ap, _precision_from_hits(hits.sum(axis=0), q.shape[0])


def _hamming_buckets(db, q, db_labels, q_labels, bits, threads):
    """Per query and radius: items and relevant items within it; AP over the whole ranking."""
    width = 64 * q.shape[1] + 1
    counts = np.zeros((q.shape[0], width), dtype=np.int64)
    relevant = np.zeros((q.shape[0], width), dtype=np.int64)
    ap = np.zeros(q.shape[0], dtype=np.float64)
    _hamming.bucket_label_stats(q, db, q_labels, db_labels, counts, relevant, ap, threads)
    within = np.cumsum(counts[:, : bits + 1], axis=1)
    relevant_within = np.cumsum(relevant[:, : bits + 1], axis=1)
    return within, relevant_within, ap


def _curve(within, relevant_within):
    """Mean precision and recall over queries at each radius (precision 0 when empty)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(within > 0, relevant_within / np.maximum(within, 1), 0.0)
        total = relevant_within[:, -1:]
        recall = np.where(total > 0, relevant_within / np.maximum(total, 1), 0.0)
    return precision.mean(axis=0), recall.mean(axis=0), (within == 0).mean(axis=0)


def _ranking_stats(ids, db_labels, q_labels):
    """AP per query and relevant-hit counts per rank, from explicit rankings [n, K]."""
    relevant = db_labels[ids] == q_labels[:, None]
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, ids.shape[1] + 1, dtype=np.float64)
    n_relevant = relevant.sum(axis=1)
    ap_sum = (hits / ranks * relevant).sum(axis=1)
    ap = np.where(n_relevant > 0, ap_sum / np.maximum(n_relevant, 1), 0.0)
    return ap, relevant.sum(axis=0)


def _stable_top_k(dist, top_k):
    """Rows of ``np.argsort(dist, kind="stable")[:, :top_k]``, without sorting whole rows."""
    if top_k >= dist.shape[1]:
        return np.argsort(dist, axis=1, kind="stable")
    kth = np.partition(dist, top_k - 1, axis=1)[:, top_k - 1]
    ids = np.empty((dist.shape[0], top_k), dtype=np.int64)
    for row in range(dist.shape[0]):
        candidates = np.flatnonzero(dist[row] <= kth[row])  # in database order
        order = np.argsort(dist[row, candidates], kind="stable")[:top_k]
        ids[row] = candidates[order]
    return ids


def _euclidean_stats(db, q, db_labels, q_labels, top_k, whole, chunk=256):
    """precision.m's second mode: AP@top_k per query and precision@k; with ``whole``, the AP over
    the whole ranking too. Distances are computed a chunk of queries at a time."""
    db64 = db.astype(np.float64)
    db_sq = np.einsum("ij,ij->i", db64, db64)
    ap = np.zeros(q.shape[0], dtype=np.float64)
    ap_whole = np.zeros(q.shape[0], dtype=np.float64) if whole else None
    hits = np.zeros(top_k, dtype=np.int64)
    for start in range(0, q.shape[0], chunk):
        qc = q[start:start + chunk].astype(np.float64)
        labels = q_labels[start:start + len(qc)]
        # squared distances: the same order as the distances
        dist = np.einsum("ij,ij->i", qc, qc)[:, None] - 2.0 * (qc @ db64.T) + db_sq[None, :]
        np.maximum(dist, 0.0, out=dist)
        if whole:
            ranking = np.argsort(dist, axis=1, kind="stable")
            ap_whole[start:start + len(qc)], _ = _ranking_stats(ranking, db_labels, labels)
            ids = ranking[:, :top_k]
        else:
            ids = _stable_top_k(dist, top_k)
        chunk_ap, chunk_hits = _ranking_stats(ids, db_labels, labels)
        ap[start:start + len(qc)] = chunk_ap
        hits += chunk_hits
    return ap, _precision_from_hits(hits, q.shape[0]), ap_whole


# ------------------------------------------------------------------------------------------------
# public

def evaluate(database, database_labels, queries, query_labels, *, top_k=1000,
             distance="hamming", radius=2, full=True, num_threads=None):
    """Evaluate retrieval the way the original precision.m does, plus a few extras.

    Parameters
    ----------
    database, queries : array [n, bits] of 0/1 codes (or packed by ``hamming.pack_codes``), or
        with ``distance="euclidean"`` real features [n, dims] (fc7).
    database_labels, query_labels : array [n]; relevant = same label.
    top_k : int, default 1000. The K of mAP@K and of precision@1..K.
    distance : "hamming" (default) or "euclidean".
    radius : int, default 2. Hamming radius of ``precision_within_radius``.
    full : bool, default True. Also compute the mAP over the whole ranking and, for Hamming, the
        precision-recall curve over radii and precision within ``radius`` (one more pass).
    num_threads : int or None (all cores).

    Returns
    -------
    RetrievalMetrics

    >>> import numpy as np
    >>> result = evaluate([[0, 0], [1, 1], [0, 1]], [1, 2, 1], [[0, 0]], [1], top_k=3)
    >>> round(result.map_at_k, 6), round(result.precision_within_radius, 6)
    (1.0, 0.666667)
    """
    _check_distance(distance)
    if distance == "hamming":
        db, q, dims = _hamming_pair(database, queries)
    else:
        db, q = _features_pair(database, queries)
        dims = db.shape[1]
    top_k = hamming.check_k(top_k, db.shape[0], name="top_k")
    db_labels, q_labels = _labels_pair(database_labels, query_labels, db.shape[0], q.shape[0])
    if q.shape[0] == 0:
        raise ValueError("There are no queries (0 rows); give at least one query.")
    threads = hamming._team(num_threads, q.shape[0])

    result = dict(distance=distance, top_k=top_k, n_queries=q.shape[0], n_database=db.shape[0],
                  dims=dims)
    if distance == "hamming":
        ap, precision = _hamming_top_k(db, q, db_labels, q_labels, top_k, threads)
        result.update(map_at_k=float(ap.mean()), precision_at_k=precision,
                      average_precision_at_k=ap)
        if full:
            hamming.check_radius(radius)
            within, relevant_within, ap_whole = _hamming_buckets(db, q, db_labels, q_labels,
                                                                 dims, threads)
            curve_precision, curve_recall, empty = _curve(within, relevant_within)
            r = min(int(radius), dims)
            result.update(map_whole=float(ap_whole.mean()), radius=int(radius),
                          precision_within_radius=float(curve_precision[r]),
                          empty_within_radius=float(empty[r]),
                          pr_curve={"radius": np.arange(dims + 1), "precision": curve_precision,
                                    "recall": curve_recall, "empty": empty})
    else:
        ap, precision, ap_whole = _euclidean_stats(db, q, db_labels, q_labels, top_k, full)
        result.update(map_at_k=float(ap.mean()), precision_at_k=precision,
                      average_precision_at_k=ap)
        if full:
            result["map_whole"] = float(ap_whole.mean())
    return RetrievalMetrics(**result)


def mean_average_precision(database, database_labels, queries, query_labels, *, top_k=1000,
                           distance="hamming", num_threads=None):
    """mAP@top_k as precision.m computes it (``top_k=None``: over the whole ranking).

    >>> mean_average_precision([[0, 0], [1, 1], [0, 1]], [2, 1, 1], [[0, 0]], [1], top_k=2)
    0.5
    """
    result = evaluate(database, database_labels, queries, query_labels, top_k=top_k,
                      distance=distance, full=False, num_threads=num_threads)
    return result.map_at_k


def precision_at_k(database, database_labels, queries, query_labels, *, top_k=1000,
                   distance="hamming", num_threads=None):
    """precision@k for k = 1..top_k, averaged over queries: array [top_k].

    >>> precision_at_k([[0, 0], [1, 1], [0, 1]], [2, 1, 1], [[0, 0]], [1], top_k=3).tolist()
    [0.0, 0.5, 0.6666666666666666]
    """
    result = evaluate(database, database_labels, queries, query_labels, top_k=top_k,
                      distance=distance, full=False, num_threads=num_threads)
    return result.precision_at_k


def precision_recall_curve(database, database_labels, queries, query_labels, *,
                           num_threads=None):
    """Precision and recall within each Hamming radius 0..bits: ``(radii, precision, recall)``.

    Means over queries; a query with nothing within a radius has precision 0 there.

    >>> radii, p, r = precision_recall_curve([[0, 0], [1, 1], [0, 1]], [1, 2, 1], [[0, 0]], [1])
    >>> radii.tolist(), p.round(3).tolist(), r.tolist()
    ([0, 1, 2], [1.0, 1.0, 0.667], [0.5, 1.0, 1.0])
    """
    result = evaluate(database, database_labels, queries, query_labels, top_k=1,
                      num_threads=num_threads)
    curve = result.pr_curve
    return curve["radius"], curve["precision"], curve["recall"]


def precision_within_radius(database, database_labels, queries, query_labels, *, radius=2,
                            num_threads=None):
    """Mean precision of the items within Hamming distance <= radius: ``(precision, empty)``.

    A query with nothing inside counts 0; ``empty`` is the share of such queries.

    >>> precision_within_radius([[0, 0], [1, 1]], [1, 1], [[0, 0], [1, 0]], [1, 2], radius=0)
    (0.5, 0.5)
    """
    result = evaluate(database, database_labels, queries, query_labels, top_k=1, radius=radius,
                      num_threads=num_threads)
    return result.precision_within_radius, result.empty_within_radius


# ------------------------------------------------------------------------------------------------
# reports

def format_summary(result):
    """The lines the command line prints, e.g. ``mAP@1000 = 0.897373``."""
    lines = [f"mAP@{result.top_k} = {result.map_at_k:.6f}",
             f"precision@{result.top_k} = {result.precision_at_k[-1]:.6f}"]
    if result.map_whole is not None:
        lines.append(f"mAP (whole ranking) = {result.map_whole:.6f}")
    if result.radius is not None:
        lines.append(f"precision within Hamming radius {result.radius} = "
                     f"{result.precision_within_radius:.6f}")
        lines.append(f"queries with nothing within Hamming radius {result.radius} = "
                     f"{result.empty_within_radius:.6f} (share, counted as precision 0)")
    return lines


def check_report_dir(out_dir, force=False):
    """Refuse (FileExistsError) when a report file already exists in out_dir, unless force."""
    existing = [name for name in REPORT_FILES if os.path.exists(os.path.join(out_dir, name))]
    if existing and not force:
        raise FileExistsError(f"{out_dir} already holds {', '.join(existing)}; choose another "
                              f"output folder or overwrite them with --force")


def write_precision_at_k(path, precision):
    """precision@k as the original saved it (MATLAB ``save -ascii``): k and precision a line."""
    lines = "".join(f" {k:15.7e} {p:15.7e}\n" for k, p in
                    zip(range(1, len(precision) + 1), np.asarray(precision, dtype=np.float64)))
    atomic_write_bytes(path, lines.encode("ascii"))


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_report(result, out_dir, *, force=False, label="DLBHC (ours)", baselines=False,
                title=None):
    """Write precision-at-k.txt, metrics.json and precision-at-k.png into out_dir.

    ``baselines``: draw the paper's CIFAR-10 baselines in the figure (they mean something only
    for CIFAR-10; see :func:`dlbhc_caffe.plots.plot_precision_at_k`). Refuses to overwrite
    existing report files unless force. Returns the paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    check_report_dir(out_dir, force)
    paths = [os.path.join(out_dir, name) for name in REPORT_FILES]
    write_precision_at_k(paths[0], result.precision_at_k)
    text = json.dumps({key: _json_value(value) for key, value in result.to_dict().items()},
                      indent=1) + "\n"

    atomic_write_bytes(paths[1], text.encode("utf-8"))
    with atomic_path(paths[2]) as temp:
        plots.plot_precision_at_k(result.precision_at_k, temp, label=label,
                                  baselines=baselines, title=title)
    return paths
