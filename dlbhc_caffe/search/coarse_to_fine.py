"""The ICMR 2015 hierarchical search: Hamming codes pick a candidate pool, fc7 orders it.

Coarse level: every database item within Hamming distance r of the query's code (``<= r``); when
fewer than k items lie that close, the pool is the top k of the Hamming ranking instead (which
contains them). Fine level: the pool re-ranked by Euclidean distance between fc7 features, ties
kept in Hamming-rank order (distance, then index order).

Built as faiss builds refinement: a composite of two simple parts, a :class:`HashIndex` (coarse)
and an :class:`Fc7Reranker` (fine).

>>> import numpy as np
>>> from dlbhc_caffe.search import HashIndex
>>> index = HashIndex(bits=3)
>>> index.add([[0, 0, 0], [0, 0, 1], [1, 1, 1]], fc7=[[5.0], [1.0], [0.0]])
>>> search = CoarseToFine(index, radius=1)
>>> distances, ids = search.search([[0, 0, 0]], fc7=[[0.0]], k=2)
>>> ids.tolist(), distances.tolist()    # item 2 is close in fc7 but 3 bits away: not a candidate
([[1, 0]], [[1.0, 5.0]])
"""
import numpy as np

from .. import hamming
from ..errors import DlbhcError

DEFAULT_RADIUS = 2  # "within Hamming radius 2", the customary hash lookup radius


def _batch(codes):
    """Query codes as a batch: one 0/1 code (1-D, not packed) is a batch of one."""
    codes = np.asarray(codes)
    return codes.reshape(1, -1) if codes.ndim == 1 and codes.dtype != np.uint64 else codes


class Fc7Reranker:
    """The fine level: Euclidean distance between fc7 features, among given candidate rows.

    features: N x D, row-aligned with the coarse index (e.g. ``index.fc7``, memory-mapped or not;
        only the candidates' rows are read).
    """

    def __init__(self, features):
        self.features = features

    @property
    def d(self):
        return int(self.features.shape[1])

    @property
    def ntotal(self):
        return int(self.features.shape[0])

    def rerank(self, query, rows):
        """(distances float32, rows) of candidate ``rows`` ordered by Euclidean distance to
        ``query`` (D,), ties in the order the rows were given.
        """
        rows = np.asarray(rows, np.int64)
        candidates = np.asarray(self.features[rows], np.float64)
        diff = candidates - np.asarray(query, np.float64)
        squared = np.einsum("ij,ij->i", diff, diff)
        order = np.argsort(squared, kind="stable")
        return np.sqrt(squared[order]).astype(np.float32), rows[order]


class CoarseToFine:
    """Coarse Hamming pool + fine fc7 re-ranking (ICMR 2015), over a :class:`HashIndex`.

    index: the coarse level (codes, ids...).
    reranker: the fine level; default ``Fc7Reranker(index.fc7)`` (the index must hold fc7).
    radius: the Hamming radius of the candidate pool (default 2); each call may override it.
    """

    def __init__(self, index, reranker=None, radius=DEFAULT_RADIUS):
        self.index = index
        self.reranker = reranker
        self.radius = radius
        self.fallback = None  # per query of the last search: True when its pool was the top k

    @property
    def d(self):
        return self.index.d

    @property
    def ntotal(self):
        return self.index.ntotal

    def _fine(self):
        if self.index.ntotal == 0:
            raise DlbhcError("the index is empty (ntotal = 0): add database codes before "
                             "searching")
        reranker = self.reranker
        if reranker is None:
            if self.index.fc7 is None:
                raise DlbhcError("the index holds no fc7 features, so there is no fine level: "
                                 "build the index with fc7 (tools/search.py index does), or give "
                                 "a reranker")
            reranker = Fc7Reranker(self.index.fc7)
        if reranker.ntotal != self.index.ntotal:
            raise DlbhcError(f"the reranker has {reranker.ntotal} fc7 rows but the index has "
                             f"{self.index.ntotal} items: they must be row-aligned")
        return reranker

    def _radius(self, radius):
        return hamming.check_radius(self.radius if radius is None else radius)

    def _queries(self, queries, fc7, fine):
        codes = _batch(queries)
        fc7 = np.asarray(fc7, np.float32)
        if fc7.ndim == 1:
            fc7 = fc7.reshape(1, -1)
        if fc7.ndim != 2 or fc7.shape[0] != codes.shape[0]:
            raise DlbhcError(f"{codes.shape[0]} query code(s) but fc7 of shape {fc7.shape}: give "
                             f"one fc7 row per query")
        if fc7.shape[1] != fine.d:
            raise DlbhcError(f"query fc7 rows are {fc7.shape[1]} wide but the index's are "
                             f"{fine.d}: they must come from the same model")
        return codes, fc7

    def pools(self, queries, k=1, radius=None):
        """Each query's candidate pool as (Hamming distances, rows) in Hamming-rank order: the
        items within ``radius``, or the top k of the Hamming ranking when fewer than k are
        (the fallback; :attr:`fallback` then says which queries took it).
        """
        r = self._radius(radius)
        k = self.index.check_k(k) if self.index.ntotal else k
        lims, distances, rows = self.index.within(queries, r)
        pools = [(distances[lims[i]:lims[i + 1]], rows[lims[i]:lims[i + 1]])
                 for i in range(len(lims) - 1)]
        short = [i for i, (_, pool) in enumerate(pools) if len(pool) < k]
        if short:
            top_distances, top_rows = self.index.rank(_batch(queries)[short], k)
            for j, i in enumerate(short):
                pools[i] = (top_distances[j], top_rows[j])
        self.fallback = np.zeros(len(pools), bool)
        self.fallback[short] = True
        return pools

    def search(self, queries, fc7, k, radius=None):
        """(distances float32 [nq, k], ids int64 [nq, k]): the k nearest candidates by fc7
        Euclidean distance, from each query's Hamming pool (see :meth:`pools`).
        """
        fine = self._fine()
        codes, fc7 = self._queries(queries, fc7, fine)
        pools = self.pools(codes, k, radius)
        k = int(k)
        out_d = np.empty((len(pools), k), np.float32)
        out_i = np.empty((len(pools), k), np.int64)
        for i, (_, rows) in enumerate(pools):
            distances, ranked = fine.rerank(fc7[i], rows)
            out_d[i], out_i[i] = distances[:k], self.index.ids[ranked[:k]]
        return out_d, out_i

    def range_search(self, queries, fc7, radius=None):
        """Every item within Hamming distance ``radius`` (``<= r``), ordered by fc7 Euclidean
        distance, ties by Hamming rank: ``(lims, distances, ids)`` as faiss's range_search.
        """
        fine = self._fine()
        codes, fc7 = self._queries(queries, fc7, fine)
        lims, _, rows = self.index.within(codes, self._radius(radius))
        out_d = np.empty(len(rows), np.float32)
        out_i = np.empty(len(rows), np.int64)
        for i in range(len(lims) - 1):
            a, b = lims[i], lims[i + 1]
            distances, ranked = fine.rerank(fc7[i], rows[a:b])
            out_d[a:b], out_i[a:b] = distances, self.index.ids[ranked]
        return lims, out_d, out_i
