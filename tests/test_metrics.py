"""dlbhc_caffe.metrics against the original's numbers and against a literal port of precision.m."""
import doctest

import numpy as np
import pytest

from dlbhc_caffe import codes, metrics, plots
from dlbhc_caffe.hamming import reference


def precision_m(db_labels, db_rows, q_labels, q_rows, top_k, mode="hamming"):
    """precision.m, line by line: for each query, pdist2 + MATLAB's (stable) sort, then the
    top-k loop. Returns (mAP, precision@1..K, AP per query)."""
    db_labels, q_labels = np.asarray(db_labels), np.asarray(q_labels)
    ns = np.arange(1, top_k + 1)
    precision_sum = np.zeros(top_k)
    ap = np.zeros(len(q_labels))
    for i in range(len(q_labels)):
        if mode == "hamming":
            similarity = (db_rows != q_rows[i]).sum(axis=1)
        else:
            similarity = np.sqrt(((db_rows.astype(np.float64) - q_rows[i]) ** 2).sum(axis=1))
        order = np.argsort(similarity, kind="stable")
        buffer_yes = (db_labels[order[:top_k]] == q_labels[i]).astype(np.float64)
        p = np.cumsum(buffer_yes) / ns
        ap[i] = 0.0 if buffer_yes.sum() == 0 else (p * buffer_yes).sum() / buffer_yes.sum()
        precision_sum += p
    return ap.mean(), precision_sum / len(q_labels), ap


def random_set(rng, n, bits, classes, distinct=None):
    labels = rng.integers(0, classes, n)
    if distinct is None:
        return rng.integers(0, 2, (n, bits), dtype=np.uint8), labels
    patterns = rng.integers(0, 2, (distinct, bits), dtype=np.uint8)
    return patterns[rng.integers(0, distinct, n)], labels


@pytest.fixture(scope="module")
def released48(fixtures_dir):
    folder = fixtures_dir / "released48"
    database, database_labels = codes.load_set(folder / "binary-train.mat",
                                               folder / "train-label.txt")
    queries, query_labels = codes.load_set(folder / "binary-test.mat", folder / "test-label.txt")
    return folder, database, database_labels, queries, query_labels


# ------------------------------------------------------------------------------------------------
# the original's numbers

def test_released48_map_and_precision_at_k(released48):
    folder, database, database_labels, queries, query_labels = released48
    assert database.shape == (50_000, 48) and queries.shape == (10_000, 48)
    result = metrics.evaluate(database, database_labels, queries, query_labels, full=False)
    expected_map = float(np.loadtxt(folder / "map.txt"))
    expected = np.loadtxt(folder / "precision-at-k.txt")
    assert f"{result.map_at_k:.6f}" == "0.897373"
    assert result.map_at_k == pytest.approx(expected_map, abs=1e-7)  # map.txt has 7 decimals
    np.testing.assert_array_equal(expected[:, 0], np.arange(1, 1001))
    assert result.precision_at_k.shape == (1000,)
    np.testing.assert_allclose(result.precision_at_k, expected[:, 1], rtol=0, atol=1e-6)
    assert metrics.format_summary(result)[0] == "mAP@1000 = 0.897373"


def test_released48_full_metrics_agree_with_a_subset_computed_directly(released48):
    """The whole-ranking mAP and radius figures of a query subset, from explicit distances."""
    _, database, database_labels, queries, query_labels = released48
    rows = np.arange(0, 10_000, 100)  # 100 queries
    result = metrics.evaluate(database, database_labels, queries[rows], query_labels[rows])
    dist = reference.hamming_distances(queries[rows], database)
    relevant = database_labels[None, :] == query_labels[rows, None]
    order = np.argsort(dist, axis=1, kind="stable")
    ranked = np.take_along_axis(relevant, order, axis=1)
    hits = np.cumsum(ranked, axis=1)
    ap_whole = (hits / np.arange(1, len(database) + 1) * ranked).sum(axis=1) / ranked.sum(axis=1)
    assert result.map_whole == pytest.approx(ap_whole.mean(), abs=1e-12)
    inside = dist <= 2
    counts = inside.sum(axis=1)
    precision = np.where(counts > 0, (inside & relevant).sum(axis=1) / np.maximum(counts, 1), 0)
    assert result.precision_within_radius == pytest.approx(precision.mean(), abs=1e-12)
    assert result.empty_within_radius == pytest.approx((counts == 0).mean(), abs=1e-12)


# ------------------------------------------------------------------------------------------------
# against precision.m on random codes (many ties)

@pytest.mark.parametrize("bits, n_db, distinct, top_k", [(12, 2000, None, 100),
                                                         (48, 3000, 60, 500),
                                                         (50, 9000, 300, 1000),
                                                         (64, 9000, None, 9000)])
def test_matches_precision_m(bits, n_db, distinct, top_k):
    rng = np.random.default_rng(bits + n_db)
    database, database_labels = random_set(rng, n_db, bits, 5, distinct)
    queries, query_labels = random_set(rng, 60, bits, 5, distinct)
    expected_map, expected_precision, expected_ap = precision_m(
        database_labels, database, query_labels, queries, top_k)
    result = metrics.evaluate(database, database_labels, queries, query_labels, top_k=top_k)
    assert result.map_at_k == pytest.approx(expected_map, abs=1e-12)
    np.testing.assert_allclose(result.precision_at_k, expected_precision, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.average_precision_at_k, expected_ap, rtol=0, atol=1e-12)
    _, _, ap_whole = precision_m(database_labels, database, query_labels, queries, n_db)
    assert result.map_whole == pytest.approx(ap_whole.mean(), abs=1e-12)
    assert metrics.mean_average_precision(database, database_labels, queries, query_labels,
                                          top_k=top_k) == result.map_at_k
    np.testing.assert_array_equal(
        metrics.precision_at_k(database, database_labels, queries, query_labels, top_k=top_k),
        result.precision_at_k)


def test_ap_is_zero_without_relevant_items_in_the_top_k():
    database = np.array([[0, 0], [0, 1], [1, 1]])
    result = metrics.evaluate(database, [1, 1, 2], [[0, 0], [1, 1]], [2, 3], top_k=2)
    # query 0 (label 2): its only match ranks 3rd; query 1 (label 3) has none at all
    assert result.average_precision_at_k.tolist() == [0.0, 0.0]
    assert result.map_at_k == 0.0
    assert result.map_whole == pytest.approx((1 / 3) / 2)


def test_labels_of_any_kind():
    rng = np.random.default_rng(3)
    database, database_labels = random_set(rng, 500, 16, 4)
    queries, query_labels = random_set(rng, 20, 16, 4)
    names = np.array(["cat", "dog", "emu", "fox"])
    by_number = metrics.evaluate(database, database_labels, queries, query_labels, top_k=50)
    by_name = metrics.evaluate(database, names[database_labels], queries, names[query_labels],
                               top_k=50)
    assert by_name.map_at_k == by_number.map_at_k
    np.testing.assert_array_equal(by_name.precision_at_k, by_number.precision_at_k)


def test_radius_and_precision_recall_curve_from_explicit_distances():
    rng = np.random.default_rng(8)
    database, database_labels = random_set(rng, 3000, 24, 3, distinct=400)
    queries, query_labels = random_set(rng, 40, 24, 3, distinct=400)
    dist = reference.hamming_distances(queries, database)
    relevant = database_labels[None, :] == query_labels[:, None]
    radii, precision, recall = metrics.precision_recall_curve(database, database_labels,
                                                              queries, query_labels)
    assert radii.tolist() == list(range(25))
    for r in (0, 3, 7, 24):
        inside = dist <= r
        n_inside = inside.sum(axis=1)
        hits = (inside & relevant).sum(axis=1)
        p = np.where(n_inside > 0, hits / np.maximum(n_inside, 1), 0.0)
        assert precision[r] == pytest.approx(p.mean(), abs=1e-12)
        assert recall[r] == pytest.approx((hits / relevant.sum(axis=1)).mean(), abs=1e-12)
        within, empty = metrics.precision_within_radius(database, database_labels, queries,
                                                        query_labels, radius=r)
        assert within == pytest.approx(p.mean(), abs=1e-12)
        assert empty == pytest.approx((n_inside == 0).mean(), abs=1e-12)
    assert recall[-1] == 1.0


def test_threads_give_identical_numbers():
    rng = np.random.default_rng(4)
    database, database_labels = random_set(rng, 12_000, 48, 10, distinct=2000)
    queries, query_labels = random_set(rng, 150, 48, 10, distinct=2000)
    one = metrics.evaluate(database, database_labels, queries, query_labels, num_threads=1)
    for threads in (2, 3):
        many = metrics.evaluate(database, database_labels, queries, query_labels,
                                num_threads=threads)
        assert many.to_dict() == one.to_dict()
        np.testing.assert_array_equal(many.average_precision_at_k, one.average_precision_at_k)


# ------------------------------------------------------------------------------------------------
# euclidean mode (precision.m's second mode, for fc7)

def test_euclidean_mode_matches_precision_m_with_ties():
    rng = np.random.default_rng(6)
    # small integer features: exact distances, and repeated rows give exact ties
    rows = rng.integers(0, 4, (50, 16)).astype(np.float32)
    database = rows[rng.integers(0, 50, 1200)]
    queries = rows[rng.integers(0, 50, 30)] + rng.integers(0, 2, (30, 16))
    database_labels = rng.integers(0, 4, 1200)
    query_labels = rng.integers(0, 4, 30)
    for top_k in (100, 1200):
        expected_map, expected_precision, _ = precision_m(
            database_labels, database, query_labels, queries, top_k, mode="euclidean")
        result = metrics.evaluate(database, database_labels, queries, query_labels,
                                  top_k=top_k, distance="euclidean")
        assert result.map_at_k == pytest.approx(expected_map, abs=1e-12)
        np.testing.assert_allclose(result.precision_at_k, expected_precision, atol=1e-12)
        assert result.radius is None and result.pr_curve is None
        quick = metrics.evaluate(database, database_labels, queries, query_labels,
                                 top_k=top_k, distance="euclidean", full=False)  # top k only
        assert quick.map_at_k == pytest.approx(expected_map, abs=1e-12)
        np.testing.assert_allclose(quick.precision_at_k, expected_precision, atol=1e-12)
    _, _, ap_whole = precision_m(database_labels, database, query_labels, queries, 1200,
                                 mode="euclidean")
    assert result.map_whole == pytest.approx(ap_whole.mean(), abs=1e-12)


# ------------------------------------------------------------------------------------------------
# bad input

def test_bad_input_is_refused_with_a_clear_message():
    rng = np.random.default_rng(1)
    database, database_labels = random_set(rng, 100, 48, 3)
    queries, query_labels = random_set(rng, 5, 48, 3)
    with pytest.raises(ValueError, match="database_labels has 99 labels but the database has "
                                         "100 items"):
        metrics.evaluate(database, database_labels[:99], queries, query_labels, top_k=10)
    with pytest.raises(ValueError, match="query_labels has 6 labels but the queries has 5"):
        metrics.evaluate(database, database_labels, queries, np.arange(6), top_k=10)
    with pytest.raises(ValueError, match="queries have 50 bits per code but the database has 48"):
        metrics.evaluate(database, database_labels, np.zeros((5, 50), np.uint8), query_labels,
                         top_k=10)
    with pytest.raises(ValueError, match=r"top_k=1000 is larger than the database \(100 items\)"):
        metrics.evaluate(database, database_labels, queries, query_labels)
    with pytest.raises(ValueError, match="database is empty"):
        metrics.evaluate(np.zeros((0, 48), np.uint8), [], queries, query_labels, top_k=1)
    with pytest.raises(ValueError, match="distance must be one of"):
        metrics.evaluate(database, database_labels, queries, query_labels, top_k=10,
                         distance="cosine")
    with pytest.raises(ValueError, match="queries have 7 dimensions but the database has 4"):
        metrics.evaluate(np.zeros((10, 4)), np.zeros(10), np.zeros((2, 7)), np.zeros(2),
                         top_k=5, distance="euclidean")
    with pytest.raises(ValueError, match="no queries"):
        metrics.evaluate(database, database_labels, np.zeros((0, 48), np.uint8), [], top_k=10)


# ------------------------------------------------------------------------------------------------
# reports

def test_precision_at_k_file_has_the_original_layout(tmp_path, fixtures_dir):
    original = (fixtures_dir / "released48" / "precision-at-k.txt").read_text()
    values = np.loadtxt(fixtures_dir / "released48" / "precision-at-k.txt")[:, 1]
    path = tmp_path / "precision-at-k.txt"
    metrics.write_precision_at_k(path, values)
    assert path.read_text() == original  # MATLAB's save -ascii, byte for byte


def test_save_report_refuses_to_overwrite(tmp_path):
    rng = np.random.default_rng(2)
    database, database_labels = random_set(rng, 300, 12, 3)
    queries, query_labels = random_set(rng, 10, 12, 3)
    result = metrics.evaluate(database, database_labels, queries, query_labels, top_k=100)
    paths = metrics.save_report(result, tmp_path)
    assert sorted(p.rsplit("/", 1)[-1] for p in paths) == sorted(metrics.REPORT_FILES)
    assert np.loadtxt(paths[0]).shape == (100, 2)
    with pytest.raises(FileExistsError, match="already holds precision-at-k.txt"):
        metrics.save_report(result, tmp_path)
    metrics.save_report(result, tmp_path, force=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_baselines_ship_with_the_package(fixtures_dir):
    shipped = plots.load_baselines()
    original = plots.load_baselines(fixtures_dir / "baselines")
    assert sorted(shipped) == ["BRE", "CNNH", "CNNH+", "ITQ", "ITQ-CCA", "KSH", "LSH", "MLH",
                               "SH"]
    for name, (k, precision) in original.items():
        np.testing.assert_array_equal(shipped[name][0], k)
        np.testing.assert_array_equal(shipped[name][1], precision)


def test_docstring_examples():
    for module in (metrics, codes, plots):
        failed, tried = doctest.testmod(module)
        assert tried > 0 and failed == 0, module.__name__
