"""The search service with ``--engine milvus``: the embedded Milvus server (as in test_milvus)
holds the sample index's codes; the service's answers equal the local engine's."""
import subprocess
import sys

import pytest

from dlbhc_caffe.errors import DlbhcError
from dlbhc_caffe.search import milvus
from dlbhc_caffe.serve import Searcher, create_app
from test_milvus import server  # noqa: F401  (fixture)
from test_serve import ROOT

pytestmark = [pytest.mark.slow,  # the embedded server takes ~15 s to start
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]


@pytest.fixture(scope="module")
def clients(server, serve_sample):  # noqa: F811
    from starlette.testclient import TestClient  # noqa: PLC0415

    local = Searcher(serve_sample["index"], model=False)
    remote = Searcher(serve_sample["index"], model=False)
    assert milvus.export(server, "served", remote.index) == remote.index.ntotal
    remote.use_milvus(server, "served")
    with TestClient(create_app(local)) as a, TestClient(create_app(remote)) as b:
        yield a, b, local.index


def same_up_to_the_last_tie(index, query_row, a, b):
    """Distances equal per rank; each id's distance true; ids equal but in the tie cut at k
    (12-bit codes tie a lot, and Milvus may cut the last tie elsewhere)."""
    assert [r["distance"] for r in b] == [r["distance"] for r in a]
    rows = index.rows_of([r["id"] for r in b])
    if query_row is not None:
        true = index.hamming_to(index.codes[query_row:query_row + 1], rows)[0]
        assert true.tolist() == [r["distance"] for r in b]
    last = a[-1]["distance"]
    assert [r for r in b if r["distance"] < last] == [r for r in a if r["distance"] < last]
    assert len({r["id"] for r in b}) == len(b)


def test_milvus_answers_equal_the_local_engine(clients):
    local, remote, index = clients
    assert (local.get("/api/info").json()["engine"],
            remote.get("/api/info").json()["engine"]) == ("index", "milvus")
    for item in (0, 77, 1500):
        for fine in ("false", "true"):
            params = {"id": item, "k": 25, "fine": fine, "radius": 2}
            a = local.get("/api/search", params=params).json()
            b = remote.get("/api/search", params=params).json()
            assert len(a["results"]) == 25
            if fine == "true":  # the whole index is the pool: the same hits, fc7 distances too
                assert b["results"] == a["results"]
                assert (b["within_radius"], b["fallback"]) == (a["within_radius"], a["fallback"])
            else:
                same_up_to_the_last_tie(index, index.rows_of([item])[0], a["results"],
                                        b["results"])
    params = {"code": "0" * 12, "k": 10}
    same_up_to_the_last_tie(index, None, local.get("/api/search", params=params).json()["results"],
                            remote.get("/api/search", params=params).json()["results"])


def test_a_missing_collection_is_refused(server, serve_sample):  # noqa: F811
    searcher = Searcher(serve_sample["index"], model=False)
    with pytest.raises(DlbhcError, match="no collection nowhere"):
        searcher.use_milvus(server, "nowhere")
    assert searcher.engine == "index"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "serve.py"), "--index", str(serve_sample["index"]),
         "--no-model", "--engine", "milvus", "--milvus-uri", server.uri,
         "--collection", "nowhere"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no collection nowhere" in result.stderr
