"""``mlgate retrain``: run a model's training entry point, record why and from what, and point
a non-serving alias (``challenger``) at the new version. Promotion stays a human decision
(``mlgate rollout approve`` / ``promote``): this never moves the serving alias.

The entry point contract (declared per model in the feature repository)::

    training:
      entry_point: package.module:function
      <any other key>: <value>            # passed to the function as a keyword argument

is called as ``function(settings, alias=ALIAS, spark=SPARK, **other_keys)``: it builds its own
point-in-time training set (``spark`` is a running session it may use), registers the trained
model under the model's name, and returns something with a ``version`` (an attribute or a
mapping key): the registered version.

Exit codes with ``--if-drift``: 0 after training, 0 when the latest drift status says not
drifted (nothing to do), 3 when there is no drift status at all (run ``mlgate monitor`` first):
a scheduler can tell "healthy" from "never monitored".
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from serving import lineage
from serving.errors import CommandFailed, UsageError
from serving.registry import CHAMPION_ALIAS

NO_STATUS_EXIT = 3
TOP_DRIFTED = 5
"""Columns recorded in the drift tag: the most drifted ones."""


@dataclass(frozen=True)
class TrainingJob:
    model: str
    function: Callable[..., Any]
    arguments: dict[str, Any]
    serving_alias: str
    feature_views: dict[str, str]
    """The repository's views the model's entities have, by name: their schema versions."""
    views: tuple[Any, ...] = field(repr=False, default=())


@dataclass(frozen=True)
class Decision:
    train: bool
    trigger: str
    reason: str
    drift: dict[str, Any] | None = None


def plan(repo, model: str, alias: str) -> TrainingJob:
    """The model's entry point, imported and checked, before any training (UsageError)."""
    entry = repo.models.get(model)
    if entry is None:
        raise UsageError(f"no model {model!r} in the feature repository "
                         f"(models: {', '.join(sorted(repo.models)) or 'none'})")
    serving_alias = (entry.serving or {}).get("alias") or CHAMPION_ALIAS
    if alias in (serving_alias, CHAMPION_ALIAS):
        raise UsageError(f"--alias {alias}: retrain never moves the serving alias; train into a challenger "
                         "and promote it with `mlgate rollout approve` then `mlgate rollout promote`")
    arguments = dict(entry.training or {})
    target = arguments.pop("entry_point", None)
    if not target:
        raise UsageError(f"model {model!r} declares no training entry point: add "
                         "`training: {entry_point: package.module:function}` to it in the feature repository")
    reserved = {"settings", "alias", "spark"} & set(arguments)
    if reserved:
        raise UsageError(f"model {model!r}: training argument(s) {sorted(reserved)} are set by mlgate retrain")
    function = resolve(target, repo.root)
    views = model_views(repo, entry)
    return TrainingJob(model, function, arguments, serving_alias, {v.name: v.version for v in views}, views)


def model_views(repo, entry) -> tuple:
    """The views of the model's entities (every view for a model that declares none): what its
    lineage records, without loading its signature."""
    entities = entry.entities if entry is not None else ()
    return tuple(v for v in repo.views.values() if not entities or v.entity.name in entities)


def resolve(target: str, root: Path | None = None) -> Callable[..., Any]:
    """``module:function`` imported (the repository folder on ``sys.path``, as for Python
    transformations)."""
    module_name, sep, name = str(target).partition(":")
    if not sep or not module_name or not name.isidentifier():
        raise UsageError(f"training entry point {target!r}: expected module:function")
    if root is not None and str(root) not in sys.path:
        sys.path.append(str(root))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"training entry point {target!r}: cannot import {module_name}: {exc}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UsageError(f"training entry point {target!r}: {module_name} has no function {name}")
    return function


def decide(status: Mapping[str, Any] | None, if_drift: bool) -> Decision:
    """Whether to train, from the model's latest drift status (``serving.drift_status``)."""
    if not if_drift:
        return Decision(True, "manual", "asked to")
    if status is None:
        return Decision(False, "drift", "no drift status yet: run `mlgate monitor --model NAME` first")
    figures = drift_figures(status)
    if not status.get("drifted"):
        top = ", ".join(f"{c} {p:.3f}" for c, p in figures["psi"].items()) or "no columns"
        return Decision(False, "drift", f"not drifted as of v{status.get('version')}'s latest check "
                                        f"(threshold {status.get('threshold')}; highest PSI: {top})", figures)
    return Decision(True, "drift", "drifted", figures)


def drift_figures(status: Mapping[str, Any], top: int = TOP_DRIFTED) -> dict[str, Any]:
    """The drift tag's value: the columns with the highest PSI, and which check found them."""
    features = status.get("features") or {}
    ranked = sorted(((c, float(f.get("psi", 0.0))) for c, f in features.items()), key=lambda cp: -cp[1])
    return {"version": status.get("version"), "computed_at": status.get("computed_at"),
            "threshold": status.get("threshold"), "psi": {c: round(p, 4) for c, p in ranked[:top]}}


def data_snapshot(repo, views, offline_dir: Path | None = None) -> dict[str, Any]:
    """What the training set was built from, cheaply: each source's path and last modification,
    and each view's latest offline table (as of), when there is one."""
    sources: dict[str, Any] = {}
    tables: dict[str, str] = {}
    for view in views:
        name = view.spec.get("source")
        if name and name not in sources:
            path = repo.source(name).get("parquet")
            sources[name] = {"path": path, "modified": _modified(path)}
        if offline_dir is not None:
            stamps = sorted(p.name.split("=", 1)[1] for p in (offline_dir / view.name / f"v{view.version}").glob("as_of=*")
                            if (p / "_SUCCESS").exists())
            if stamps:
                tables[view.name] = stamps[-1]
    return {"sources": sources, "offline_tables": tables}


def _modified(path: str | None) -> str | None:
    if not path or "://" in path or not Path(path).exists():
        return None
    p = Path(path)
    stamp = max((f.stat().st_mtime for f in p.rglob("*") if f.is_file()), default=p.stat().st_mtime) \
        if p.is_dir() else p.stat().st_mtime
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def alias_version(client, model: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model, alias).version)
    except MlflowException:
        return None


@dataclass(frozen=True)
class Retrained:
    model: str
    version: str
    alias: str
    parent_version: str | None
    tags: dict[str, str]


def run(settings, repo, job: TrainingJob, decision: Decision, alias: str, spark, client) -> Retrained:
    """Train through the entry point, tag the new version, point ``alias`` at it."""
    parent = alias_version(client, job.model, job.serving_alias)
    result = job.function(settings, alias=alias, spark=spark, **job.arguments)
    version = result.get("version") if isinstance(result, Mapping) else getattr(result, "version", None)
    if version is None or not str(version).isdigit():
        raise CommandFailed(f"{job.model}'s training entry point returned {type(result).__name__}, not a result "
                            "with the registered version (an attribute or key `version`)")
    version = str(version)
    if alias_version(client, job.model, job.serving_alias) != parent:  # the entry point moved it: undo
        if parent is not None:
            client.set_registered_model_alias(job.model, job.serving_alias, parent)
        raise CommandFailed(f"{job.model}'s training entry point moved @{job.serving_alias}; put back on "
                            f"v{parent} (retrain trains challengers; promotion needs approval)")
    values = lineage.tags(decision.trigger, feature_views=job.feature_views, parent_version=parent,
                          data_snapshot=data_snapshot(repo, job.views, Path(settings.offline_dir)),
                          drift=decision.drift if decision.trigger == "drift" else None)
    for key, value in values.items():
        client.set_model_version_tag(job.model, version, key, value)
    client.set_registered_model_alias(job.model, alias, version)
    return Retrained(job.model, version, alias, parent, values)


def training_tags(settings, repo, model: str, client=None) -> dict[str, str]:
    """The lineage tags of an ordinary training (not ``mlgate retrain``), taken before it starts:
    trigger ``initial`` for a model's first serving version, else ``manual``."""
    from mlflow import MlflowClient

    entry = repo.models.get(model)
    serving_alias = ((entry.serving if entry else None) or {}).get("alias") or CHAMPION_ALIAS
    views = model_views(repo, entry)
    client = client or MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    try:
        parent = alias_version(client, model, serving_alias)
    except Exception:  # a registry that does not know the model yet: a first training
        parent = None
    return lineage.tags("manual" if parent else "initial", feature_views={v.name: v.version for v in views},
                        data_snapshot=data_snapshot(repo, views, Path(settings.offline_dir)), parent_version=parent)
