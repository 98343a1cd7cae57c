"""Pure-numpy reference of dlbhc_caffe.hamming, for tests and benchmarks.

Same functions and results as the Cython module (ranking by ``np.argsort(kind="stable")``, so
ties stay in database order), written for clarity rather than speed; no threads, little
validation.

>>> import numpy as np
>>> from dlbhc_caffe.hamming import reference
>>> d, ids = reference.rank([[1, 1, 0]], [[0, 0, 0], [1, 1, 1], [1, 1, 0]], 2)
>>> d.tolist(), ids.tolist()
([[0, 1]], [[2, 1]])
"""
import numpy as np

_BYTE_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)


def pack_codes(codes):
    """0/1 codes [n, bits] -> uint64 [n, ceil(bits / 64)], bit j in word j // 64 at j % 64."""
    codes = np.asarray(codes).astype(bool)
    n, bits = codes.shape
    words = (bits + 63) // 64
    packed = np.zeros((n, 8 * words), dtype=np.uint8)
    packed[:, : (bits + 7) // 8] = np.packbits(codes, axis=1, bitorder="little")
    return packed.view("<u8").astype(np.uint64)


def unpack_codes(packed, bits):
    """uint64 [n, words] -> 0/1 uint8 codes [n, bits]."""
    as_bytes = np.ascontiguousarray(np.asarray(packed, dtype="<u8")).view(np.uint8)
    return np.unpackbits(as_bytes, axis=1, count=bits, bitorder="little")


def _packed(codes):
    arr = np.asarray(codes)
    return arr if arr.dtype == np.uint64 else pack_codes(arr)


def hamming_distances(queries, database, chunk=256):
    """All Hamming distances, uint16 [n_queries, n_database] (byte-wise popcount table)."""
    q, db = _packed(queries), _packed(database)
    db_bytes = np.ascontiguousarray(db).view(np.uint8)
    out = np.empty((q.shape[0], db.shape[0]), dtype=np.uint16)
    for start in range(0, q.shape[0], chunk):
        q_bytes = np.ascontiguousarray(q[start:start + chunk]).view(np.uint8)
        xor = q_bytes[:, None, :] ^ db_bytes[None, :, :]
        out[start:start + chunk] = _BYTE_POPCOUNT[xor].sum(axis=2, dtype=np.uint16)
    return out


def rank(queries, database, k=None):
    """(distances uint16, ids int64) of the k nearest items, ``argsort(kind="stable")`` order."""
    dist = hamming_distances(queries, database)
    k = dist.shape[1] if k is None else k
    ids = np.argsort(dist, axis=1, kind="stable")[:, :k].astype(np.int64)
    return np.take_along_axis(dist, ids, axis=1), ids


def radius(queries, database, r):
    """(lims, distances, ids) of the items within distance r, by distance then database index."""
    dist = hamming_distances(queries, database)
    ids, dists = [], []
    for row in dist:
        order = np.argsort(row, kind="stable")
        order = order[row[order] <= r]
        ids.append(order.astype(np.int64))
        dists.append(row[order])
    lims = np.zeros(len(ids) + 1, dtype=np.int64)
    lims[1:] = np.cumsum([len(x) for x in ids])
    if not ids:
        return lims, np.zeros(0, np.uint16), np.zeros(0, np.int64)
    return lims, np.concatenate(dists).astype(np.uint16), np.concatenate(ids)
