"""Training baselines and drift statistics (PSI), numpy only.

A ``Baseline`` freezes a model version's training distribution so that later traffic can be
compared with it on the *same* bins: numeric columns keep quantile bin edges (outer edges
-inf/+inf, duplicate edges of discrete columns removed) and the training share per bin;
low-cardinality columns keep category frequencies plus an ``other`` bucket. Missing values get
their own bucket in both kinds, so a rise in missing inputs shows up as drift.

PSI = sum((a - e) * ln(a / e)) over buckets, with shares floored at ``EPSILON`` so an empty bucket
gives a large but finite term instead of infinity. Categorical columns use the same PSI on their
category buckets, so one threshold (0.1 watch, 0.2 act) reads the same for every feature;
they also get a Jensen-Shannon distance (base 2, 0..1), which stays bounded when a category
appears that training never saw.

Everything is defined on bucket *counts* (:func:`psi_of_counts`, :func:`js_of_counts`), so a job
that counts in Spark on the baseline's edges (batch/monitor.py) uses the same maths as
:func:`psi` on an array. Categories compare by :func:`category_text`, so 0 and 0.0 (an integer
input logged as a double) are the same category.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

FORMAT_VERSION = 1
EPSILON = 1e-4
MAX_CATEGORIES = 20
OTHER = "__other__"


@dataclass(frozen=True)
class Column:
    """One column's training distribution: numeric (edges) or categorical (categories)."""

    kind: str  # "numeric" | "categorical"
    shares: list[float]  # per bucket, then the missing bucket last
    edges: list[float] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)


def _is_categorical(values: np.ndarray) -> bool:
    if values.dtype.kind in "biuOSU":
        if values.dtype.kind in "iu":
            return len(np.unique(values)) <= MAX_CATEGORIES
        return True
    return False


def _missing(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind == "O":
        return np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in values], bool)
    return np.zeros(len(values), bool)


def category_text(value) -> str:
    """The text a category is stored and compared as: integral numbers without ``.0``."""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def counts(column: Column, values) -> np.ndarray:
    """Bucket counts of ``values`` on ``column``'s buckets (missing bucket last)."""
    values = np.asarray(values)
    missing = _missing(values)
    present = values[~missing]
    if column.kind == "numeric":
        inner = np.asarray(column.edges[1:-1], float)
        idx = np.searchsorted(inner, present.astype(float), side="right")
        body = np.bincount(idx, minlength=len(column.edges) - 1)
    else:
        lookup = {c: i for i, c in enumerate(column.categories)}
        other = len(column.categories)
        idx = np.fromiter((lookup.get(category_text(v), other) for v in present), int, len(present))
        body = np.bincount(idx, minlength=other + 1)
    return np.append(body, missing.sum()).astype(float)


def fit_column(values, bins: int = 10) -> Column:
    """Baseline of one training column."""
    values = np.asarray(values)
    present = values[~_missing(values)]
    if _is_categorical(values):
        cats, n = np.unique(np.array([category_text(v) for v in present], dtype=object).astype(str),
                            return_counts=True)
        top = cats[np.argsort(-n, kind="stable")][:MAX_CATEGORIES]
        column = Column("categorical", [], categories=sorted(top.tolist()))
    elif len(present) == 0:  # all missing in training: one bucket for any value, one for missing
        column = Column("numeric", [], edges=[-np.inf, np.inf])
    else:
        qs = np.quantile(present.astype(float), np.linspace(0, 1, bins + 1)[1:-1])
        edges = [-np.inf, *np.unique(qs).tolist(), np.inf]
        column = Column("numeric", [], edges=edges)
    c = counts(column, values)
    return Column(column.kind, (c / max(c.sum(), 1)).tolist(), column.edges, column.categories)


def psi_of_counts(column: Column, bucket_counts) -> float:
    """PSI of observed per-bucket counts (missing bucket last) against the baseline's shares."""
    c = np.asarray(bucket_counts, float)
    actual = np.maximum(c / max(c.sum(), 1), EPSILON)
    expected = np.maximum(np.asarray(column.shares), EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def js_of_counts(column: Column, bucket_counts) -> float:
    """Jensen-Shannon distance (base 2: 0 same, 1 disjoint) between the baseline's shares and
    observed per-bucket counts; 0 when nothing was observed."""
    c = np.asarray(bucket_counts, float)
    if c.sum() == 0:
        return 0.0
    p, q = np.asarray(column.shares, float), c / c.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(np.sqrt(max((kl(p) + kl(q)) / 2, 0.0)))


def psi(column: Column, values) -> float:
    """Population stability index of ``values`` against the baseline column."""
    return psi_of_counts(column, counts(column, values))


@dataclass(frozen=True)
class Baseline:
    columns: dict[str, Column]

    @classmethod
    def fit(cls, columns: dict, bins: int = 10) -> "Baseline":
        return cls({name: fit_column(v, bins) for name, v in columns.items()})

    def to_json(self) -> str:
        def enc(c: Column) -> dict:
            edges = [None if not np.isfinite(e) else e for e in c.edges]
            return {"kind": c.kind, "shares": c.shares, "edges": edges, "categories": c.categories}

        return json.dumps({"format": FORMAT_VERSION,
                           "columns": {k: enc(c) for k, c in self.columns.items()}})

    @classmethod
    def from_json(cls, text: str) -> "Baseline":
        doc = json.loads(text)
        if doc.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported baseline format {doc.get('format')!r}")
        out = {}
        for name, c in doc["columns"].items():
            e = c["edges"]
            edges = [
                (-np.inf if i == 0 else np.inf) if v is None else v for i, v in enumerate(e)]
            out[name] = Column(c["kind"], c["shares"], edges, c["categories"])
        return cls(out)


def drift_report(baseline: Baseline, columns) -> dict:
    """``{feature: {psi, kind, n}}`` for every baseline column present in ``columns``."""
    return {name: {"psi": psi(col, columns[name]), "kind": col.kind, "n": len(columns[name])}
            for name, col in baseline.columns.items() if name in columns}
