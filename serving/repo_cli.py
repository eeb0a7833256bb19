"""``mlgate init|plan|apply``: a feature repository from scaffold to the online store.

``init`` writes a starting repository, ``plan`` says what applying one would change and what would
break (the repository's own checks, each model's ``serving`` settings as the gateway will read
them, each registered model's inputs against the views), ``apply`` records it in Redis for every
gateway and job. The repository logic is ``features_online.repository``'s; this module asks the
two places a repository is checked against (Redis, the MLflow registry), prints, and records.

``serving`` owns the commands rather than ``features_online`` because the checks need the
gateway's ``ModelSettings`` and registry lookups: imports keep pointing down.
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.errors import CommandFailed, UsageError

if TYPE_CHECKING:
    from features_online.repository import Plan, Repository
    from serving.settings import ModelSettings, Settings

ORDER = ("+", "~", "-", "!")
"""How plan lines are grouped on screen: additions, changes, removals, then errors."""


# -- init -----------------------------------------------------------------------------------------

def project_name(folder: Path) -> str:
    """A valid project name from a folder's name: other characters become ``-``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.resolve().name)
    name = re.sub(r"^[^A-Za-z0-9]+", "", name)[:63].rstrip("-.")
    return name or "features"


def init(args: argparse.Namespace, settings: Settings) -> int:
    from features_online.repository import PROJECT_NAME, RepositoryError, scaffold

    root = Path(args.dir)
    project = args.project or project_name(root)
    if not re.match(PROJECT_NAME, project):
        raise UsageError(f"--project {project!r}: use letters, digits, '_', '.' or '-', starting with a "
                         "letter or digit (63 at most)")
    try:
        written = scaffold(root, project)
    except RepositoryError as exc:
        raise CommandFailed(str(exc)) from None
    except OSError as exc:
        raise CommandFailed(f"cannot write the repository into {root} ({exc.strerror or type(exc).__name__})") from None
    for path in written:
        print(f"wrote {path}")
    where = shlex.quote(str(root))
    steps = [(f"mlgate plan {where}", "what applying would change, and what would break"),
             (f"mlgate apply {where}", "record it for every gateway and job"),
             ("mlgate features build", "each online view's offline table"),
             ("mlgate features sync", "the tables into Redis")]
    width = max(len(command) for command, _ in steps) + 3
    print(f"\nnext:\n  1. edit {root / 'features.yaml'} (entities, views, and sources: point them at your data)"
          f"\n     and {root / 'models.yaml'} (the models the gateway serves)")
    for number, (command, why) in enumerate(steps, start=2):
        print(f"  {number}. {command.ljust(width)}{why}")
    return 0


# -- plan and apply -------------------------------------------------------------------------------

def plan(args: argparse.Namespace, settings: Settings) -> int:
    repo = _load(args.dir)
    with _store(settings) as (client, applied):
        result = assemble(settings, repo, applied)
    show(result)
    return 1 if result.errors else 0


def apply(args: argparse.Namespace, settings: Settings) -> int:
    from features_online import repository

    repo = _load(args.dir)
    with _store(settings) as (client, applied):
        result = assemble(settings, repo, applied)
        show(result)
        if result.errors and not args.force:
            count = len(result.errors)
            raise CommandFailed(f"not applied: the plan has {count} error{'s' * (count != 1)}; fix "
                                f"{'them' if count != 1 else 'it'}, or pass --force")
        if applied is not None and applied.digest == repo.digest:  # the digest is of the document, not history
            print(f"{repo.project} is applied already (digest {repo.digest})")
            return 0
        recorded = _redis_call(settings, lambda: repository.apply(client, settings.redis.prefix, repo))
    print(f"applied {recorded.project} (digest {recorded.digest})")
    return 0


def assemble(settings: Settings, repo: Repository, applied: Repository | None) -> Plan:
    """The repository's plan over the applied one, with the gateway's and the registry's checks."""
    from features_online import repository

    models, problems = serving_settings(repo)
    inputs, unusable = model_inputs(settings.tracking_uri, models)
    result = repository.plan(repo, applied, inputs)
    if applied is not None and not result.changes and applied.digest != repo.digest:
        # what plan() does not itemise (sources, entities, descriptions, the folder) still changes
        # the document every job reads: say so, so that "no changes" means nothing to record
        result.add("~", "definitions changed (sources, entities, descriptions or the repository folder)")
    for text in problems + unusable:
        result.add("!", text)
    return result


def show(result: Plan) -> None:
    """The plan's lines grouped by kind (errors last), then a count of each; or "no changes"."""
    if not result.lines:
        print("no changes")
        return
    lines = sorted(result.lines, key=lambda line: ORDER.index(line[0]))  # stable: plan order within a kind
    for kind, text in lines:
        print(f"{kind} {text}")
    counts = {kind: sum(1 for k, _ in lines if k == kind) for kind in ORDER}
    errors = counts["!"]
    print(f"{counts['+']} to add, {counts['~']} to change, {counts['-']} to remove, "
          f"{errors} error{'s' * (errors != 1)}")


def _load(folder: str) -> Repository:
    from features_online.repository import RepositoryError, load

    try:
        return load(folder)
    except RepositoryError as exc:
        raise UsageError(f"invalid feature repository: {exc}") from None


@contextmanager
def _store(settings: Settings) -> Iterator[tuple[Any, Repository | None]]:
    """A Redis client and the repository applied there (None: none yet)."""
    from features_online import repository
    from features_online.redis_client import connect

    client = connect(settings.redis, retries=1)
    try:
        try:
            applied = _redis_call(settings, lambda: repository.applied(client, settings.redis.prefix))
        except (ValueError, KeyError) as exc:  # a document this version cannot read
            raise CommandFailed(f"the repository applied under prefix {settings.redis.prefix!r} cannot be read "
                                f"({type(exc).__name__}): was it written by a newer mlgate?") from None
        yield client, applied
    finally:
        client.close()


def _redis_call(settings: Settings, call):
    import redis

    from features_online.redis_client import address

    try:
        return call()
    except redis.RedisError as exc:  # its text may name the host, never shown: the type says enough
        raise CommandFailed(f"cannot reach Redis at {address(settings.redis)} ({type(exc).__name__}): start it, "
                            "or point MLGATE_REDIS__URL at it") from None


# -- the checks against the gateway and the registry ----------------------------------------------

def serving_settings(repo: Repository) -> tuple[dict[str, ModelSettings], list[str]]:
    """Each model entry's ``serving`` settings as the gateway will build them, and a line for each
    that it would refuse (which model, which field, why: never the value given)."""
    from pydantic import ValidationError

    from serving.settings import ModelSettings

    models: dict[str, ModelSettings] = {}
    problems: list[str] = []
    for name, entry in repo.models.items():
        if "name" in entry.serving:
            problems.append(f"model {name}: serving.name: not allowed (the entry's name is the model's)")
            continue
        try:
            models[name] = ModelSettings.model_validate({**entry.serving, "name": name})
        except ValidationError as exc:
            for error in exc.errors(include_input=False, include_url=False):
                where = ".".join(["serving", *(str(p) for p in error["loc"])])
                problems.append(f"model {name}: {where}: {error['msg']}")
    return models, problems


def model_inputs(tracking_uri: str, models: dict[str, ModelSettings]
                 ) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """The input names of the version each model's settings name, for the models that have one,
    and a line for each version the gateway would refuse for want of named inputs. A model with no
    such version yet, or a registry that cannot be asked, is a note or a warning, not an error:
    the gateway checks the inputs again when it loads a version."""
    found: dict[str, tuple[str, ...]] = {}
    unusable: list[str] = []
    if not models:
        return found, unusable
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        note(f"no MLflow registry at {tracking_uri} yet: models' inputs not checked")  # asking would create one
        return found, unusable
    from mlflow import MlflowClient

    from serving.errors import ModelValidationError, RegistryUnavailable
    from serving.runtime.loader import resolve_version

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with _brief_retries():
        for name, model in models.items():
            try:
                version = resolve_version(client, model)[0]
                found[name] = signature_inputs(client, tracking_uri, name, version)
            except ModelValidationError:
                note(f"model {name}: no version registered as {model.uri} yet: its inputs are checked once "
                     "there is one")
            except LookupError as exc:
                unusable.append(f"model {name}: {exc}")
            except RegistryUnavailable as exc:
                warn(f"{exc}: models' inputs not checked")
                break
            except Exception as exc:  # noqa: BLE001 - a best-effort check must not sink the plan
                warn(f"cannot check the inputs of {name} in the MLflow registry ({type(exc).__name__})")
    return found, unusable


@contextmanager
def _brief_retries() -> Iterator[None]:
    """MLflow retries a registry server that does not answer for minutes (7 retries, backoff,
    a warning each): a best-effort check gives it one retry of 10 s at most, quietly, unless the
    user set MLflow's own variables for this."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    chosen = [(var, value) for var, value in ((MLFLOW_HTTP_REQUEST_MAX_RETRIES, 1), (MLFLOW_HTTP_REQUEST_TIMEOUT, 10))
              if not var.is_set()]
    for var, value in chosen:
        var.set(value)
    urllib3 = logging.getLogger("urllib3")
    level = urllib3.level
    urllib3.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for var, _ in chosen:
            var.unset()
        urllib3.setLevel(level)


def signature_inputs(client: Any, tracking_uri: str, name: str, version: str) -> tuple[str, ...]:
    """Input names of a registered version's signature, from its MLmodel file alone (LookupError:
    it has no signature with named inputs)."""
    import mlflow.artifacts
    from mlflow.models import Model

    # The version's artifact location asked of this registry: a models:/ URI would go through
    # MLflow's process-global registry URI.
    source = client.get_model_version_download_uri(name, version).rstrip("/")
    with tempfile.TemporaryDirectory(prefix="mlgate-plan-") as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"{source}/MLmodel", dst_path=tmp,
                                                   tracking_uri=tracking_uri)
        schema = Model.load(path).get_input_schema()
    if schema is None or not schema.has_input_names():
        raise LookupError(f"v{version} has no signature with named inputs: the gateway refuses it")
    return tuple(schema.input_names())


def note(text: str) -> None:
    print(f"note: {text}")


def warn(text: str) -> None:
    print(f"warning: {text}")
