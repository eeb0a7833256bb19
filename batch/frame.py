"""The rows a batch job scores: the latest offline tables of a model's views, joined on their keys.

Which rows: a batch score is keyed by every key column of the model's entities (the scored
entity, :func:`features_online.definitions.scored_entity`), so each row needs all of them.

- With an entity table (``mlgate batch score --entities PATH``: any table holding the key
  columns), its distinct key rows are scored. This is how a model of several independent
  entities (a customer and a merchant, a user and an item) is scored: only the caller knows
  which pairs are worth a fallback score; every pair would be a cross product.
- Without one, the rows are those of the driving view: the first of the model's views (in the
  order of the model's inputs) whose entity carries every key column of the scored entity. For
  a model of one entity that is its first view; a model of several entities needs a view keyed
  by all of them, else the plan is refused and says to pass an entity table.

Every other view is left-joined on its own key columns. An entity a view has no row for gets
that view's defaults, as the online path answers a never-seen entity (``status: missing``), so
a batch score is the score the online path would give. Nulls in a table become defaults too, as
the online layout stores them. The key columns are carried through unchanged, and every row's
``as_of_ms`` is that of the oldest table joined: a score is as old as its oldest input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from features_online.definitions import Entity, FeatureView

# Spark column types of the view dtypes and key types.
SPARK_DTYPES = {"double": "double", "float": "float", "long": "bigint", "int": "int", "bool": "boolean"}
SPARK_KEY_TYPES = {"int64": "bigint", "string": "string"}


class FrameError(ValueError):
    """The model's views cannot be joined into rows of its scored entity."""


@dataclass(frozen=True)
class ViewInputs:
    """A view and the features of it that the model reads (unqualified, in input order)."""

    view: FeatureView
    features: tuple[str, ...]


@dataclass(frozen=True)
class FramePlan:
    entity: Entity
    """The scored entity: its key columns lead every row."""
    views: tuple[ViewInputs, ...]
    driver: str | None
    """The view whose table gives the rows; None: an entity table does."""

    @property
    def key_names(self) -> tuple[str, ...]:
        return self.entity.key_names

    @property
    def columns(self) -> dict[str, str]:
        """Model input (``view__feature``) -> frame column: the same name."""
        return {v.view.qualified(f): v.view.qualified(f) for v in self.views for f in v.features}


def frame_plan(entity: Entity, views: list[ViewInputs], entity_table: bool = False) -> FramePlan:
    """Check that ``views`` join into rows of ``entity`` and choose the driving view."""
    types = {k.name: k.type for k in entity.keys}
    for vi in views:
        for key in vi.view.entity.keys:
            if key.name not in types:
                raise FrameError(f"view {vi.view.name!r} is keyed by {key.name!r}, which none of the model's "
                                 f"entities has (scored keys: {', '.join(types)})")
            if key.type != types[key.name]:
                raise FrameError(f"key {key.name!r} is {key.type} in view {vi.view.name!r} but "
                                 f"{types[key.name]} in the model's entities")
    if entity_table:
        return FramePlan(entity, tuple(views), None)
    driver = next((vi.view.name for vi in views if set(types) <= set(vi.view.entity.key_names)), None)
    if driver is None:
        raise FrameError(f"no view of the model is keyed by all of {', '.join(types)}: pass an entity "
                         "table with those columns (--entities) to say which rows to score")
    return FramePlan(entity, tuple(views), driver)


def build_frame(spark, plan: FramePlan, tables: Mapping[str, str], as_of_ms: int, entity_rows=None):
    """The scoring frame: key columns, ``as_of_ms``, then one column per model input read from a
    view. ``tables``: view name -> its offline table (Parquet); ``entity_rows``: a DataFrame
    holding the key columns (required when ``plan.driver`` is None)."""
    from pyspark.sql import functions as F

    keys = plan.key_names
    if plan.driver is None:
        if entity_rows is None:
            raise FrameError("the plan scores the rows of an entity table, and none was given")
        missing = [k for k in keys if k not in entity_rows.columns]
        if missing:
            raise FrameError(f"the entity table lacks the key columns {', '.join(missing)}")
        by_type = {k.name: SPARK_KEY_TYPES[k.type] for k in plan.entity.keys}
        frame = entity_rows.select(*[F.col(k).cast(by_type[k]).alias(k) for k in keys]).dropna().distinct()
    else:
        driver = next(vi for vi in plan.views if vi.view.name == plan.driver)
        frame = _view_columns(spark, driver, tables[driver.view.name])
    for vi in plan.views:
        if vi.view.name != plan.driver:
            frame = frame.join(_view_columns(spark, vi, tables[vi.view.name]), list(vi.view.entity.key_names), "left")
    filled = [F.coalesce(F.col(vi.view.qualified(f)), _default(vi.view, f)).alias(vi.view.qualified(f))
              for vi in plan.views for f in vi.features]
    return frame.select(*[F.col(k) for k in keys], F.lit(as_of_ms).cast("bigint").alias("as_of_ms"), *filled)


def _view_columns(spark, vi: ViewInputs, table: str):
    """A view's offline table: its key columns and the features read, as ``view__feature``."""
    from pyspark.sql import functions as F

    return spark.read.parquet(table).select(
        *[F.col(k) for k in vi.view.entity.key_names],
        *[F.col(f).alias(vi.view.qualified(f)) for f in vi.features])


def _default(view: FeatureView, name: str):
    from pyspark.sql import functions as F

    feature = view.feature(name)
    return F.lit(feature.default).cast(SPARK_DTYPES[feature.dtype])
