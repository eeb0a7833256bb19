"""What one gateway serves: the online views of the applied feature repository, and the models
of its settings and of that repository.

The repository is applied with ``mlgate apply`` (recorded in Redis, see
:mod:`features_online.repository`); every replica reads it at start and again whenever its digest
changes (:mod:`serving.repo_watch`). A model listed in the settings wins over a repository entry
of the same name, so an operator can pin one without editing the repository.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Mapping

from pydantic import ValidationError

from features_online.definitions import Entity, FeatureView, score_view
from features_online.repository import Repository
from serving.settings import ModelSettings, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Catalog:
    views: Mapping[str, tuple[FeatureView, ...]] = field(default_factory=dict)
    """Every online view, its newest schema first, then older ones that serve until it is synced."""
    models: tuple[ModelSettings, ...] = ()
    entities: Mapping[str, tuple[Entity, ...]] = field(default_factory=dict)
    """The entities each model's request rows carry keys of, where the repository declares them:
    batch scores are keyed by them, and served before the model has loaded."""
    digest: str | None = None
    """The applied repository's digest (None: no repository applied)."""

    @property
    def newest(self) -> dict[str, FeatureView]:
        return {name: schemas[0] for name, schemas in self.views.items()}

    def model(self, name: str) -> ModelSettings | None:
        return next((m for m in self.models if m.name == name), None)

    def score_views(self, max_age: timedelta) -> dict[str, FeatureView]:
        """The batch-score view of every model whose entities are known."""
        views = (score_view(m.name, self.entities[m.name], max_age) for m in self.models
                 if self.entities.get(m.name))
        return {v.name: v for v in views}


@dataclass(frozen=True)
class ModelChanges:
    """How the served models change from one catalog to the next."""

    removed: tuple[str, ...] = ()
    added: tuple[ModelSettings, ...] = ()
    """New models, and models whose settings changed beyond their routing (they reload)."""
    rerouted: tuple[ModelSettings, ...] = ()
    """Models whose routing alone changed: applied to the running variants, no reload."""


def changes(old: Catalog, new: Catalog) -> ModelChanges:
    before = {m.name: m for m in old.models}
    after = {m.name: m for m in new.models}
    removed, added, rerouted = [], [], []
    for name, model in after.items():
        previous = before.get(name)
        if previous is None:
            added.append(model)
        elif previous != model:
            if previous.model_copy(update={"routing": model.routing}) == model:
                rerouted.append(model)
            else:
                removed.append(name)
                added.append(model)
    removed += [name for name in before if name not in after]
    return ModelChanges(tuple(removed), tuple(added), tuple(rerouted))


def catalog_of(settings: Settings, repo: Repository | None) -> Catalog:
    """The settings' models, then the repository's (an entry whose ``serving`` settings are
    invalid is left out and logged: ``mlgate plan`` reports it before an apply)."""
    models = list(settings.models)
    if repo is None:
        return Catalog(models=tuple(models))
    names = {m.name for m in models}
    for i, model in enumerate(models):  # pinned in the settings: the repository's entities still hold
        entry = repo.models.get(model.name)
        if entry is not None and not model.entities:
            models[i] = model.model_copy(update={"entities": entry.entities})
    for name, entry in repo.models.items():
        if name in names:
            continue
        try:
            models.append(ModelSettings(name=name, **{"entities": entry.entities, **entry.serving}))
        except (ValidationError, TypeError) as exc:
            log.error("model %s of repository %s: invalid serving settings, not served: %s", name,
                      repo.project, _first_error(exc))
    entities: dict[str, tuple[Entity, ...]] = {}
    for model in models:
        unknown = [e for e in model.entities if e not in repo.entities]
        if unknown:
            log.error("model %s: unknown entities %s in repository %s", model.name, unknown, repo.project)
        elif model.entities:
            entities[model.name] = tuple(repo.entities[e] for e in model.entities)
    return Catalog(repo.online_views(), tuple(models), entities, repo.digest)


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in error["loc"])
        return f"{where}: {error['msg']}" if where else error["msg"]
    return str(exc)
