"""Search at scale: growable index, streaming resumable index files, shards and their merge,
fc7 storage, multi-index hashing, and the one result order of every search API."""
import os

import numpy as np
import pytest

from dlbhc_caffe import hamming
from dlbhc_caffe.search import HashIndex, MultiIndexHash, load_index
from dlbhc_caffe.search.builder import IndexWriter, merge, parse_shard, shard_range


def clustered(rng, n, bits, centres=10, flips=3):
    """Codes like real ones: class centres with a few bits flipped each."""
    centre = rng.integers(0, 2, (centres, bits), dtype=np.uint8)
    codes = centre[rng.integers(0, centres, n)]
    for _ in range(flips):
        codes[np.arange(n), rng.integers(0, bits, n)] ^= 1
    return codes


def rows_of(rng, n, bits=48, dim=6, start=0):
    return (clustered(rng, n, bits), rng.normal(size=(n, dim)).astype(np.float32),
            np.arange(start, start + n), [f"img/{i}.jpg" for i in range(start, start + n)],
            rng.integers(0, 10, n))


def assert_same_index(a, b):
    for name in ("packed", "ids", "labels", "fc7"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.paths == b.paths and a.fc7_dtype == b.fc7_dtype and a.bits == b.bits


# ---------------------------------------------------------------- one order, one check

def test_every_search_returns_distances_then_ids():
    rng = np.random.default_rng(0)
    codes = clustered(rng, 300, 12)
    index = HashIndex(12)
    index.add(codes)
    q = codes[:4]
    d, ids = hamming.rank(q, codes, 5)
    assert d.dtype == np.uint16 and ids.dtype == np.int64
    d2, ids2 = index.search(q, 5)
    d3, rows = index.rank(q, 5)
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_array_equal(ids, rows)
    np.testing.assert_array_equal(d, d2)
    np.testing.assert_array_equal(d, d3)
    lims, d, ids = hamming.radius(q, codes, 2)
    lims2, d2, ids2 = index.range_search(q, 2)
    assert d.dtype == np.uint16 and ids.dtype == np.int64
    for a, b in zip((lims, d, ids), (lims2, d2, ids2)):
        np.testing.assert_array_equal(a, b)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="non-negative integer"):
            index.range_search(q, bad)
    with pytest.raises(ValueError, match=r"k=301 is larger than the index \(300 items\)"):
        index.search(q, 301)


# ---------------------------------------------------------------- growth and fc7 storage

def test_many_small_adds_equal_one_add_and_fc7_float16(tmp_path):
    rng = np.random.default_rng(1)
    codes, fc7, ids, paths, labels = rows_of(rng, 500)
    one = HashIndex(48)
    one.add(codes, fc7=fc7, ids=ids, paths=paths, labels=labels)
    many = HashIndex(48)
    for a in range(0, 500, 7):
        many.add(codes[a:a + 7], fc7=fc7[a:a + 7], ids=ids[a:a + 7], paths=paths[a:a + 7],
                 labels=labels[a:a + 7])
    assert_same_index(one, many)
    half = HashIndex(48, fc7_dtype="float16")
    half.add(codes, fc7=fc7, ids=ids, paths=paths, labels=labels)
    loaded = load_index(half.save(tmp_path / "half.index"))
    assert loaded.fc7.dtype == np.float16 and loaded.fc7_dtype == "float16"
    np.testing.assert_array_equal(loaded.fc7, fc7.astype(np.float16))
    assert os.path.getsize(tmp_path / "half.index") < 500 * 6 * 4 + 500 * 40
    loaded.add(codes[:3], fc7=fc7[:3], ids=[1000, 1001, 1002], paths=["x", "y", "z"],
               labels=[1, 2, 3])   # a memory-mapped index still takes rows (copied once)
    assert loaded.ntotal == 503 and loaded.paths[-1] == "z"


# ---------------------------------------------------------------- streaming, resume, merge

def _stream(path, data, capacity, upto=None, build=None, fc7_dtype="float32"):
    codes, fc7, ids, paths, labels = data
    writer = IndexWriter.create(path, 48, capacity, sum(len(p) for p in paths), fc7.shape[1],
                                fc7_dtype, True, {"model": "toy"}, build)
    stop = len(ids) if upto is None else upto
    for a in range(0, stop, 64):
        b = min(a + 64, stop)
        writer.append(codes[a:b], ids[a:b], paths[a:b], labels[a:b], fc7[a:b], done=b)
    return writer


def test_streaming_index_equals_the_saved_index_and_resumes_after_a_kill(tmp_path):
    rng = np.random.default_rng(2)
    data = rows_of(rng, 1000)
    codes, fc7, ids, paths, labels = data
    whole = HashIndex(48, meta={"model": "toy"})
    whole.add(codes, fc7=fc7, ids=ids, paths=paths, labels=labels)
    writer = _stream(tmp_path / "s.index", data, 1000, upto=448)
    # killed here: the rows so far are a valid index
    os.close(writer.fd)
    cut = load_index(tmp_path / "s.index")
    assert cut.ntotal == 448 and cut.build == {"done": 448, "skipped": 0, "complete": False}
    np.testing.assert_array_equal(cut.packed, whole.packed[:448])
    assert cut.paths == paths[:448]
    resumed = IndexWriter.resume(tmp_path / "s.index")
    start = resumed.build["done"]
    for a in range(start, 1000, 100):
        b = min(a + 100, 1000)
        resumed.append(codes[a:b], ids[a:b], paths[a:b], labels[a:b], fc7[a:b], done=b)
    resumed.finish()
    done = load_index(tmp_path / "s.index")
    assert done.build["complete"]
    assert_same_index(done, whole)
    with pytest.raises(ValueError, match="not an unfinished streaming build"):
        IndexWriter.resume(tmp_path / "s.index")


def test_shards_merge_into_the_one_go_index(tmp_path):
    rng = np.random.default_rng(3)
    total = 1003
    codes, fc7, ids, paths, labels = rows_of(rng, total)
    one = _stream(tmp_path / "one.index", (codes, fc7, ids, paths, labels), total,
                  build={"list": "L", "total": total})
    one.finish()
    shard_files = []
    for i in (3, 1, 4, 2):   # given in any order: merged by shard number
        a, b = shard_range(total, (i, 4))
        part = (codes[a:b], fc7[a:b], ids[a:b], paths[a:b], labels[a:b])
        w = _stream(tmp_path / f"s{i}.index", part, b - a,
                    build={"list": "L", "total": total, "shard": [i, 4]})
        w.finish()
        shard_files.append(tmp_path / f"s{i}.index")
    merged = load_index(merge(shard_files, tmp_path / "merged.index", rows_per_step=100))
    assert_same_index(merged, load_index(tmp_path / "one.index"))
    assert merged.build["complete"] and merged.build["total"] == total
    with pytest.raises(ValueError, match="give each of 1/4 .. 4/4 once"):
        merge(shard_files[:3], tmp_path / "bad.index")
    assert parse_shard("2/4") == (2, 4) and shard_range(10, (4, 4)) == (7, 10)
    for bad in ("0/4", "5/4", "x"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


# ---------------------------------------------------------------- multi-index hashing

@pytest.mark.parametrize("bits", [12, 48, 64, 100])
def test_multi_index_hashing_equals_the_linear_scan(bits):
    rng = np.random.default_rng(bits)
    for codes in (clustered(rng, 5000, bits, centres=20), rng.integers(0, 2, (5000, bits))):
        packed = hamming.pack_codes(codes)
        queries = np.concatenate([packed[:40], hamming.pack_codes(
            rng.integers(0, 2, (10, bits)))])
        for r in (0, 1, 2, 3):
            tables = MultiIndexHash(packed, bits, r)
            for got, want in zip(tables.radius(queries, r), hamming.radius(queries, packed, r)):
                np.testing.assert_array_equal(got, want, err_msg=f"bits={bits} r={r}")


def test_index_radius_search_uses_the_tables_with_the_same_answer():
    rng = np.random.default_rng(9)
    index = HashIndex(48)
    index.add(clustered(rng, 4000, 48), ids=np.arange(4000) * 3 + 5)
    q = index.packed[:25]
    scan = index.range_search(q, 2)
    index.radius_tables(2)
    for got, want in zip(index.range_search(q, 2), scan):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(index.within(q, 2, method="mih"), index.within(q, 2, method="scan")):
        np.testing.assert_array_equal(got, want)
