"""Search: the hash index (saved to disk, memory-mapped), Hamming search, the coarse-to-fine
search of ICMR 2015, and export to faiss.

- :class:`HashIndex` -- codes (packed), fc7, ids, paths, labels; ``search`` / ``range_search`` by
  Hamming distance; ``save`` and :func:`load_index` (versioned, checked, memory-mapped).
- :class:`CoarseToFine` -- a HashIndex (coarse pool) composed with an :class:`Fc7Reranker`.
- :class:`MultiIndexHash` -- exact radius search by table lookups (the coarse step, range_search).
- :mod:`.builder` -- streaming, resumable index files, shards and their merge.
- :mod:`.milvus` -- export to a Milvus collection and search it (past one machine).
- :func:`to_faiss`, :func:`write_faiss` -- the codes as a faiss IndexBinaryFlat.

>>> import numpy as np, tempfile
>>> index = HashIndex(bits=2)
>>> index.add([[0, 1], [1, 1]], fc7=np.eye(2), paths=["a.jpg", "b.jpg"], labels=[3, 4])
>>> path = index.save(tempfile.mkdtemp() + "/toy.index")
>>> loaded = load_index(path)
>>> loaded.ntotal, loaded.paths, loaded.labels.tolist(), loaded.codes.tolist()
(2, ['a.jpg', 'b.jpg'], [3, 4], [[0, 1], [1, 1]])
"""
from .coarse_to_fine import DEFAULT_RADIUS, CoarseToFine, Fc7Reranker
from .faiss_export import faiss_codes, to_faiss, write_faiss
from .index import VERSION, HashIndex, IndexFormatError, load_index, save_index
from .mih import MultiIndexHash

__all__ = ["HashIndex", "IndexFormatError", "load_index", "save_index", "CoarseToFine",
           "Fc7Reranker", "DEFAULT_RADIUS", "MultiIndexHash", "to_faiss", "write_faiss",
           "faiss_codes", "VERSION"]
