"""dlbhc_caffe.hamming against its numpy reference: packing, distances, ranking, radius search.

The ranking must equal ``np.argsort(distances, kind="stable")`` exactly, order included, for
every code length, both kernels (AVX-512 and scalar), both candidate strategies (small databases:
adaptive scan; from 8192 codes: sampled bound), and any number of threads.
"""
import doctest

import numpy as np
import pytest
from conftest import unavailable

from dlbhc_caffe import hamming
from dlbhc_caffe.hamming import _hamming, reference

BITS = [12, 48, 64, 128, 50]
KERNELS = ["avx512", "scalar"]


@pytest.fixture(params=KERNELS)
def kernel(request):
    """Run the test with the AVX-512 kernels (where the CPU has them) and with the scalar ones."""
    before = _hamming.simd()
    if request.param == "avx512" and not _hamming.simd(True):
        unavailable("this CPU lacks AVX-512 VPOPCNTDQ", hardware=True)
    if request.param == "scalar":
        _hamming.simd(False)
    yield request.param
    _hamming.simd(before)


def tied_codes(rng, n, bits, distinct=None):
    """Random 0/1 codes; with `distinct`, drawn from that many patterns (many equal distances)."""
    if distinct is None:
        return rng.integers(0, 2, (n, bits), dtype=np.uint8)
    patterns = rng.integers(0, 2, (distinct, bits), dtype=np.uint8)
    return patterns[rng.integers(0, distinct, n)]


# ------------------------------------------------------------------------------------------------
# packing

@pytest.mark.parametrize("bits", BITS + [1, 63, 65, 200])
def test_pack_matches_reference_and_little_endian_bit_order(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2, (37, bits), dtype=np.uint8)
    packed = hamming.pack_codes(codes)
    assert packed.dtype == np.uint64 and packed.shape == (37, (bits + 63) // 64)
    np.testing.assert_array_equal(packed, reference.pack_codes(codes))
    # bit j -> word j // 64, bit j % 64
    for j in (0, bits // 2, bits - 1):
        assert np.array_equal((packed[:, j // 64] >> np.uint64(j % 64)) & np.uint64(1),
                              codes[:, j].astype(np.uint64))
    np.testing.assert_array_equal(hamming.unpack_codes(packed, bits), codes)
    np.testing.assert_array_equal(reference.unpack_codes(packed, bits), codes)


def test_pack_accepts_bool_int_and_float_zero_one():
    codes = np.array([[1, 0, 1], [0, 1, 1]])
    expected = [[5], [6]]
    assert hamming.pack_codes(codes.astype(bool)).tolist() == expected
    assert hamming.pack_codes(codes.astype(np.int64)).tolist() == expected
    assert hamming.pack_codes(codes.astype(np.float32)).tolist() == expected
    assert hamming.pack_codes(np.zeros((0, 48), np.uint8)).shape == (0, 1)


@pytest.mark.parametrize("bad, message", [
    (np.array([[0, 2, 1]]), "only 0 and 1"),
    (np.array([[0.5, 1.0]]), "only 0 and 1"),
    (np.array([[-1, 0]]), "only 0 and 1"),
    (np.array([0, 1, 1]), "reshape"),
    (np.zeros((2, 0), np.uint8), "0 bits"),
    (np.array([["a", "b"]]), "dtype"),
])
def test_pack_rejects_bad_codes(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        hamming.pack_codes(bad)


# ------------------------------------------------------------------------------------------------
# distances, ranking, radius

@pytest.mark.parametrize("bits", BITS)
def test_distances_match_reference(bits, kernel):
    rng = np.random.default_rng(bits)
    db, q = tied_codes(rng, 1001, bits), tied_codes(rng, 23, bits)
    ours = hamming.hamming_distances(q, db)
    assert ours.dtype == np.uint16 and ours.shape == (23, 1001)
    np.testing.assert_array_equal(ours, reference.hamming_distances(q, db))
    np.testing.assert_array_equal(ours, (q[:, None, :] != db[None, :, :]).sum(axis=2))
    # packed input gives the same
    np.testing.assert_array_equal(
        hamming.hamming_distances(hamming.pack_codes(q), hamming.pack_codes(db)), ours)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n_db, distinct", [(997, 40), (3000, None), (20_000, 300),
                                            (20_000, None)])
def test_rank_equals_stable_argsort_exactly(bits, n_db, distinct, kernel):
    rng = np.random.default_rng(bits * 7 + n_db)
    db = tied_codes(rng, n_db, bits, distinct)
    q = tied_codes(rng, 25, bits, distinct)
    dist = reference.hamming_distances(q, db)
    order = np.argsort(dist, axis=1, kind="stable")
    # many ties, so the order within them counts: most neighbours in the ranking tie
    assert (np.diff(np.sort(dist, axis=1), axis=1) == 0).mean() > 0.5
    for k in sorted({1, 7, 100, 1000, n_db // 2, n_db - 1, n_db} - {n_db + 3}):
        if k > n_db:
            continue
        d, ids = hamming.rank(q, db, k, num_threads=1)  # threads: see test_threads_...
        assert ids.dtype == np.int64 and d.dtype == np.uint16 and ids.shape == (25, k)
        np.testing.assert_array_equal(ids, order[:, :k], err_msg=f"bits={bits} k={k}")
        np.testing.assert_array_equal(d, np.take_along_axis(dist, order[:, :k], axis=1))
    ref_d, ref_ids = reference.rank(q, db, 100)
    d, ids = hamming.rank(q, db, 100, num_threads=1)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(d, ref_d)
    _, whole = hamming.rank(q, db, num_threads=1)  # k=None: the whole database
    np.testing.assert_array_equal(whole, order)


def test_rank_when_the_sampled_bound_is_too_low(kernel):
    """The sample (every n // 1024-th code) sees only exact matches; the rest is far: the bound
    estimated from it holds fewer than k codes and the scan must start again, exactly."""
    rng = np.random.default_rng(5)
    n = 16_384
    q = rng.integers(0, 2, (1, 48), dtype=np.uint8)
    db = np.repeat(1 - q, n, axis=0)
    db[:: n // 1024] = q[0]
    db[5, :3] ^= 1  # near, but off the sample
    db[7777, :10] ^= 1
    for k in (10, 1024, 1025, 1030, 5000):
        d, ids = hamming.rank(q, db, k)
        ref_d, ref_ids = reference.rank(q, db, k)
        np.testing.assert_array_equal(ids, ref_ids, err_msg=f"k={k}")
        np.testing.assert_array_equal(d, ref_d)


@pytest.mark.parametrize("bits", BITS)
def test_radius_matches_reference(bits, kernel):
    rng = np.random.default_rng(bits + 1)
    db, q = tied_codes(rng, 2500, bits, 200), tied_codes(rng, 17, bits, 200)
    for r in (0, 1, 2, bits // 3, bits):
        lims, d, ids = hamming.radius(q, db, r)
        ref_lims, ref_d, ref_ids = reference.radius(q, db, r)
        np.testing.assert_array_equal(lims, ref_lims)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(d, ref_d)
        assert np.all(d <= r)
    lims, _, ids = hamming.radius(q, db, 10**6)  # beyond the code length: everything
    assert np.all(np.diff(lims) == len(db))


def test_threads_give_the_same_results():
    rng = np.random.default_rng(11)
    db, q = tied_codes(rng, 12_000, 48, 500), tied_codes(rng, 203, 48, 500)
    one = hamming.rank(q, db, 300, num_threads=1)
    d_one = hamming.hamming_distances(q, db, num_threads=1)
    r_one = hamming.radius(q, db, 6, num_threads=1)
    for threads in (2, 3):
        many = hamming.rank(q, db, 300, num_threads=threads)
        np.testing.assert_array_equal(many[0], one[0])
        np.testing.assert_array_equal(many[1], one[1])
        np.testing.assert_array_equal(hamming.hamming_distances(q, db, num_threads=threads),
                                      d_one)
        for a, b in zip(hamming.radius(q, db, 6, num_threads=threads), r_one):
            np.testing.assert_array_equal(a, b)


def test_zero_queries_give_empty_results():
    db = np.zeros((5, 12), np.uint8)
    d, ids = hamming.rank(np.zeros((0, 12), np.uint8), db, 3)
    assert ids.shape == (0, 3) and d.shape == (0, 3)
    lims, d, ids = hamming.radius(np.zeros((0, 12), np.uint8), db, 1)
    assert lims.tolist() == [0] and ids.size == 0


# ------------------------------------------------------------------------------------------------
# bad input

def test_wrong_code_length_for_the_database():
    db = np.zeros((10, 50), np.uint8)
    q = np.zeros((2, 48), np.uint8)
    for call in (lambda: hamming.rank(q, db, 5), lambda: hamming.hamming_distances(q, db),
                 lambda: hamming.radius(q, db, 2)):
        with pytest.raises(ValueError, match="48 bits per code but the database has 50"):
            call()
    with pytest.raises(ValueError, match="2 packed word"):
        hamming.rank(hamming.pack_codes(q), np.zeros((10, 2), np.uint64), 5)


def test_empty_database():
    with pytest.raises(ValueError, match="database is empty"):
        hamming.rank(np.zeros((2, 48), np.uint8), np.zeros((0, 48), np.uint8), 1)


def test_k_larger_than_the_database():
    db = np.zeros((10, 48), np.uint8)
    with pytest.raises(ValueError, match=r"k=11 is larger than the database \(10 items\)"):
        hamming.rank(np.zeros((1, 48), np.uint8), db, 11)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            hamming.rank(np.zeros((1, 48), np.uint8), db, bad)


def test_other_bad_arguments():
    db = np.zeros((10, 48), np.uint8)
    q = np.zeros((1, 48), np.uint8)
    with pytest.raises(ValueError, match="non-negative integer"):
        hamming.radius(q, db, -1)
    with pytest.raises(ValueError, match="num_threads"):
        hamming.rank(q, db, 1, num_threads=0)
    with pytest.raises(ValueError, match="reshape"):
        hamming.rank(np.zeros(48, np.uint8), db, 1)
    with pytest.raises(ValueError, match="bits must be an integer in 1..64"):
        hamming.unpack_codes(hamming.pack_codes(q), 65)
    with pytest.raises(TypeError, match="uint64"):
        hamming.unpack_codes(q, 48)


def test_docstring_examples():
    from dlbhc_caffe.hamming import reference as reference_module

    for module in (hamming, reference_module):
        failed, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert tried > 0 and failed == 0, module.__name__


@pytest.mark.parametrize("distinct", [40, None])
def test_one_query_split_across_threads_keeps_the_stable_order(distinct, kernel):
    """Fewer queries than threads: one query's scan is cut into slices, one per thread; the
    ranking must be the single thread's, ties included, for every k and thread count."""
    rng = np.random.default_rng(21)
    n = hamming.SPLIT_MIN + 4321
    db = hamming.pack_codes(tied_codes(rng, n, 48, distinct))
    q = db[rng.integers(0, n, 2)]
    for k in (1, 10, 1000, n // 3 + 5, n):
        d1, i1 = hamming.rank(q, db, k, num_threads=1)
        for threads in (2, 3, 7):
            d, i = hamming.rank(q, db, k, num_threads=threads)
            np.testing.assert_array_equal(i, i1, err_msg=f"k={k} threads={threads}")
            np.testing.assert_array_equal(d, d1)
