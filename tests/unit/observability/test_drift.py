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
