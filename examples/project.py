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


def load(settings: StoreSettings) -> Repository:
    """Both examples as one repository, their sources under ``settings.data_dir``."""
    found = repository.load(ROOT)
    sources = tuple(_located(s, settings.data_dir) for s in found.spec.sources)
    spec = repository.validate({**found.spec.model_dump(mode="json"),
                                "sources": [s.model_dump(mode="json") for s in sources]})
    return repository.compile_spec(spec, ROOT)


def _located(source, data: Path):
    if not source.parquet:
        return source
    for form in ("${%s}" % DATA_VARIABLE, "$" + DATA_VARIABLE):
        if source.parquet.startswith(form):
            return source.model_copy(update={"parquet": str(data) + source.parquet[len(form):]})
    return source
