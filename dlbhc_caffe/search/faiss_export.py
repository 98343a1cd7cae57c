"""Hand the codes to faiss, for users who serve with it.

:func:`to_faiss` builds a ``faiss.IndexBinaryFlat`` holding the index's codes (wrapped in an
``IndexBinaryIDMap`` when the ids are not simply the row numbers); :func:`write_faiss` saves it
with ``faiss.write_index_binary``. faiss's binary indexes take whole bytes: a code of ``bits``
bits becomes ``ceil(bits / 8)`` bytes, bit j in byte j // 8 at position j % 8 (least significant
first, faiss's own convention), the unused high bits zero -- so the faiss index's ``d`` is
``bits`` rounded up to a multiple of 8 and every Hamming distance is unchanged. Pack queries with
:func:`faiss_codes`.

>>> import faiss, numpy as np
>>> from dlbhc_caffe.search import HashIndex
>>> index = HashIndex(bits=12)
>>> index.add(np.eye(12, dtype=np.uint8)[:3])
>>> served = to_faiss(index)
>>> served.d, served.ntotal
(16, 3)
>>> distances, ids = served.search(faiss_codes(np.eye(12, dtype=np.uint8)[1:2]), 1)
>>> distances.tolist(), ids.tolist()
([[0]], [[1]])
"""
from pathlib import Path

import numpy as np

from ..fileio import atomic_path


def _faiss():
    try:
        import faiss  # noqa: PLC0415
    except ImportError:
        raise ImportError("faiss is not installed: pip install faiss-cpu") from None
    return faiss


def faiss_codes(codes):
    """0/1 codes [n, bits] packed as faiss's binary indexes read them: uint8 [n, ceil(bits/8)]."""
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes.reshape(1, -1)
    if codes.ndim != 2 or (codes.size and not np.isin(codes, (0, 1)).all()):
        raise ValueError(f"expected 0/1 codes [n, bits], got {codes.dtype} of shape {codes.shape}")
    return np.packbits(codes.astype(np.uint8), axis=1, bitorder="little")


def to_faiss(index):
    """A faiss binary index (IndexBinaryFlat, or IndexBinaryIDMap over one) of ``index``'s codes."""
    faiss = _faiss()
    nbytes = (index.bits + 7) // 8
    words = np.ascontiguousarray(index.packed, dtype="<u8")
    codes = np.ascontiguousarray(words.view(np.uint8).reshape(index.ntotal, -1)[:, :nbytes])
    flat = faiss.IndexBinaryFlat(8 * nbytes)
    if np.array_equal(index.ids, np.arange(index.ntotal)):
        flat.add(codes)
        return flat
    mapped = faiss.IndexBinaryIDMap(flat)
    mapped.add_with_ids(codes, np.ascontiguousarray(index.ids, np.int64))
    return mapped


def write_faiss(index, path):
    """Write ``index``'s codes as a faiss binary index file (faiss.write_index_binary), whole or
    not at all; returns the path. Read it back with ``faiss.read_index_binary``."""
    faiss = _faiss()
    if index.ntotal == 0:
        raise ValueError("the index is empty (ntotal = 0): nothing to export")
    path = Path(path)
    with atomic_path(path) as tmp:
        faiss.write_index_binary(to_faiss(index), str(tmp))
    return path
