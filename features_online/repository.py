"""A feature repository the user owns: a folder of YAML, compiled into definitions.

Layout: a project file ``mlgate.yaml`` (``project: <name>``) and any number of ``*.yaml`` files
beside it or below it, each holding some of the four lists ``entities``, ``sources``, ``views``
and ``models`` (the project file may hold them too). YAML rather than Python objects: a platform
team reviews and versions plain data, ``plan`` can diff it, and applying it never runs user code
inside a gateway (the gateway reads the applied document from Redis; only the offline jobs run a
view's Python transformation, if one is declared).

::

    entities:
      - name: account
        keys: [{name: account_id, type: string, max_length: 64}]
    sources:
      - name: events
        parquet: data/events/*.parquet       # or  table: db.events   or  sql: SELECT ... FROM events
        timestamp: ts
    views:
      - name: account_activity
        entity: account
        source: events
        ttl: 2d
        features:
          - {name: events_7d, dtype: long, default: 0, aggregation: {function: count, window: 7d}}
          - {name: spend_30d, aggregation: {function: sum, column: amount, window: 30d}}
    models:
      - name: churn
        entities: [account]
        serving: {alias: champion}

Applying a repository (:func:`apply`) writes one JSON document into the online store's Redis,
where every gateway replica (polling its digest) and every job reads it: adding a view or a model
needs no code change, no image rebuild and no restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from features_online.definitions import (
    SEPARATOR,
    Dtype,
    Entity,
    EntityKey,
    Feature,
    FeatureView,
    KeyType,
    OnMissing,
    split_inputs,
)

PROJECT_FILE = "mlgate.yaml"
NAME = r"^[a-z][a-z0-9_]{0,62}$"
"""Entity, view, source and key names: they appear in Redis keys, Spark columns and model inputs."""
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
PROJECT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
HISTORY = 3
"""Older schema versions of a view kept in the applied document (served until the newest syncs)."""


class RepositoryError(ValueError):
    """The repository is invalid: the message says where and why."""


def parse_duration(value: Any) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``7d``, ``2w`` (or a number of seconds)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration such as 90s, 15m, 1h, 7d or 2w")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeySpec(_Spec):
    name: str = Field(pattern=NAME)
    type: KeyType = "int64"
    max_length: int = Field(128, ge=1, le=1024)
    """Longest ``string`` key, in UTF-8 bytes."""


class EntitySpec(_Spec):
    name: str = Field(pattern=NAME)
    keys: tuple[KeySpec, ...] = Field(min_length=1, max_length=4)
    description: str = ""

    @field_validator("keys")
    @classmethod
    def _distinct(cls, keys: tuple[KeySpec, ...]) -> tuple[KeySpec, ...]:
        if len({k.name for k in keys}) != len(keys):
            raise ValueError("key names must differ")
        return keys


class SourceSpec(_Spec):
    name: str = Field(pattern=NAME)
    parquet: str | None = None
    """A Parquet file, folder or glob; relative paths are relative to the repository folder;
    ``${VAR}`` is taken from the environment of the job."""
    table: str | None = None
    """A table of the Spark catalog."""
    sql: str | None = None
    """A Spark SQL query; other sources are visible in it as temporary views under their names."""
    timestamp: str | None = None
    """The event-time column (timestamp, or epoch seconds); views may name their own."""
    description: str = ""

    @model_validator(mode="after")
    def _one_kind(self) -> SourceSpec:
        if sum(x is not None for x in (self.parquet, self.table, self.sql)) != 1:
            raise ValueError(f"source {self.name!r}: give exactly one of parquet, table or sql")
        return self


AggregationFunction = Literal["count", "sum", "mean", "min", "max", "count_distinct", "seconds_since_last"]


class AggregationSpec(_Spec):
    function: AggregationFunction
    column: str | None = None
    """The column aggregated (``count`` without one counts events)."""
    window: timedelta
    """Events with ``t - window <= event time < t`` count, ``t`` being the time the value is for."""
    where: str | None = None
    """A Spark SQL condition on the event: only matching events count."""

    @field_validator("window", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @field_serializer("window")
    def _text(self, value: timedelta) -> str:
        return format_duration(value)

    @model_validator(mode="after")
    def _column(self) -> AggregationSpec:
        if self.column is None and self.function not in ("count", "seconds_since_last"):
            raise ValueError(f"aggregation {self.function} needs a column")
        if self.window.total_seconds() <= 0:
            raise ValueError("window must be positive")
        return self


class FeatureSpec(_Spec):
    name: str = Field(pattern=NAME)
    dtype: Dtype = "double"
    default: float | int | bool = 0
    """Served for an entity with no value; what an empty aggregation gives."""
    description: str = ""
    aggregation: AggregationSpec | None = None
    """A windowed aggregation over the source's events (the common case: no code)."""
    column: str | None = None
    """Without aggregation: the column of the (transformed) source holding the value; default:
    the feature's name."""

    @model_validator(mode="after")
    def _one_way(self) -> FeatureSpec:
        if self.aggregation is not None and self.column is not None:
            raise ValueError(f"feature {self.name!r}: aggregation or column, not both")
        return self


class TransformationSpec(_Spec):
    sql: str | None = None
    """Spark SQL over the source (visible as ``source``, and every source under its own name)."""
    python: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """``module:function`` taking the source DataFrame and returning one, imported with the
    repository folder on ``sys.path`` (offline jobs only; never in a gateway)."""

    @model_validator(mode="after")
    def _one_kind(self) -> TransformationSpec:
        if (self.sql is None) == (self.python is None):
            raise ValueError("give exactly one of sql or python")
        return self


class ViewSpec(_Spec):
    name: str = Field(pattern=NAME)
    entity: str
    source: str
    timestamp: str | None = None
    """Event-time column; default: the source's."""
    ttl: timedelta
    """Oldest value served online (older ones are stale); in a training set, the oldest row of a
    non-aggregated view joined to a label."""
    online: bool = True
    buckets: int = Field(64, ge=1, le=4096)
    on_missing: OnMissing | None = None
    on_stale: OnMissing | None = None
    description: str = ""
    transformation: TransformationSpec | None = None
    features: tuple[FeatureSpec, ...] = Field(min_length=1, max_length=1000)

    @field_validator("ttl", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @field_serializer("ttl")
    def _text(self, value: timedelta) -> str:
        return format_duration(value)

    @model_validator(mode="after")
    def _consistent(self) -> ViewSpec:
        names = [f.name for f in self.features]
        if len(names) != len(set(names)):
            raise ValueError(f"view {self.name!r}: feature names must differ")
        aggregated = {f.aggregation is not None for f in self.features}
        if len(aggregated) > 1:
            raise ValueError(f"view {self.name!r}: either every feature is an aggregation or none is "
                             "(split it in two views)")
        if self.ttl.total_seconds() <= 0:
            raise ValueError(f"view {self.name!r}: ttl must be positive")
        return self

    @property
    def aggregated(self) -> bool:
        return self.features[0].aggregation is not None


class ModelEntry(_Spec):
    name: str = Field(pattern=MODEL_NAME)
    entities: tuple[str, ...] = ()
    """The entities a request row carries keys of (those of the views the model reads). Needed
    for batch scores to be served before the model has loaded; ``plan`` checks it against the
    model's signature."""
    description: str = ""
    serving: dict[str, Any] = {}
    """Gateway settings of the model (alias, routing, fallback, ...): see serving's
    ``ModelSettings``; checked by ``mlgate plan``."""
    training: dict[str, Any] = {}
    """How to retrain it (``entry_point``: ``module:function``, and its arguments)."""


class RepositorySpec(_Spec):
    project: str = Field(pattern=PROJECT_NAME)
    entities: tuple[EntitySpec, ...] = ()
    sources: tuple[SourceSpec, ...] = ()
    views: tuple[ViewSpec, ...] = ()
    models: tuple[ModelEntry, ...] = ()

    @model_validator(mode="after")
    def _references(self) -> RepositorySpec:
        for kind in ("entities", "sources", "views", "models"):
            names = [item.name for item in getattr(self, kind)]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{kind}: defined twice: {', '.join(duplicates)}")
        owners: dict[str, str] = {}
        for entity in self.entities:
            for key in entity.keys:
                if key.name in owners:
                    raise ValueError(f"key column {key.name!r} belongs to entities {owners[key.name]!r} and "
                                     f"{entity.name!r}: a request row names keys, so each key names one entity")
                owners[key.name] = entity.name
        entities, sources = {e.name for e in self.entities}, {s.name: s for s in self.sources}
        for view in self.views:
            if view.entity not in entities:
                raise ValueError(f"view {view.name!r}: unknown entity {view.entity!r}")
            if view.source not in sources:
                raise ValueError(f"view {view.name!r}: unknown source {view.source!r}")
            if view.aggregated and not (view.timestamp or sources[view.source].timestamp):
                raise ValueError(f"view {view.name!r}: aggregations need the event-time column "
                                 "(timestamp, on the view or its source)")
            if SEPARATOR in view.name:
                raise ValueError(f"view {view.name!r}: names may not contain {SEPARATOR!r}")
        for model in self.models:
            unknown = [e for e in model.entities if e not in entities]
            if unknown:
                raise ValueError(f"model {model.name!r}: unknown entities {unknown}")
        return self


@dataclass(frozen=True)
class Repository:
    """A validated repository, compiled: what jobs and gateways use."""

    spec: RepositorySpec
    root: Path | None
    """The folder it was read from (relative source paths resolve against it)."""
    entities: dict[str, Entity]
    views: dict[str, FeatureView]
    history: dict[str, tuple[FeatureView, ...]] = field(default_factory=dict)
    """Older schema versions of each view, newest first (from earlier applies)."""

    @property
    def project(self) -> str:
        return self.spec.project

    @property
    def models(self) -> dict[str, ModelEntry]:
        return {m.name: m for m in self.spec.models}

    def online_views(self) -> dict[str, tuple[FeatureView, ...]]:
        """Every online view with its older schema versions, newest first: what a reader serves."""
        return {name: (view, *self.history.get(name, ())) for name, view in self.views.items() if view.online}

    def model_entities(self, model: str) -> tuple[Entity, ...]:
        entry = self.models.get(model)
        return tuple(self.entities[e] for e in entry.entities) if entry is not None else ()

    def source(self, name: str) -> dict[str, Any]:
        """A source with ``${VAR}`` in its Parquet path taken from the environment (one repository
        for every environment) and the path made absolute against the repository folder."""
        source = next(s for s in self.spec.sources if s.name == name).model_dump()
        if source["parquet"]:
            source["parquet"] = os.path.expandvars(source["parquet"])
        if source["parquet"] and self.root is not None and not _is_url(source["parquet"]):
            path = Path(source["parquet"])
            source["parquet"] = str(path if path.is_absolute() else (self.root / path).resolve())
        return source

    @property
    def digest(self) -> str:
        return hashlib.sha256(_document_bytes(self)).hexdigest()[:16]


def _is_url(path: str) -> bool:
    return "://" in path


def compile_spec(spec: RepositorySpec, root: Path | None = None,
                 history: Mapping[str, tuple[FeatureView, ...]] | None = None) -> Repository:
    entities = {e.name: Entity(e.name, tuple(EntityKey(k.name, k.type, k.max_length) for k in e.keys),
                               e.description) for e in spec.entities}
    views = {v.name: _view(v, entities[v.entity]) for v in spec.views}
    return Repository(spec, root, entities, views, dict(history or {}))


def _view(spec: ViewSpec, entity: Entity) -> FeatureView:
    features = tuple(Feature(f.name, f.dtype, _typed_default(f), f.description) for f in spec.features)
    offline = {"source": spec.source, "timestamp": spec.timestamp,
               "transformation": spec.transformation.model_dump() if spec.transformation else None,
               "features": [f.model_dump(mode="json") for f in spec.features]}
    return FeatureView(name=spec.name, entity=entity, features=features, ttl=spec.ttl,
                       description=spec.description, buckets=spec.buckets, online=spec.online,
                       on_missing=spec.on_missing, on_stale=spec.on_stale, spec=offline)


def _typed_default(feature: FeatureSpec) -> float | int | bool:
    if feature.dtype == "bool":
        return bool(feature.default)
    if feature.dtype in ("long", "int"):
        if float(feature.default) != int(feature.default):
            raise RepositoryError(f"feature {feature.name!r}: an integer feature needs an integer default")
        return int(feature.default)
    return float(feature.default)


def load(path: Path | str) -> Repository:
    """Read and validate the repository in folder ``path`` (or whose project file is ``path``)."""
    path = Path(path)
    root = path.parent if path.is_file() else path
    project_file = root / PROJECT_FILE
    if not project_file.exists():
        raise RepositoryError(f"{root}: no {PROJECT_FILE} (create one with `mlgate init {root}`)")
    merged: dict[str, list] = {"entities": [], "sources": [], "views": [], "models": []}
    project = None
    files = [project_file] + sorted(p for p in root.rglob("*.y*ml")
                                    if p != project_file and p.suffix in (".yaml", ".yml")
                                    and not any(part.startswith(".") for part in p.relative_to(root).parts))
    for file in files:
        try:
            document = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RepositoryError(f"{file.relative_to(root)}: not valid YAML: {exc}") from None
        if not isinstance(document, dict):
            raise RepositoryError(f"{file.relative_to(root)}: expected a mapping at the top level")
        if file == project_file:
            project = document.pop("project", None)
        unknown = set(document) - set(merged)
        if unknown:
            raise RepositoryError(f"{file.relative_to(root)}: unknown top-level keys {sorted(unknown)} "
                                  f"(expected {', '.join(merged)})")
        for kind, items in document.items():
            if not isinstance(items, list):
                raise RepositoryError(f"{file.relative_to(root)}: {kind} must be a list")
            merged[kind] += items
    return compile_spec(validate({"project": project, **merged}), root.resolve())


def validate(document: Mapping[str, Any]) -> RepositorySpec:
    try:
        spec = RepositorySpec.model_validate(document)
    except ValidationError as exc:
        raise RepositoryError(_describe(exc)) from None
    compile_spec(spec)  # integer defaults and the like
    return spec


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors()[:10]:
        where = ".".join(str(p) for p in error["loc"]) or "repository"
        lines.append(f"{where}: {error['msg']}")
    return "; ".join(lines)


# -- applying: the document every gateway and job reads ------------------------------------------

def repo_key(prefix: str) -> str:
    return f"{prefix}:repo"


def _document_bytes(repo: Repository) -> bytes:
    return json.dumps({"spec": repo.spec.model_dump(mode="json"),
                       "root": str(repo.root) if repo.root else None}, sort_keys=True).encode()


def _history_json(repo: Repository) -> str:
    return json.dumps({name: [_view_json(v) for v in views] for name, views in repo.history.items()},
                      sort_keys=True)


def _view_json(view: FeatureView) -> dict[str, Any]:
    return {"name": view.name, "entity": {"name": view.entity.name,
                                          "keys": [[k.name, k.type, k.max_length] for k in view.entity.keys]},
            "features": [[f.name, f.dtype, f.default] for f in view.features],
            "ttl_s": view.ttl.total_seconds(), "buckets": view.buckets,
            "on_missing": view.on_missing, "on_stale": view.on_stale}


def _view_from_json(data: Mapping[str, Any]) -> FeatureView:
    entity = Entity(data["entity"]["name"], tuple(EntityKey(*k) for k in data["entity"]["keys"]))
    return FeatureView(name=data["name"], entity=entity, features=tuple(Feature(*f) for f in data["features"]),
                       ttl=timedelta(seconds=data["ttl_s"]), buckets=data["buckets"],
                       on_missing=data.get("on_missing"), on_stale=data.get("on_stale"))


def with_history(new: Repository, applied: Repository | None) -> Repository:
    """``new`` carrying the older schema versions of its views: the applied repository's live
    schema and history of each view whose schema version changes (at most :data:`HISTORY`)."""
    history: dict[str, tuple[FeatureView, ...]] = {}
    for name, view in new.views.items():
        if applied is None or name not in applied.views:
            continue
        older = (applied.views[name], *applied.history.get(name, ()))
        kept, seen = [], {view.version}
        for old in older:
            if old.version not in seen:
                kept.append(old)
                seen.add(old.version)
        if kept:
            history[name] = tuple(kept[:HISTORY])
    return Repository(new.spec, new.root, new.entities, new.views, history)


def apply(client, prefix: str, repo: Repository) -> Repository:
    """Record ``repo`` as the one every gateway and job reads (one HSET: atomic). Returns it with
    the schema history it was recorded with."""
    recorded = with_history(repo, applied(client, prefix))
    client.hset(repo_key(prefix), mapping={
        "document": _document_bytes(recorded), "history": _history_json(recorded),
        "digest": recorded.digest, "applied_at_ms": int(time.time() * 1000)})
    return recorded


def applied_digest(client, prefix: str) -> str | None:
    value = client.hget(repo_key(prefix), "digest")
    return value.decode() if isinstance(value, bytes) else value


def applied(client, prefix: str) -> Repository | None:
    """The applied repository, or None if none was applied (works with a sync redis-py client)."""
    raw = client.hgetall(repo_key(prefix))
    return from_hash(raw)


def from_hash(raw: Mapping[Any, Any]) -> Repository | None:
    """The repository recorded in the hash fields ``raw`` (from HGETALL; sync or async client)."""
    if not raw:
        return None
    fields = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
              for k, v in raw.items()}
    document = json.loads(fields["document"])
    history = {name: tuple(_view_from_json(v) for v in views)
               for name, views in json.loads(fields.get("history") or "{}").items()}
    root = Path(document["root"]) if document.get("root") else None
    return compile_spec(RepositorySpec.model_validate(document["spec"]), root, history)


# -- plan: what applying would change ------------------------------------------------------------

@dataclass
class Plan:
    lines: list[tuple[str, str]] = field(default_factory=list)
    """(kind, text): kind is ``+`` added, ``-`` removed, ``~`` changed, ``!`` an error."""

    @property
    def errors(self) -> list[str]:
        return [text for kind, text in self.lines if kind == "!"]

    @property
    def changes(self) -> list[str]:
        return [text for kind, text in self.lines if kind != "!"]

    def add(self, kind: str, text: str) -> None:
        self.lines.append((kind, text))


def plan(new: Repository, applied_repo: Repository | None,
         model_inputs: Mapping[str, tuple[str, ...] | None] | None = None) -> Plan:
    """What applying ``new`` over ``applied_repo`` changes, and what would break.

    ``model_inputs``: each model's input names (from its registered signature), or None where
    the registry has no version yet; a model whose ``<view>__<feature>`` inputs no online view of
    ``new`` provides, or whose declared entities differ from its views', is an error."""
    result = Plan()
    old_views = applied_repo.views if applied_repo else {}
    for name, view in new.views.items():
        old = old_views.get(name)
        if old is None:
            result.add("+", f"view {name} (schema {view.version}, {len(view.features)} features)")
        elif old.version != view.version:
            result.add("~", f"view {name}: new schema version {old.version} -> {view.version} "
                            f"(stored under new keys; {old.version} serves until the new one is synced)")
        elif old.definition_digest != view.definition_digest:
            result.add("~", f"view {name}: definition changed, same schema (the next sync replaces values)")
    for name in old_views.keys() - new.views.keys():
        result.add("-", f"view {name} (its data expires with its keys)")
    old_models = applied_repo.models if applied_repo else {}
    for name, entry in new.models.items():
        if name not in old_models:
            result.add("+", f"model {name}")
        elif old_models[name] != entry:
            result.add("~", f"model {name}: settings changed")
    for name in old_models.keys() - new.models.keys():
        result.add("-", f"model {name} (gateways stop serving it)")
    for name, inputs in (model_inputs or {}).items():
        entry = new.models.get(name)
        if inputs is None:
            result.add("~", f"model {name}: no registered version to check its inputs against yet")
            continue
        try:
            by_view, _ = split_inputs(inputs, new.views)
        except ValueError as exc:
            result.add("!", f"model {name}: inputs do not resolve: {exc}")
            continue
        entities = sorted({new.views[v].entity.name for v in by_view})
        if entry is not None and entry.entities and sorted(entry.entities) != entities:
            result.add("!", f"model {name}: declares entities {sorted(entry.entities)} but its views are keyed "
                            f"by {entities}")
    return result


# -- init: a repository to start from ------------------------------------------------------------

SCAFFOLD = {
    PROJECT_FILE: """\
# The project file of an mlgate feature repository. Every other *.yaml file in this folder (and
# below it) adds entities, sources, views and models. `mlgate plan` shows what would change,
# `mlgate apply` records it for every gateway and job.
project: {project}
""",
    "features.yaml": """\
entities:
  - name: account
    description: a customer account
    keys:
      - {{name: account_id, type: string, max_length: 64}}

sources:
  - name: events
    parquet: data/events.parquet     # a file, a folder or a glob; or `table:` / `sql:`
    timestamp: ts

views:
  - name: account_activity
    entity: account
    source: events
    ttl: 2d                          # older values are stale
    features:
      - name: events_1d
        dtype: long
        default: 0
        aggregation: {{function: count, window: 1d}}
      - name: amount_sum_7d
        aggregation: {{function: sum, column: amount, window: 7d}}
      - name: amount_max_30d
        aggregation: {{function: max, column: amount, window: 30d}}
""",
    "models.yaml": """\
models:
  - name: {project}-model
    entities: [account]
    serving:
      alias: champion
""",
}


def scaffold(root: Path, project: str) -> list[Path]:
    """Write a starting repository into ``root`` (refuses to overwrite existing files)."""
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in SCAFFOLD.items():
        path = root / name
        if path.exists():
            raise RepositoryError(f"{path} exists: not overwriting it")
    for name, text in SCAFFOLD.items():
        path = root / name
        path.write_text(text.format(project=project))
        written.append(path)
    return written
