"""The index (Hamming search, disk format), the coarse-to-fine search, and the faiss export."""
import json

import numpy as np
import pytest

from dlbhc_caffe.search import (CoarseToFine, Fc7Reranker, HashIndex, IndexFormatError,
                                faiss_codes, load_index, to_faiss, write_faiss)


# the toy caffemodel holds no weights: the tools must be told to use it anyway
ALLOW = ["--allow-missing-weights"]


def random_index(n=200, bits=12, fc7=6, seed=0, labels=True):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2, size=(n, bits), dtype=np.uint8)
    index = HashIndex(bits, meta={"model": "toy"})
    index.add(codes, fc7=rng.normal(size=(n, fc7)).astype(np.float32) if fc7 else None,
              paths=[f"img/{i}.jpg" for i in range(n)],
              labels=rng.integers(0, 5, size=n) if labels else None)
    return index, codes


def brute_hamming(queries, codes):
    return (np.asarray(queries)[:, None, :] != codes[None, :, :]).sum(axis=2)


# ---------------------------------------------------------------- Hamming search

def test_search_is_the_stable_hamming_ranking():
    index, codes = random_index()
    assert (index.d, index.ntotal, index.bits) == (12, 200, 12)
    queries = np.random.default_rng(1).integers(0, 2, size=(7, 12))
    distances, ids = index.search(queries, k=50)
    full = brute_hamming(queries, codes)
    expected = np.argsort(full, axis=1, kind="stable")[:, :50]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(distances, np.take_along_axis(full, expected, axis=1))


def test_range_search_is_everything_within_r():
    index, codes = random_index()
    queries = codes[:3]
    lims, distances, ids = index.range_search(queries, 3)
    full = brute_hamming(queries, codes)
    for i in range(3):
        expected = np.flatnonzero(full[i] <= 3)
        expected = expected[np.argsort(full[i][expected], kind="stable")]
        np.testing.assert_array_equal(ids[lims[i]:lims[i + 1]], expected)
        assert np.all(distances[lims[i]:lims[i + 1]] <= 3)


def test_ids_and_single_query():
    index = HashIndex(4)
    index.add([[0, 0, 0, 0], [1, 1, 1, 1]], ids=[100, 7], paths=["a", "b"])
    index.add([[1, 0, 0, 0]], ids=[55], paths=["c"])
    distances, ids = index.search([1, 1, 1, 0], k=3)          # one code: a batch of one
    assert ids.tolist() == [[7, 55, 100]] and distances.tolist() == [[1, 2, 3]]
    assert index.paths_of(index.rows_of([55, 100])) == ["c", "a"]
    with pytest.raises(KeyError, match="id 8"):
        index.rows_of([8])
    with pytest.raises(ValueError, match="unique"):
        index.add([[0, 0, 0, 1]], ids=[7])
    index.reset()
    assert index.ntotal == 0 and index.paths == []


@pytest.mark.parametrize("call, message", [
    (lambda ix: ix.search(np.zeros((1, 48), np.uint8), 5), "48 bits per code but the index "
                                                            "holds 12-bit codes"),
    (lambda ix: ix.add(np.zeros((2, 11), np.uint8), fc7=np.zeros((2, 6))), "11 bits"),
    (lambda ix: ix.search(np.zeros((1, 12), np.uint8), 201), "k=201 is larger than the index "
                                                              r"\(200 items\)"),
    (lambda ix: ix.search(np.zeros((1, 12), np.uint8), 0), "positive integer"),
    (lambda ix: ix.range_search(np.zeros((1, 12), np.uint8), -1), "non-negative"),
    (lambda ix: ix.add(np.zeros((2, 12), np.uint8), fc7=np.zeros((2, 6)), labels=[1]),
     "1 labels for 2 codes"),
    (lambda ix: ix.add(np.zeros((2, 12), np.uint8), fc7=np.zeros((2, 6))), "holds labels"),
    (lambda ix: ix.add(np.zeros((2, 12), np.uint8), labels=[1, 2]), "holds fc7"),
    (lambda ix: ix.add(np.zeros((2, 12), np.uint8), fc7=np.zeros((2, 5)), labels=[1, 2]),
     "5 wide"),
    (lambda ix: ix.add(np.zeros((2, 12), np.uint8), fc7=np.zeros((2, 6)), labels=[1, 2],
                       paths=["x"]), "1 paths for 2 codes"),
    (lambda ix: ix.search(np.full((1, 12), 0.7), 1), "only 0 and 1"),
])
def test_bad_input_is_a_clear_error_and_changes_nothing(call, message):
    index, _ = random_index()
    before = index.packed.copy()
    with pytest.raises(ValueError, match=message):
        call(index)
    np.testing.assert_array_equal(index.packed, before)
    assert index.ntotal == 200 and len(index.labels) == 200 and len(index.paths) == 200


def test_empty_index_cannot_be_searched():
    index = HashIndex(12)
    with pytest.raises(ValueError, match="the index is empty"):
        index.search(np.zeros((1, 12), np.uint8), 1)
    with pytest.raises(ValueError, match="the index is empty"):
        CoarseToFine(index).search(np.zeros((1, 12), np.uint8), np.zeros((1, 3)), 1)


def test_labels_are_all_or_none():
    index = HashIndex(3)
    index.add([[0, 1, 0]])
    with pytest.raises(ValueError, match="have no labels"):
        index.add([[0, 1, 1]], labels=[2])
    with pytest.raises(ValueError, match="have no fc7"):
        index.add([[0, 1, 1]], fc7=[[1.0]])


# ---------------------------------------------------------------- disk

def test_save_load_round_trip_memory_mapped(tmp_path):
    index, codes = random_index()
    path = index.save(tmp_path / "db.index")
    loaded = load_index(path)
    assert isinstance(loaded.packed, np.memmap) and isinstance(loaded.fc7, np.memmap)
    assert not loaded.packed.flags.writeable
    assert (loaded.bits, loaded.ntotal, loaded.meta) == (12, 200, {"model": "toy"})
    np.testing.assert_array_equal(loaded.codes, codes)
    np.testing.assert_array_equal(loaded.fc7, index.fc7)
    np.testing.assert_array_equal(loaded.labels, index.labels)
    np.testing.assert_array_equal(loaded.ids, index.ids)
    assert loaded.paths == index.paths
    queries = codes[:5]
    for a, b in zip(loaded.search(queries, 20), index.search(queries, 20)):
        np.testing.assert_array_equal(a, b)
    in_memory = load_index(path, mmap=False)
    assert not isinstance(in_memory.packed, np.memmap)
    np.testing.assert_array_equal(in_memory.codes, codes)
    # adding to a mapped index copies into memory and leaves the file as it was
    size = path.stat().st_size
    loaded.add(codes[:2], fc7=index.fc7[:2], labels=[0, 1], paths=["new1", "new2"])
    assert loaded.ntotal == 202 and loaded.paths[-1] == "new2"
    assert path.stat().st_size == size and load_index(path).ntotal == 200


def test_round_trip_without_optional_parts_and_empty(tmp_path):
    index, codes = random_index(n=5, bits=70, fc7=0, labels=False)
    loaded = load_index(index.save(tmp_path / "a.index"))
    assert loaded.fc7 is None and loaded.labels is None and loaded.words == 2
    np.testing.assert_array_equal(loaded.codes, codes)
    empty = load_index(HashIndex(48).save(tmp_path / "empty.index"))
    assert empty.ntotal == 0 and empty.bits == 48
    with pytest.raises(ValueError, match="the index is empty"):
        empty.search(np.zeros((1, 48), np.uint8), 1)


def test_truncated_file_is_a_clear_error(tmp_path):
    index, _ = random_index()
    data = index.save(tmp_path / "full.index").read_bytes()
    for keep in (len(data) - 1, len(data) // 2, 100, 14):
        cut = tmp_path / f"cut{keep}.index"
        cut.write_bytes(data[:keep])
        with pytest.raises(IndexFormatError, match="truncated|too short") as err:
            load_index(cut)
        assert str(cut) in str(err.value)
    (tmp_path / "long.index").write_bytes(data + b"\0")
    with pytest.raises(IndexFormatError, match="trailing"):
        load_index(tmp_path / "long.index")


def test_other_files_and_versions_are_refused(tmp_path):
    index, _ = random_index(n=3)
    data = bytearray(index.save(tmp_path / "ok.index").read_bytes())
    (tmp_path / "x.index").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(IndexFormatError, match="not a dlbhc-caffe hash index"):
        load_index(tmp_path / "x.index")
    data[8:12] = np.array([99], "<u4").tobytes()
    (tmp_path / "v99.index").write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="version 99"):
        load_index(tmp_path / "v99.index")
    with pytest.raises(FileNotFoundError, match="no such index file"):
        load_index(tmp_path / "missing.index")


def test_failed_save_leaves_the_old_file(tmp_path):
    index, _ = random_index(n=4)
    path = index.save(tmp_path / "keep.index")
    before = path.read_bytes()
    index.meta["bad"] = object()  # not JSON
    with pytest.raises(TypeError):
        index.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.index"]


def test_header_is_json_with_the_documented_fields(tmp_path):
    index, _ = random_index(n=4)
    data = index.save(tmp_path / "h.index").read_bytes()
    assert data[:8] == b"DLBHCIDX"
    version, length = np.frombuffer(data[8:16], "<u4")
    header = json.loads(data[16:16 + length])
    assert version == 1
    assert {"bits", "ntotal", "words", "fc7_dim", "labels", "sections", "file_size"} <= set(header)
    for offset, _ in header["sections"].values():
        assert offset % 64 == 0


# ---------------------------------------------------------------- coarse to fine

def known_case():
    """8-bit codes; query 00000000. Hamming distances and fc7 (1-D) chosen so the answer is known.

    row:      0    1    2    3    4    5    6    7
    hamming:  3    1    0    2    1    5    2    1
    fc7:      0.0  4.0  3.0  1.0  1.0  0.1  9.0  -4.0
    """
    hamming = [3, 1, 0, 2, 1, 5, 2, 1]
    codes = np.zeros((8, 8), np.uint8)
    for row, d in enumerate(hamming):
        codes[row, :d] = 1
    fc7 = np.array([[0.0], [4.0], [3.0], [1.0], [1.0], [0.1], [9.0], [-4.0]], np.float32)
    index = HashIndex(8)
    index.add(codes, fc7=fc7, ids=np.arange(8) + 10)
    return index


def test_coarse_to_fine_returns_the_pool_within_r_by_fc7_distance():
    search = CoarseToFine(known_case(), radius=2)
    query, query_fc7 = np.zeros((1, 8), np.uint8), [[0.0]]
    # within 2: rows 1,2,3,4,6,7 (not 0: distance 3; not 5: distance 5)
    # fc7 distance: 3->1, 4->1 (tie: Hamming rank puts 4 (d=1) before 3 (d=2)), 2->3,
    # 1->4 and 7->4 (tie: both d=1, index order 1 then 7), 6->9
    lims, distances, ids = search.range_search(query, query_fc7)
    assert (ids - 10).tolist() == [4, 3, 2, 1, 7, 6]
    np.testing.assert_allclose(distances, [1, 1, 3, 4, 4, 9])
    distances, ids = search.search(query, query_fc7, k=3)
    assert (ids - 10).tolist() == [[4, 3, 2]]
    # rows 0 (fc7 distance 0) and 5 (0.1) are nearer in fc7 but outside the radius: never returned
    distances, ids = search.search(query, query_fc7, k=6)
    assert (ids - 10).tolist() == [[4, 3, 2, 1, 7, 6]]


def test_coarse_to_fine_falls_back_to_the_hamming_top_k():
    search = CoarseToFine(known_case(), radius=0)        # only row 2 is within 0
    query, query_fc7 = np.zeros((1, 8), np.uint8), [[0.0]]
    # fewer than k=4 within r: the pool is the Hamming top 4: rows 2 (0), 1, 4, 7 (1 each)
    distances, ids = search.search(query, query_fc7, k=4)
    # fc7 distances 3, 4, 1, 4: row 4 first, then 2, then the tie 1 / 7 in Hamming-rank order
    assert (ids - 10).tolist() == [[4, 2, 1, 7]]
    np.testing.assert_allclose(distances, [[1, 3, 4, 4]])
    assert [(rows.tolist(), d.tolist()) for d, rows in search.pools(query, k=4)] == \
        [([2, 1, 4, 7], [0, 1, 1, 1])]
    # k=1 is satisfied by the radius: the pool is just row 2
    assert (search.search(query, query_fc7, k=1)[1] - 10).tolist() == [[2]]
    # a per-call radius overrides the default
    assert (search.search(query, query_fc7, k=1, radius=5)[1] - 10).tolist() == [[0]]


def test_coarse_to_fine_matches_a_brute_force_reference():
    index, codes = random_index(n=300, bits=10, fc7=4, seed=3)
    rng = np.random.default_rng(4)
    queries = rng.integers(0, 2, size=(20, 10), dtype=np.uint8)
    query_fc7 = rng.normal(size=(20, 4)).astype(np.float32)
    k, r = 15, 2
    distances, ids = CoarseToFine(index, radius=r).search(queries, query_fc7, k)
    full = brute_hamming(queries, codes)
    for i in range(20):
        hamming_order = np.argsort(full[i], kind="stable")
        pool = hamming_order[full[i][hamming_order] <= r]
        if len(pool) < k:
            pool = hamming_order[:k]
        euclid = np.linalg.norm(index.fc7[pool].astype(np.float64) - query_fc7[i], axis=1)
        expected = pool[np.argsort(euclid, kind="stable")][:k]
        np.testing.assert_array_equal(ids[i], expected)
        np.testing.assert_allclose(distances[i], np.sort(euclid)[:k], rtol=1e-5)


def test_coarse_to_fine_composes_and_checks():
    index, codes = random_index(n=50, fc7=3)
    # the parts: an explicit reranker on another (row-aligned) feature matrix
    other = Fc7Reranker(np.zeros((50, 2), np.float32))
    distances, ids = CoarseToFine(index, other, radius=12).search(codes[:1], [[1.0, 0.0]], 5)
    # every fc7 distance ties at 1, so the order is the Hamming ranking's
    hamming_top = np.argsort(brute_hamming(codes[:1], codes)[0], kind="stable")[:5]
    assert ids.tolist() == [hamming_top.tolist()] and np.allclose(distances, 1)
    with pytest.raises(ValueError, match="row-aligned"):
        CoarseToFine(index, Fc7Reranker(np.zeros((3, 2)))).search(codes[:1], [[0, 0]], 1)
    with pytest.raises(ValueError, match="3 wide but the index's are 2|2 wide but the index's"):
        CoarseToFine(index, other).search(codes[:1], [[0, 0, 0]], 1)
    with pytest.raises(ValueError, match="one fc7 row per query"):
        CoarseToFine(index).search(codes[:2], [[0, 0, 0]], 1)
    with pytest.raises(ValueError, match="k=51 is larger"):
        CoarseToFine(index).search(codes[:1], [[0, 0, 0]], 51)
    no_fc7, _ = random_index(n=5, fc7=0)
    with pytest.raises(ValueError, match="no fc7 features"):
        CoarseToFine(no_fc7).search(codes[:1], [[0, 0, 0]], 1)


# ---------------------------------------------------------------- faiss

def test_faiss_export_searches_like_the_index(tmp_path):
    import faiss  # noqa: PLC0415 (faiss-cpu is pinned in requirements.txt)

    index, codes = random_index(n=100, bits=12)
    path = write_faiss(index, tmp_path / "codes.faiss")
    served = faiss.read_index_binary(str(path))
    assert (served.d, served.ntotal) == (16, 100)
    queries = codes[:10]
    f_dist, f_ids = served.search(faiss_codes(queries), 100)
    ours_dist, ours_ids = index.search(queries, 100)
    np.testing.assert_array_equal(f_dist, ours_dist)
    for i in range(10):   # the same items at every distance (faiss's tie order is its own)
        for d in np.unique(ours_dist[i]):
            assert set(f_ids[i][f_dist[i] == d]) == set(ours_ids[i][ours_dist[i] == d])
    mapped = HashIndex(12)
    mapped.add(codes[:5], ids=[50, 40, 30, 20, 10])
    _, ids = to_faiss(mapped).search(faiss_codes(codes[3:4]), 1)
    assert ids.tolist() == [[20]]
    with pytest.raises(ValueError, match="empty"):
        write_faiss(HashIndex(12), tmp_path / "empty.faiss")
    assert not (tmp_path / "empty.faiss").exists()


# ---------------------------------------------------------------- tools/search.py, on a fake engine

TOY_DEPLOY = """
name: "Toy"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "fc7" type: "InnerProduct" bottom: "data" top: "fc7" inner_product_param { num_output: 5 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "fc8_kevin" type: "InnerProduct" bottom: "fc7" top: "fc8_kevin" inner_product_param { num_output: 6 } }
layer { name: "fc8_kevin_encode" type: "Sigmoid" bottom: "fc8_kevin" top: "fc8_kevin_encode" }
"""


class _Blob:
    def __init__(self, *shape):
        self.data = np.zeros(shape, np.float32)

    def reshape(self, *shape):
        self.data = np.zeros(shape, np.float32)


class _ToyNet:
    """What the engine would run for TOY_DEPLOY, with fixed random weights."""

    def __init__(self, prototxt, phase, weights=None):
        rng = np.random.default_rng(7)
        self.w1 = rng.normal(size=(192, 5)).astype(np.float32) / 300
        self.w2 = rng.normal(size=(5, 6)).astype(np.float32)
        self.blobs = {"data": _Blob(2, 3, 8, 8), "fc7": _Blob(2, 5), "fc8_kevin": _Blob(2, 6),
                      "fc8_kevin_encode": _Blob(2, 6)}

    def reshape(self):
        n = self.blobs["data"].data.shape[0]
        for name, width in (("fc7", 5), ("fc8_kevin", 6), ("fc8_kevin_encode", 6)):
            self.blobs[name].reshape(n, width)

    def forward(self, data):
        fc7 = np.maximum(data.reshape(len(data), -1) @ self.w1, 0)
        self.blobs["fc7"].data[...] = fc7
        self.blobs["fc8_kevin_encode"].data[...] = 1 / (1 + np.exp(-(fc7 @ self.w2 - 1)))


class _ToyEngine:
    TEST = 1
    Net = _ToyNet


@pytest.fixture
def search_tool(monkeypatch):
    import importlib.util
    from pathlib import Path

    from dlbhc_caffe import backends

    monkeypatch.setattr(backends, "get", lambda name="auto", verbose=None: _ToyEngine)
    path = Path(__file__).resolve().parents[1] / "tools" / "search.py"
    spec = importlib.util.spec_from_file_location("search_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from dlbhc_caffe import cli

    return lambda *argv: cli.run(module.main, "search.py", list(argv))


@pytest.fixture
def toy_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(8)
    for label, name in enumerate(["cats", "dogs"]):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(6):
            base = 40 + 150 * label
            pixels = np.clip(rng.normal(base, 30, size=(12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / name / f"{i}.png")
    (tmp_path / "deploy.prototxt").write_text(TOY_DEPLOY)
    (tmp_path / "toy.caffemodel").write_bytes(b"")
    return tmp_path


def test_search_tool_index_query_faiss(search_tool, toy_images, capsys):
    t = toy_images
    model = ["--deploy", str(t / "deploy.prototxt"), "--model", str(t / "toy.caffemodel"),
             "--allow-missing-weights",
             "--mean-value", "100", "--resize", "8"]
    assert search_tool(*["index", *model, "--folder", str(t / "imgs"),
                             "--out", str(t / "toy.index"), "--quiet"]) == 0
    index = load_index(t / "toy.index")
    assert index.ntotal == 12 and index.bits == 6 and index.fc7_dim == 5
    assert index.labels.tolist() == [0] * 6 + [1] * 6
    assert index.meta["model"]["mean_values"] == [100.0]
    query = t / "imgs" / "dogs" / "3.png"
    capsys.readouterr()
    assert search_tool(*["query", *ALLOW, "--index", str(t / "toy.index"), str(query), "--k", "4",
                             "--montage", str(t / "m.png")]) == 0
    hits = [line.split() for line in capsys.readouterr().out.splitlines()[2:6]]
    assert [hit[0] for hit in hits] == ["1", "2", "3", "4"]      # rank hamming label id path
    assert str(query.absolute()) in [hit[-1] for hit in hits if hit[1] == "0"]
    assert all(hit[2] == "1" for hit in hits)                    # all dogs
    assert (t / "m.png").stat().st_size > 0
    assert search_tool(*["query", *ALLOW, "--index", str(t / "toy.index"), str(query), "--k", "4",
                             "--fine", "--radius", "1", "--montage", str(t / "f.png")]) == 0
    fine_hit = capsys.readouterr().out.splitlines()[2].split()
    assert fine_hit[:3] == ["1", "0", "0.000"]                   # itself: fc7 distance 0
    assert fine_hit[-1] == str(query.absolute())
    assert search_tool(*["faiss", "--index", str(t / "toy.index"),
                             "--out", str(t / "toy.faiss")]) == 0
    assert (t / "toy.faiss").is_file()


def test_search_tool_refuses_bad_input_and_overwrites_nothing(search_tool, toy_images, capsys):
    t = toy_images
    model = ["--deploy", str(t / "deploy.prototxt"), "--model", str(t / "toy.caffemodel"),
             "--allow-missing-weights"]
    out = t / "toy.index"
    assert search_tool(*["index", *model, "--folder", str(t / "imgs"), "--out", str(out),
                             "--quiet"]) == 0
    before = out.read_bytes()
    (t / "list.txt").write_text("imgs/cats/0.png\nimgs/cats/missing.png\n")
    capsys.readouterr()
    assert search_tool(*["index", *model, "--list", str(t / "list.txt"), "--out",
                             str(out)]) == 2
    assert "already exists; use --force" in capsys.readouterr().err
    assert search_tool(*["index", *model, "--list", str(t / "list.txt"), "--out", str(out),
                             "--force", "--strict"]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert out.read_bytes() == before
    query = str(t / "imgs" / "cats" / "1.png")
    montage_png = t / "never.png"
    assert search_tool(*["query", *ALLOW, "--index", str(out), query, "--k", "13",
                             "--montage", str(montage_png)]) == 2
    err = capsys.readouterr().err
    assert "--k=13 is larger than" in err and "(12 items); pass --k <= 12." in err
    (t / "cut.index").write_bytes(before[:-10])
    assert search_tool(*["query", *ALLOW, "--index", str(t / "cut.index"), query,
                             "--montage", str(montage_png)]) == 2
    assert "truncated" in capsys.readouterr().err
    assert search_tool(*["query", *ALLOW, "--index", str(t / "none.index"), query]) == 2
    assert "no such index file" in capsys.readouterr().err
    assert not montage_png.exists()


def test_search_tool_resumes_shards_merges_and_skips(search_tool, toy_images, monkeypatch,
                                                      capsys):
    import json

    from dlbhc_caffe.search import workflow

    t = toy_images
    # batch size 1: an engine's float rounding may depend on the batch, and shards or a resumed
    # build batch the images differently from one run
    model = ["--deploy", str(t / "deploy.prototxt"), "--model", str(t / "toy.caffemodel"),
             "--allow-missing-weights",
             "--mean-value", "100", "--resize", "8", "--quiet", "--batch-size", "1"]
    src = ["--folder", str(t / "imgs")]
    assert search_tool("index", *model, *src, "--out", str(t / "full.index")) == 0
    full = load_index(t / "full.index")
    assert full.build["complete"] and full.build["skipped"] == 0
    # the in-memory build (for a few images) gives the same index
    memory = workflow.build_index(workflow.Model.from_files(
        t / "deploy.prototxt", t / "toy.caffemodel", mean_values=[100], resize=8),
        *workflow.scan_images(t / "imgs"), batch_size=1, allow_missing_weights=True)
    for name in ("packed", "ids", "labels", "fc7"):
        np.testing.assert_array_equal(getattr(memory, name), getattr(full, name))

    # killed after the first commit: the partial file is a valid index; a rerun continues
    monkeypatch.setattr(workflow, "COMMIT_EVERY", 4)
    real_encode, calls = workflow._encode, []

    def interrupted(encoder, inputs):
        calls.append(1)
        if len(calls) == 3:   # the width probe, the first batch, then Ctrl-C
            raise KeyboardInterrupt
        return real_encode(encoder, inputs)

    monkeypatch.setattr(workflow, "_encode", interrupted)
    out = t / "resumed.index"
    assert search_tool("index", *model, *src, "--out", str(out)) == 130
    assert "run the same command again to continue" in capsys.readouterr().err
    partial = load_index(str(out) + ".partial")
    assert not out.exists() and partial.ntotal == 4 and partial.build["done"] == 4
    monkeypatch.setattr(workflow, "_encode", real_encode)
    assert search_tool("index", *model, *src, "--out", str(out)) == 0
    resumed = load_index(out)
    assert not (t / "resumed.index.partial").exists()
    for name in ("packed", "ids", "labels", "fc7"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(full, name))
    assert resumed.paths == full.paths

    # shards 1/3..3/3, merged, give the one-go index; fc7 float16 halves fc7
    for i in (1, 2, 3):
        assert search_tool("index", *model, *src, "--shard", f"{i}/3",
                           "--out", str(t / f"s{i}.index")) == 0
    assert search_tool("merge", *(str(t / f"s{i}.index") for i in (2, 3, 1)),
                       "--out", str(t / "merged.index")) == 0
    merged = load_index(t / "merged.index")
    for name in ("packed", "ids", "labels", "fc7"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(full, name))
    assert merged.paths == full.paths
    assert search_tool("index", *model, *src, "--fc7", "float16", "--out",
                       str(t / "half.index")) == 0
    assert load_index(t / "half.index").fc7.dtype == np.float16

    # unreadable images are skipped and listed; --strict stops at the first
    (t / "imgs" / "cats" / "broken.png").write_bytes(b"not a png")
    capsys.readouterr()
    assert search_tool("index", *model, *src, "--out", str(t / "skip.index")) == 0
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "1 unreadable image(s) skipped" in captured.out
    skip = load_index(t / "skip.index")
    assert skip.ntotal == 12 and skip.build["skipped"] == 1
    assert search_tool("index", *model, *src, "--strict", "--out", str(t / "strict.index")) == 2
    assert "broken.png" in capsys.readouterr().err and not (t / "strict.index").exists()
    (t / "broken.txt").write_text("imgs/cats/broken.png\n")
    assert search_tool("index", *model, "--list", str(t / "broken.txt"), "--out",
                       str(t / "none.index")) == 2
    assert "none of the 1 images could be read" in capsys.readouterr().err
    assert not list(t.glob("none.index*"))

    # --fine says when its pool is the fallback (text and JSON); --json prints one document
    query = str(t / "imgs" / "dogs" / "3.png")
    capsys.readouterr()
    assert search_tool("query", *ALLOW, "--index", str(t / "full.index"), query, "--k", "12",
                       "--fine", "--radius", "0", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc[0]["image"] == query and doc[0]["fallback"] is True
    assert len(doc[0]["results"]) == 12
    assert set(doc[0]["results"][0]) == {"id", "path", "label", "distance", "fc7_distance"}
    png = t / "q.png"
    assert search_tool("query", *ALLOW, "--index", str(t / "full.index"), query, "--k", "12",
                       "--fine", "--radius", "0", "--montage", str(png)) == 0
    assert "fallback: fewer than 12 items" in capsys.readouterr().out
    # the montage is not overwritten without --force
    assert search_tool("query", *ALLOW, "--index", str(t / "full.index"), query, "--montage",
                       str(png)) == 2
    assert "already exists; use --force" in capsys.readouterr().err
    assert search_tool("query", *ALLOW, "--index", str(t / "full.index"), query, "--montage",
                       str(png),
                       "--force") == 0


def test_query_montage_captions_name_the_classes(search_tool, toy_images, monkeypatch):
    from dlbhc_caffe import montage
    from dlbhc_caffe.search import workflow

    t = toy_images
    model = ["--deploy", str(t / "deploy.prototxt"), "--model", str(t / "toy.caffemodel"),
             "--allow-missing-weights", "--mean-value", "100", "--resize", "8", "--quiet"]
    assert search_tool("index", *model, "--folder", str(t / "imgs"), "--out",
                       str(t / "toy.index")) == 0
    index = load_index(t / "toy.index")
    assert index.meta["source"]["classes"] == ["cats", "dogs"]      # recorded at indexing
    drawn = []
    monkeypatch.setattr(montage, "write_montage", lambda out, rows, title: drawn.append(rows))
    assert search_tool("query", *ALLOW, "--index", str(t / "toy.index"),
                       str(t / "imgs" / "dogs" / "3.png"), "--k", "4", "--montage",
                       str(t / "m.png")) == 0
    captions = [tile.caption.split("\n")[-1] for tile in drawn[0][0][1]]
    assert captions == ["dogs"] * 4           # its top 4 are dogs (label 1), as above
    # an index that records no names: the folder it was built from still names them
    del index.meta["source"]["classes"]
    assert workflow.index_class_names(index) == ["cats", "dogs"]
    index.meta["source"] = {"list": "x.txt"}
    assert workflow.index_class_names(index) is None
