"""The examples' feature repository (this folder), with its data where the settings keep it.

The YAML names its Parquet files under ``${MLGATE_EXAMPLES_DATA}``; the example commands load it
with that variable replaced by ``<state_dir>/data`` (:func:`load`), so the repository they apply
holds absolute paths: a later ``mlgate features build`` (which reads the applied repository)
finds the data without the variable, and two state folders (tests, a demo) never mix.
"""

from __future__ import annotations

from pathlib import Path

from features_online import repository
from features_online.repository import Repository
from features_online.settings import StoreSettings

ROOT = Path(__file__).resolve().parent
DATA_VARIABLE = "MLGATE_EXAMPLES_DATA"


def data_dir(settings: StoreSettings, example: str) -> Path:
    """Where ``example`` (``fraud``, ``delivery``) keeps its raw tables."""
    return settings.data_dir / example


def load(settings: StoreSettings, models: tuple[str, ...] | None = None) -> Repository:
    """Both examples as one repository, their sources under ``settings.data_dir``; with
    ``models``, only those models and the entities, views and sources they need (a test that
    serves one example needs not build the other's features)."""
    found = repository.load(ROOT)
    document = found.spec.model_dump(mode="json")
    document["sources"] = [_located(s, settings.data_dir).model_dump(mode="json") for s in found.spec.sources]
    if models is not None:
        document["models"] = [m for m in document["models"] if m["name"] in models]
        entities = {e for m in document["models"] for e in m["entities"]}
        document["entities"] = [e for e in document["entities"] if e["name"] in entities]
        document["views"] = [v for v in document["views"] if v["entity"] in entities]
        used = {v["source"] for v in document["views"]}
        document["sources"] = [s for s in document["sources"] if s["name"] in used]
    return repository.compile_spec(repository.validate(document), ROOT)


def _located(source, data: Path):
    if not source.parquet:
        return source
    for form in ("${%s}" % DATA_VARIABLE, "$" + DATA_VARIABLE):
        if source.parquet.startswith(form):
            return source.model_copy(update={"parquet": str(data) + source.parquet[len(form):]})
    return source
