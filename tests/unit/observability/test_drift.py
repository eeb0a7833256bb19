import numpy as np

from observability.drift import Baseline, psi


def test_psi_matches_hand_computation():
    b = Baseline.fit({"x": np.arange(100.0)}, bins=2)
    col = b.columns["x"]
    got = psi(col, np.r_[np.zeros(75), np.full(25, 99.0)])
    e, a = np.array([0.5, 0.5]), np.array([0.75, 0.25])
    assert abs(got - np.sum((a - e) * np.log(a / e))) < 1e-9


def test_identical_near_zero_shift_large():
    rng = np.random.default_rng(0)
    b = Baseline.fit({"x": rng.normal(size=50_000)})
    assert psi(b.columns["x"], rng.normal(size=50_000)) < 0.01
    assert psi(b.columns["x"], rng.normal(1.0, size=50_000)) > 0.2


def test_categorical_nan_discrete_and_round_trip():
    b = Baseline.fit({"c": np.array(["a", "b"] * 50), "d": np.array([1.0] * 90 + [2.0] * 10),
                      "m": np.r_[np.ones(50), np.full(50, np.nan)]})
    assert psi(b.columns["c"], np.array(["a"] * 90 + ["z"] * 10)) > 0.2
    assert len(b.columns["d"].edges) < 11
    assert psi(b.columns["m"], np.ones(100)) > 0.2
    again = Baseline.from_json(b.to_json())
    assert again == b


def test_all_missing_numeric_column_fits_and_flags_values():
    from observability.drift import counts

    b = Baseline.fit({"m": np.full(10, np.nan)})
    col = b.columns["m"]
    assert col.kind == "numeric" and col.shares == [0.0, 1.0]
    assert counts(col, np.array([1.0, np.nan])).tolist() == [1.0, 1.0]
    assert psi(col, np.full(10, np.nan)) < 1e-9
    assert psi(col, np.ones(10)) > 0.2
    assert Baseline.from_json(b.to_json()) == b


def test_integer_categories_match_their_double_form():
    b = Baseline.fit({"c": np.array([0, 1, 2] * 30)})
    assert b.columns["c"].categories == ["0", "1", "2"]
    assert psi(b.columns["c"], np.array([0.0, 1.0, 2.0] * 30)) < 1e-9


def test_counts_maths_against_numpy_and_scipy():
    from scipy.spatial.distance import jensenshannon

    from observability.drift import EPSILON, counts, js_of_counts, psi_of_counts

    rng = np.random.default_rng(1)
    train, live = rng.normal(size=5000), rng.normal(0.5, 1.2, size=3000)
    col = Baseline.fit({"x": train}).columns["x"]
    hist, _ = np.histogram(live, bins=np.asarray(col.edges))  # right-closed last bin: no ties here
    assert counts(col, live)[:-1].tolist() == hist.tolist()
    a = np.maximum(np.r_[hist, 0] / len(live), EPSILON)
    e = np.maximum(np.asarray(col.shares), EPSILON)
    assert abs(psi_of_counts(col, np.r_[hist, 0]) - np.sum((a - e) * np.log(a / e))) < 1e-12
    cat = Baseline.fit({"c": np.array(["a"] * 60 + ["b"] * 40)}).columns["c"]
    seen = counts(cat, np.array(["a"] * 20 + ["b"] * 50 + ["z"] * 30))
    assert abs(js_of_counts(cat, seen) - jensenshannon(cat.shares, seen / seen.sum(), base=2)) < 1e-9
    assert js_of_counts(cat, np.zeros(4)) == 0.0
