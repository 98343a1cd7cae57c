"""Past one machine: an index's codes in a Milvus collection, searched there.

The collection holds one row per item: ``id`` (INT64, primary key: the index's id), ``code``
(BINARY_VECTOR of the code length rounded up to whole bytes, bit j in byte j // 8 at position
j % 8 -- faiss's layout, so every Hamming distance is unchanged), ``label`` (INT64, -1 when the
index has no labels) and ``path`` (VARCHAR). Its vector index is BIN_FLAT (exact) or
BIN_IVF_FLAT (``nlist`` clusters, ``nprobe`` searched), metric HAMMING. Every read asks for
Strong consistency: with the default, a search right after an insert was seen to miss a row.

Without a URI, :func:`connect` starts the embedded server of the PyPI package ``milvus``
(2.3.5, on 127.0.0.1; its data under ``data_dir``). Milvus Lite cannot hold binary vectors, so
it cannot serve. The coarse-to-fine search takes the Hamming pool from Milvus and re-ranks it
with fc7 read from the local index file.
"""
import os
import re
from pathlib import Path

import numpy as np

from ..errors import DlbhcError
from ..encode import THRESHOLD
from .coarse_to_fine import Fc7Reranker
from .faiss_export import faiss_codes
from .workflow import make_hits

POOL_LIMIT = 16384  # Milvus's largest top-k: the coarse pool a fine search can take from it
DEFAULT_DATA_DIR = Path("out") / "milvus"


def _pymilvus():
    try:
        import pymilvus  # noqa: PLC0415  (optional engine)
    except ImportError:
        raise DlbhcError("pymilvus is not installed: pip install -r requirements.txt") from None
    return pymilvus


class Connection:
    """A pymilvus connection (``alias``), and the embedded server when this process started it."""

    def __init__(self, alias, uri, server=None):
        self.alias, self.uri, self.server = alias, uri, server

    def collection(self, name):
        """The pymilvus Collection ``name`` on this connection."""
        return _pymilvus().Collection(name, using=self.alias)

    def close(self):
        _pymilvus().connections.disconnect(self.alias)
        if self.server is not None:
            self.server.stop()
            self.server = None


def connect(uri=None, data_dir=None, port=None):
    """Connect to Milvus at ``uri``, or start the embedded server (data in ``data_dir``)."""
    pymilvus = _pymilvus()
    server = None
    if uri is None:
        try:
            from milvus import MilvusServer  # noqa: PLC0415  (optional engine)
        except ImportError:
            raise DlbhcError("the embedded Milvus server is not installed (pip install "
                             "milvus==2.3.5), and no --milvus-uri was given") from None
        server = MilvusServer()
        server.set_base_dir(str(Path(data_dir or DEFAULT_DATA_DIR).absolute()))
        if port is not None:
            server.listen_port = port
        try:
            server.start()
        except Exception as err:  # its own errors are plain Exceptions
            raise DlbhcError(f"the embedded Milvus server did not start: {err}") from None
        uri = f"http://127.0.0.1:{server.listen_port}"
    alias = f"dlbhc-{os.getpid()}-{id(server)}"
    try:
        pymilvus.connections.connect(alias=alias, uri=uri)
    except pymilvus.exceptions.MilvusException as err:
        if server is not None:
            server.stop()
        raise DlbhcError(f"cannot reach Milvus at {uri}: {err}") from None
    return Connection(alias, uri, server)


def collection_name(index_path):
    """A collection name from an index file's name (Milvus allows letters, digits and _)."""
    name = re.sub(r"\W", "_", Path(index_path).stem)
    return name if name[:1].isalpha() or name[:1] == "_" else f"dlbhc_{name}"


def _schema(pymilvus, bits, max_path):
    f, t = pymilvus.FieldSchema, pymilvus.DataType
    return pymilvus.CollectionSchema([
        f("id", t.INT64, is_primary=True, auto_id=False),
        f("code", t.BINARY_VECTOR, dim=(bits + 7) // 8 * 8),
        f("label", t.INT64),
        f("path", t.VARCHAR, max_length=max(1, max_path))], description="dlbhc-caffe codes")


def _code_bytes(index, a, b):
    nbytes = (index.bits + 7) // 8
    words = np.ascontiguousarray(index.packed[a:b], "<u8")
    return [row.tobytes() for row in words.view(np.uint8).reshape(b - a, -1)[:, :nbytes]]


def _count(collection):
    rows = collection.query(expr="", output_fields=["count(*)"], consistency_level="Strong")
    return int(rows[0]["count(*)"])


def export(conn, name, index, index_type="BIN_FLAT", nlist=1024, batch=10000, progress=False):
    """Write ``index``'s rows into collection ``name`` (created when missing) and build its
    vector index; a rerun adds only the rows not there yet. Returns how many it added."""
    pymilvus = _pymilvus()
    if index.ntotal == 0:
        raise DlbhcError("the index is empty (ntotal = 0): nothing to export")
    max_path = int(np.diff(index.path_offsets).max()) if index.ntotal else 1
    if pymilvus.utility.has_collection(name, using=conn.alias):
        collection = pymilvus.Collection(name, using=conn.alias)
        dims = [fld.params.get("dim") for fld in collection.schema.fields if fld.name == "code"]
        if dims != [(index.bits + 7) // 8 * 8]:
            raise DlbhcError(f"Milvus collection {name} holds codes of another length "
                             f"({dims}); export to another --collection")
    else:
        collection = pymilvus.Collection(name, _schema(pymilvus, index.bits, max(max_path, 512)),
                                         using=conn.alias)
    ensure_index(collection, index_type, nlist)  # counting needs a loaded collection
    collection.load()
    start = _count(collection)
    if start and not _holds(collection, index, start):
        raise DlbhcError(f"Milvus collection {name} holds {start} rows that are not the first "
                         f"{start} of this index: export to another --collection")
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415  (only with a progress bar)

        bar = tqdm(total=index.ntotal, initial=start, desc="export", unit="code")
    labels = index.labels
    for a in range(start, index.ntotal, batch):
        b = min(a + batch, index.ntotal)
        collection.insert([index.ids[a:b].tolist(), _code_bytes(index, a, b),
                           (labels[a:b] if labels is not None else np.full(b - a, -1)).tolist(),
                           index.paths_of(np.arange(a, b))])
        if bar is not None:
            bar.update(b - a)
    if bar is not None:
        bar.close()
    collection.flush()
    return index.ntotal - start


def _holds(collection, index, n):
    """Whether the collection's rows are exactly the index's first n ids."""
    last = collection.query(expr=f"id in [{int(index.ids[n - 1])}]", output_fields=["id"],
                            consistency_level="Strong")
    beyond = [] if n >= index.ntotal else collection.query(
        expr=f"id in [{int(index.ids[n])}]", output_fields=["id"], consistency_level="Strong")
    return bool(last) and not beyond


def check_collection(conn, name, index):
    """Load collection ``name`` for searching, refusing one that is missing or does not hold
    exactly ``index``'s rows (a search would answer ids the index cannot name)."""
    pymilvus = _pymilvus()
    if not pymilvus.utility.has_collection(name, using=conn.alias):
        raise DlbhcError(f"Milvus at {conn.uri} has no collection {name}: export the index "
                         f"first (tools/search.py export --to milvus), or give --collection")
    collection = conn.collection(name)
    if not collection.indexes:
        raise DlbhcError(f"Milvus collection {name} has no vector index: rerun the export")
    collection.load()
    count = _count(collection)
    if count != index.ntotal or not _holds(collection, index, count):
        raise DlbhcError(f"Milvus collection {name} holds {count} rows, not this index's "
                         f"{index.ntotal}: rerun the export (or give the right --collection)")
    return collection


def ensure_index(collection, index_type, nlist):
    """Give the collection this vector index (replacing another), loaded."""
    params = {"index_type": index_type, "metric_type": "HAMMING",
              "params": {"nlist": int(nlist)} if index_type == "BIN_IVF_FLAT" else {}}
    for existing in collection.indexes:
        if existing.params.get("index_type") == index_type and \
                str(existing.params.get("params", {}).get("nlist", "")) == \
                str(params["params"].get("nlist", "")):
            return
        collection.release()
        collection.drop_index()
    collection.create_index("code", params)
    collection.load()


def search(conn, name, codes, k, nprobe=16):
    """(distances int32 [nq, k], ids int64 [nq, k]) of the k nearest codes in Milvus (queries
    0/1 [nq, bits] or packed uint64 [nq, words]), each
    query's hits ordered by (distance, id) (Milvus leaves ties in no set order)."""
    collection = conn.collection(name)
    codes = np.asarray(codes)
    if codes.dtype == np.uint64:  # packed (hamming.pack_codes): the collection's bytes of each
        dim = [f.params["dim"] for f in collection.schema.fields if f.name == "code"][0]
        rows = np.ascontiguousarray(codes, "<u8").view(np.uint8)[:, :dim // 8]
    else:
        rows = faiss_codes(codes)
    data = [row.tobytes() for row in rows]
    answer = collection.search(data, "code", {"metric_type": "HAMMING",
                                              "params": {"nprobe": int(nprobe)}},
                               limit=int(k), consistency_level="Strong")
    out_d = np.full((len(data), k), -1, np.int32)
    out_i = np.full((len(data), k), -1, np.int64)
    for i, hits in enumerate(answer):
        pairs = sorted((int(h.distance), int(h.id)) for h in hits)
        out_d[i, :len(pairs)] = [d for d, _ in pairs]
        out_i[i, :len(pairs)] = [j for _, j in pairs]
    return out_d, out_i


def query(conn, name, index, latent, fc7=None, k=10, fine=False, radius=2, nprobe=16):
    """:func:`dlbhc_caffe.search.workflow.query_features`'s answer, with the Hamming search done
    by Milvus: per query its :class:`~dlbhc_caffe.search.workflow.Hits`."""
    codes = (np.asarray(latent) > THRESHOLD).astype(np.uint8)
    pool = min(POOL_LIMIT, index.ntotal) if fine else k
    distances, ids = search(conn, name, codes, pool, nprobe)
    results = []
    for i in range(len(codes)):
        found = ids[i] >= 0
        d, rows = distances[i][found], index.rows_of(ids[i][found])
        euclidean, fallback = None, None
        if fine:
            within = d <= radius
            fallback = bool(within.sum() < k)
            keep = np.arange(len(d)) < k if fallback else within
            order = np.lexsort((rows[keep], d[keep]))  # the index's pool order
            euclidean, rows = Fc7Reranker(index.fc7).rerank(fc7[i], rows[keep][order])
            euclidean, rows = euclidean[:k], rows[:k]
            d = index.hamming_to(codes[i:i + 1], rows)[0]
        results.append(make_hits(index, rows[:k], d[:k], euclidean, fallback))
    return results
