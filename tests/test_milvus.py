"""Milvus past one machine: the embedded server (PyPI `milvus` 2.3.5) holds an index's codes;
BIN_FLAT answers equal the project's exact ranking, BIN_IVF_FLAT's recall@10 is reported."""
import numpy as np
import pytest

from conftest import _unavailable
from dlbhc_caffe.search import HashIndex, milvus
from test_search import ALLOW, search_tool, toy_images  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow  # the embedded server takes ~15 s to start


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        import milvus as _  # noqa: F401,PLC0415
        import pymilvus as _p  # noqa: F401,PLC0415
    except ImportError as err:
        _unavailable(f"milvus / pymilvus are not installed ({err}): pip install -r "
                     f"requirements.txt")
    try:
        conn = milvus.connect(data_dir=tmp_path_factory.mktemp("milvus"))
    except ValueError as err:
        _unavailable(str(err))
    yield conn
    conn.close()


def test_milvus_bin_flat_equals_the_exact_ranking_and_ivf_recall(server, capsys):
    rng = np.random.default_rng(0)
    n, bits, k = 3000, 48, 10
    centres = rng.integers(0, 2, (30, bits), dtype=np.uint8)
    codes = centres[rng.integers(0, 30, n)]
    codes ^= (rng.random(codes.shape) < 0.08).astype(np.uint8)
    index = HashIndex(bits)
    index.add(codes, ids=np.arange(n) + 100, paths=[f"img/{i}.jpg" for i in range(n)],
              labels=rng.integers(0, 5, n), fc7=rng.normal(size=(n, 4)))
    queries = codes[rng.choice(n, 40, replace=False)]
    exact_d, _ = index.search(queries, k)

    assert milvus.export(server, "flat", index, batch=700) == n
    assert milvus.export(server, "flat", index) == 0          # a rerun adds nothing
    d, ids = milvus.search(server, "flat", queries, k)
    for i in range(len(queries)):      # ties may be cut differently: compare distance multisets
        assert sorted(d[i]) == sorted(exact_d[i])
        np.testing.assert_array_equal(
            d[i], index.hamming_to(queries[i:i + 1], index.rows_of(ids[i]))[0])

    hits = milvus.query(server, "flat", index, queries.astype(np.float32), k=k)
    assert [h.hamming for h in hits[0]] == exact_d[0].tolist()
    fine = milvus.query(server, "flat", index, queries.astype(np.float32),
                        fc7=index.fc7[index.rows_of(ids[:, 0])], k=k, fine=True, radius=2)
    from dlbhc_caffe.search import workflow
    local = workflow.query_features(index, queries.astype(np.float32),
                                    index.fc7[index.rows_of(ids[:, 0])], k=k, fine=True)
    assert [[h.id for h in q] for q in fine] == [[h.id for h in q] for q in local]
    assert [q.fallback for q in fine] == [q.fallback for q in local]

    milvus.export(server, "ivf", index, index_type="BIN_IVF_FLAT", nlist=32)
    _, ivf_ids = milvus.search(server, "ivf", queries, k, nprobe=4)
    exact = workflow.query_features(index, queries.astype(np.float32), k=k)
    recall = np.mean([len(set(a) & {h.id for h in e}) / k for a, e in zip(ivf_ids, exact)])
    with capsys.disabled():
        print(f"\nBIN_IVF_FLAT (nlist 32, nprobe 4) recall@10 on {n} clustered codes: "
              f"{recall:.3f}")
    assert recall > 0.5


def test_search_tool_export_and_query_with_milvus(server, search_tool, toy_images, capsys):
    import json

    t = toy_images
    model = ["--deploy", str(t / "deploy.prototxt"), "--model", str(t / "toy.caffemodel"),
             "--allow-missing-weights",
             "--mean-value", "100", "--resize", "8", "--quiet"]
    index = str(t / "toy.index")
    assert search_tool("index", *model, "--folder", str(t / "imgs"), "--out", index) == 0
    where = ["--milvus-uri", server.uri, "--collection", "toy_cli"]
    for added in ("12 added now", "0 added now"):       # a rerun is idempotent
        capsys.readouterr()
        assert search_tool("export", "--index", index, "--to", "milvus", *where, "--quiet") == 0
        assert added in capsys.readouterr().out
    query = str(t / "imgs" / "dogs" / "3.png")
    answers = {}
    for engine in ("index", "milvus"):
        for fine in ([], ["--fine"]):
            capsys.readouterr()
            assert search_tool("query", *ALLOW, "--index", index, query, "--k", "5", "--json",
                               "--engine", engine, *where, *fine) == 0
            answers[engine, bool(fine)] = json.loads(capsys.readouterr().out)
    for fine in (False, True):
        local, remote = answers["index", fine][0], answers["milvus", fine][0]
        assert remote["fallback"] == local["fallback"]
        assert sorted(r["distance"] for r in remote["results"]) == \
            sorted(r["distance"] for r in local["results"])
    # fine: the same pool (radius 2, or the top 5) re-ranked by fc7: the same hits
    assert answers["milvus", True][0]["results"] == answers["index", True][0]["results"]
