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
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import imagelist
from ..encode import THRESHOLD, EncodeError, Model, read_image
from ..errors import DlbhcError
from ..montage import Tile
from . import builder
from .builder import IndexWriter
from .coarse_to_fine import DEFAULT_RADIUS, CoarseToFine
from .index import HashIndex

COMMIT_EVERY = 256  # images encoded between two commits of a streaming build


# ---------------------------------------------------------------- image sources

def read_image_list(list_file, root=None):
    """(paths, labels or None) of a list file: one image a line, ``path`` or ``path label``
    (convert_imageset's format; see :func:`dlbhc_caffe.datasets.imagelist.read_list`)."""
    return imagelist.read_list(list_file, root, require_labels=False)


def scan_images(folder):
    """(paths, labels or None) of the image files below ``folder``, sorted
    (:func:`dlbhc_caffe.datasets.imagelist.image_files`).

    When every image lies in a sub-folder, the sub-folders are classes (sorted names -> labels
    0, 1, ...), as prepare's --folder; otherwise there are no labels.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EncodeError(f"{folder}: no such folder")
    files = imagelist.image_files(folder)
    if not files:
        raise EncodeError(f"{folder}: no image files "
                          f"({', '.join(sorted(imagelist.IMAGE_SUFFIXES))})")
    paths = [str(p.absolute()) for p in files]
    classes = _folder_classes(folder, files)
    if classes is not None:
        labels = np.array([classes.index(p.relative_to(folder).parts[0]) for p in files])
        return paths, labels
    return paths, None


def _folder_classes(folder, files):
    """The class names (sorted sub-folders holding images) of scan_images' labels, or None."""
    if all(p.parent != folder for p in files):
        return sorted({p.relative_to(folder).parts[0] for p in files})
    return None


def folder_classes(folder):
    """The class names of :func:`scan_images`' labels for ``folder`` (label i is name i), or
    None when it gives no labels."""
    folder = Path(folder)
    return _folder_classes(folder, imagelist.image_files(folder))


def index_class_names(index):
    """Names of an index's labels: those recorded at indexing (``source.classes``), else the
    class sub-folders of the folder it was built from, as :func:`scan_images` numbered them;
    None when unknown (no labels, built from a list, the folder gone or with fewer classes)."""
    source = (index.meta or {}).get("source") or {}
    names = source.get("classes")
    if names is None and source.get("folder") and Path(source["folder"]).is_dir():
        names = folder_classes(source["folder"])
    if not names or index.labels is None or index.ntotal == 0:
        return None
    return [str(n) for n in names] if len(names) > int(index.labels.max()) else None


# ---------------------------------------------------------------- index and query

def index_features(features, meta=None):
    """A HashIndex of encoded Features (codes, fc7, paths, labels when known)."""
    index = HashIndex(features.bits, meta=meta)
    index.add(features.codes, fc7=features.fc7 if features.fc7.shape[1] else None,
              paths=features.paths, labels=features.labels)
    return index


def _readable(transform, paths, strict):
    """(prepared inputs, kept positions, skipped [(path, why)]) of a batch of image files."""
    inputs, kept, skipped = [], [], []
    for position, path in enumerate(paths):
        try:
            inputs.append(transform.prepare_image(read_image(path, transform.channels)))
            kept.append(position)
        except (EncodeError, OSError) as err:
            if strict:
                raise EncodeError(f"{err} (--strict stops at the first unreadable image; "
                                  f"without it such images are skipped and listed)") from None
            skipped.append((path, str(err)))
    return inputs, kept, skipped


def _encode(encoder, inputs):
    """(codes, fc7) of prepared inputs, forwarded batch_size at a time."""
    codes, fc7 = [], []
    for a in range(0, len(inputs), encoder.batch_size):
        latent, f = encoder.forward(np.stack(inputs[a:a + encoder.batch_size]))
        codes.append((latent > THRESHOLD).astype(np.uint8))
        fc7.append(f)
    return np.concatenate(codes), np.concatenate(fc7)


def _open_build(out, key, bits, n, path_bytes, fc7_dim, fc7_dtype, labels, meta, build, force):
    """The writer of ``out``.partial: resumed when it is this build's, else a new one."""
    partial = Path(str(out) + ".partial")
    if partial.exists() and not force:
        try:
            writer = IndexWriter.resume(partial)
        except (DlbhcError, OSError) as err:
            raise EncodeError(f"{partial}: cannot resume ({err}); use --force to start "
                              f"over") from None
        if writer.build.get("key") != key:
            writer.close()
            raise EncodeError(f"{partial} is an unfinished index of another list, shard, model "
                              f"or fc7 setting: use --force to start over")
        return writer
    return IndexWriter.create(partial, bits, n, path_bytes, fc7_dim, fc7_dtype, labels, meta,
                              dict(build, key=key))


def build_index(model, paths, labels=None, backend="auto", batch_size=10, progress=False,
                source=None, allow_missing_weights=False):
    """Encode image files with ``model`` and return their HashIndex in memory (the model in its
    meta); :func:`build_index_file` streams any number of images to a file instead."""
    encoder = model.encoder(backend=backend, batch_size=batch_size, progress=progress,
                            allow_missing_weights=allow_missing_weights)
    features = encoder.encode_images(paths, labels=labels)
    return index_features(features, _meta(model, source))


def _meta(model, source):
    return {"model": model.to_meta(), "source": source,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def build_index_file(model, paths, labels, out, backend="auto", batch_size=10, fc7="float32",
                     shard=None, strict=False, force=False, progress=False, source=None,
                     commit_every=None, report=None, allow_missing_weights=False):
    """Encode image files with ``model`` into the index file ``out``, streaming (see
    :mod:`dlbhc_caffe.search.builder`): resumes an unfinished build of the same list, skips
    unreadable images (``report(path, why)`` hears of each; ``strict`` stops instead), ``shard``
    = (i, n) encodes the i-th of n slices. Returns the finished index's path and the number of
    images skipped."""
    commit_every = commit_every or COMMIT_EVERY
    total = len(paths)
    start, stop = builder.shard_range(total, shard) if shard else (0, total)
    mine = paths[start:stop]
    if not mine:
        raise EncodeError(f"shard {shard[0]}/{shard[1]} of {total} images is empty")
    encoder = model.encoder(backend=backend, batch_size=batch_size,
                            allow_missing_weights=allow_missing_weights)
    transform = encoder.transform
    # one forward of a blank input gives the widths the file is laid out for
    probe_codes, probe_fc7 = _encode(
        encoder, [np.zeros((transform.channels,) + tuple(transform.crop), np.float32)])
    fc7_dim = probe_fc7.shape[1] if fc7 != "none" and probe_fc7.shape[1] else None
    meta = _meta(model, source)
    key = builder.list_key(paths, labels) + f"|{shard}|{model.deploy}|{model.weights}|{fc7}"
    build = {"list": builder.list_key(paths, labels), "total": total,
             "shard": list(shard) if shard else None, "start": start}
    writer = _open_build(out, key, probe_codes.shape[1], len(mine),
                         sum(len(os.fsencode(p)) for p in mine), fc7_dim,
                         fc7 if fc7 != "none" else "float32", labels is not None, meta, build,
                         force)
    bar = _bar(progress, len(mine), writer.build["done"])
    try:
        skipped = writer.build["skipped"]
        for a in range(writer.build["done"], len(mine), commit_every):
            batch = mine[a:a + commit_every]
            inputs, kept, bad = _readable(transform, batch, strict)
            for path, why in bad:
                if report:
                    report(path, why)
            codes, f = _encode(encoder, inputs) if inputs else (np.zeros((0, 1)), None)
            rows = [start + a + k for k in kept]
            writer.append(codes, ids=rows, paths=[batch[k] for k in kept],
                          labels=None if labels is None else np.asarray(labels)[rows],
                          fc7=f if fc7_dim else None, done=a + len(batch), skipped=len(bad))
            skipped += len(bad)
            if bar:
                bar.update(len(batch))
        if writer.ntotal == 0:
            writer.close()
            writer.path.unlink()  # nothing worth resuming
            raise EncodeError(f"none of the {len(mine)} images could be read: nothing to index")
        writer.finish()
    finally:
        writer.close()
        if bar:
            bar.close()
    os.replace(writer.path, out)
    return Path(out), skipped


def _bar(progress, total, done):
    if not progress:
        return None
    from tqdm import tqdm  # noqa: PLC0415  (only with a progress bar)

    return tqdm(total=total, initial=done, desc="index", unit="img", file=sys.stderr)


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


class Hits(list):
    """One query's hits; ``fallback`` is True when the fine search found fewer than k items
    within the radius and re-ranked the Hamming top k instead (None for a Hamming ranking)."""

    fallback = None


def query_features(index, latent_or_codes, fc7=None, k=10, fine=False, radius=DEFAULT_RADIUS):
    """The top k of each query as :class:`Hits`: Hamming ranking, or with ``fine`` the
    coarse-to-fine search (pool within ``radius``, re-ranked by fc7)."""
    queries = np.asarray(latent_or_codes)
    if queries.dtype.kind == "f":
        queries = (queries > THRESHOLD).astype(np.uint8)
    if queries.ndim == 1:
        queries = queries.reshape(1, -1)
    fallback = [None] * len(queries)
    if fine:
        if fc7 is None:
            raise EncodeError("the fine search needs the queries' fc7 features")
        search = CoarseToFine(index, radius=radius)
        euclidean, ids = search.search(queries, fc7, k)
        fallback = [bool(f) for f in search.fallback]
        rows = index.rows_of(ids)
        hamming = [index.hamming_to(queries[i:i + 1], rows[i])[0] for i in range(len(rows))]
    else:  # the ranking gives the rows and their distances directly
        euclidean = None
        hamming, rows = index.rank(queries, k)
    return [make_hits(index, rows[i], hamming[i], None if euclidean is None else euclidean[i],
                      fallback[i]) for i in range(len(rows))]


def make_hits(index, rows, hamming, euclidean=None, fallback=None):
    """One query's :class:`Hits` from its ranked rows, their Hamming (and fc7) distances."""
    labels = index.labels
    paths = index.paths_of(rows)
    hits = Hits(Hit(rank=r + 1, id=int(index.ids[row]), row=int(row), hamming=int(hamming[r]),
                    euclidean=None if euclidean is None else float(euclidean[r]),
                    label=None if labels is None else int(labels[row]), path=paths[r])
                for r, row in enumerate(rows))
    hits.fallback = fallback
    return hits


def results_json(names, results):
    """The results as one JSON-ready list: per query its image, whether the fine search fell
    back to the Hamming top k, and its hits ({"id", "path", "label", "distance"} plus
    "fc7_distance" for a fine search)."""
    out = []
    for name, hits in zip(names, results):
        rows = []
        for hit in hits:
            row = {"id": hit.id, "path": hit.path, "label": hit.label, "distance": hit.hamming}
            if hit.euclidean is not None:
                row["fc7_distance"] = hit.euclidean
            rows.append(row)
        out.append({"image": str(name), "fallback": getattr(hits, "fallback", None),
                    "results": rows})
    return out


def format_results(names, results, query_labels=None):
    """Printable lines of query results."""
    lines = []
    for i, (name, hits) in enumerate(zip(names, results)):
        label = "" if query_labels is None else f" (label {query_labels[i]})"
        lines.append(f"query {i + 1}: {name}{label}")
        fine = hits and hits[0].euclidean is not None
        if getattr(hits, "fallback", None):
            lines.append(f"  (fallback: fewer than {len(hits)} items within the Hamming "
                         f"radius, so these are the Hamming top {len(hits)} re-ranked by fc7)")
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


__all__ = ["Model", "read_image_list", "scan_images", "folder_classes", "index_class_names",
           "index_features", "build_index", "build_index_file", "Hit", "Hits", "query_features",
           "results_json", "format_results", "montage_rows"]
