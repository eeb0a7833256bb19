"""From ``models:/<name>@<alias>`` to a validated, ready runtime.

Resolve the reference to a version in the MLflow registry, download its artifacts once into a
local cache, read the input schema from the signature, open the fastest runtime the flavour
allows, then score the logged input example. A model that fails any step is refused with a
:class:`ModelValidationError` and never serves. What is enforced on the way:

- a version without the onnx flavour loads through ``mlflow.pyfunc`` (unpickling code from the
  registry) only when its model setting says ``allow_pyfunc``;
- a version tagged ``mlgate.artifact_sha256`` (``mlgate rollout approve``) loads only if its
  downloaded artifacts have that digest (``registry.require_digest``: the tag is mandatory);
- an ONNX file larger than ``onnx.max_model_bytes`` is not opened.

Failing to reach the registry or its artifact store is not a verdict on the model: it raises
:class:`RegistryUnavailable`, and the caller retries.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import ModelValidationError, RegistryUnavailable
from serving.runtime.artifacts import ARTIFACT_SHA256, artifact_digest
from serving.runtime.base import NUMPY_DTYPES, FeatureSpec, ModelRuntime, ModelSpec
from serving.settings import ModelSettings, OnnxSettings

log = logging.getLogger(__name__)

_COMPLETE = ".complete"


def resolve_version(client: Any, model: ModelSettings) -> tuple[str, str | None, dict[str, str]]:
    """The registered version a model setting points at, with its alias and tags.

    ModelValidationError when the registry answers that the name, alias or version does not
    exist; RegistryUnavailable when it cannot be asked (a verdict on nothing: retry)."""
    try:
        if model.version:
            mv = client.get_model_version(model.name, model.version)
            alias = None
        else:
            mv = client.get_model_version_by_alias(model.name, model.alias)
            alias = model.alias
    except Exception as exc:
        if is_transient(exc):
            raise RegistryUnavailable(_unreachable(f"resolve {model.uri}", exc)) from exc
        if not _is_answer(exc):
            raise
        raise ModelValidationError(_unresolved(client, model, exc)) from exc
    return str(mv.version), alias, dict(mv.tags or {})


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the registry or artifact store could not answer now (unreachable,
    timed out, 5xx, rate limited), as opposed to an answer about the model."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):  # MLflow wraps transport errors in INTERNAL_ERROR (500)
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    if isinstance(exc, OSError):  # ConnectionError, TimeoutError, requests' errors, a cut download
        return True
    module = type(exc).__module__.split(".")[0]
    if module == "urllib3" or (module == "sqlalchemy" and type(exc).__name__ == "OperationalError"):
        return True
    return isinstance(exc.__cause__, BaseException) and is_transient(exc.__cause__)


def _is_answer(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and not is_transient(exc)


def _unreachable(what: str, exc: BaseException) -> str:
    """Why the registry could not be asked: the exception type only (its text may carry URLs)."""
    return f"cannot reach the MLflow registry to {what} ({type(exc).__name__})"


def _unresolved(client: Any, model: ModelSettings, exc: Exception) -> str:
    """Why ``model`` does not resolve, with what the registry does hold: an unknown name lists
    the registered models, a missing alias or version lists the model's aliases and versions."""
    try:
        registered = client.get_registered_model(model.name)
    except Exception as lookup:
        if not _is_answer(lookup):  # the details are a courtesy; the refusal stands without them
            return f"cannot resolve {model.uri}: {exc}"
        try:
            names = sorted(m.name for m in client.search_registered_models(max_results=20))
        except Exception:  # the listing is a courtesy; the refusal stands without it
            names = []
        known = f"registered models: {', '.join(names)}" if names else "no model is registered yet"
        return f"cannot resolve {model.uri}: no registered model named {model.name!r} ({known})"
    aliases = ", ".join(f"@{a} -> v{v}" for a, v in sorted((registered.aliases or {}).items())) or "none"
    missing = f"version {model.version}" if model.version else f"alias @{model.alias}"
    return f"cannot resolve {model.uri}: {model.name} has no {missing} (its aliases: {aliases})"


def download(tracking_uri: str, name: str, version: str, cache_dir: Path) -> Path:
    """Artifacts of one version, fetched once: a finished download is marked and reused."""
    import mlflow.artifacts

    # Keyed by registry too: version 1 of a name in one registry is not version 1 in another.
    registry = hashlib.sha256(tracking_uri.encode()).hexdigest()[:12]
    target = cache_dir / registry / name / version
    if (target / _COMPLETE).exists():
        return target
    # A download of its own (replicas and variants of one node load at once): another one's
    # cleanup can never delete files under it, and the first finished copy wins the rename.
    partial = target.with_name(f"{version}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    partial.mkdir(parents=True)
    try:
        # The version's own artifact location, asked of this registry explicitly: a models:/ URI
        # would be resolved through MLflow's process-global registry URI, whatever we pass.
        from mlflow import MlflowClient

        source = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri
                              ).get_model_version_download_uri(name, version)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(partial),
                                                         tracking_uri=tracking_uri))
        (local / _COMPLETE).touch()
        if not (target / _COMPLETE).exists():
            shutil.rmtree(target, ignore_errors=True)  # a copy left unfinished by a killed process
            try:
                local.rename(target)
            except OSError:  # another process renamed its finished copy first: use that one
                if not (target / _COMPLETE).exists():
                    raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def read_spec(path: Path, name: str, version: str, alias: str | None, uri: str,
              tags: dict[str, str]) -> tuple[ModelSpec, str]:
    """The model's spec from its MLmodel file, and the path of its ONNX file (or '')."""
    from mlflow.models import Model

    mlmodel = Model.load(str(path))
    schema = mlmodel.get_input_schema()
    if schema is None or not schema.has_input_names():
        raise ModelValidationError("the model has no signature with named input columns")
    inputs = []
    for col in schema.inputs:
        dtype = getattr(col.type, "name", str(col.type))
        if dtype not in NUMPY_DTYPES:
            raise ModelValidationError(f"input {col.name!r} has unsupported type {dtype!r}")
        inputs.append(FeatureSpec(col.name, dtype, bool(getattr(col, "required", True))))
    example = mlmodel.load_input_example(str(path))
    rows: tuple[dict[str, Any], ...] = ()
    if example is not None:
        records = example.to_dict(orient="records") if hasattr(example, "to_dict") else example
        rows = tuple(_plain(r) for r in records)
    onnx_file = ""
    flavor = "pyfunc"
    if "onnx" in mlmodel.flavors:
        flavor = "onnx"
        onnx_file = str(path / mlmodel.flavors["onnx"]["data"])
    spec = ModelSpec(name=name, version=version, alias=alias, uri=uri, flavor=flavor,
                     inputs=tuple(inputs), outputs=(), input_example=rows,
                     run_id=mlmodel.run_id, tags=tags)
    return spec, onnx_file


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def validate(runtime: ModelRuntime) -> ModelRuntime:
    """Score the logged input example; refuse the model unless every output is sane."""
    spec = runtime.spec
    if not spec.input_example:
        raise ModelValidationError("the model was logged without an input example")
    names = spec.feature_names
    try:
        inputs = {f.name: np.asarray([row[f.name] for row in spec.input_example],
                                     dtype=NUMPY_DTYPES[f.dtype]) for f in spec.inputs}
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelValidationError(f"the input example does not match the signature {names}") from exc
    try:
        outputs = runtime.predict(inputs)
    except Exception as exc:
        raise ModelValidationError(f"scoring the input example failed: {exc}") from exc
    n = len(spec.input_example)
    for out_name, values in outputs.items():
        arr = np.asarray(values)
        if arr.shape[:1] != (n,):
            raise ModelValidationError(f"output {out_name!r} has {arr.shape[:1]} rows for {n} inputs")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ModelValidationError(f"output {out_name!r} is not finite on the input example")
    if not spec.outputs:
        runtime.spec = replace(spec, outputs=tuple(outputs))
    return runtime


def load_model(model: ModelSettings, *, tracking_uri: str, cache_dir: Path,
               onnx: OnnxSettings, require_digest: bool = False) -> ModelRuntime:
    """Resolve, download, verify, open and validate one configured model.

    ModelValidationError refuses the version for good; RegistryUnavailable (and anything else)
    says nothing about it: the caller retries."""
    from mlflow import MlflowClient

    started = time.perf_counter()
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version, alias, tags = resolve_version(client, model)
    uri = f"models:/{model.name}/{version}"
    try:
        path = download(tracking_uri, model.name, version, cache_dir)
    except Exception as exc:
        if is_transient(exc):
            raise RegistryUnavailable(_unreachable(f"download {uri}", exc)) from exc
        raise
    verify_digest(path, tags, uri, required=require_digest)
    spec, onnx_file = read_spec(path, model.name, version, alias, uri, tags)
    runtime: ModelRuntime
    if onnx_file:
        from serving.runtime.onnx_runtime import OnnxRuntime

        runtime = OnnxRuntime(onnx_file, spec, onnx)
    elif not model.allow_pyfunc:
        raise ModelValidationError(
            f"{uri} has no onnx flavour, and loading it through mlflow.pyfunc would run code from "
            f"the registry inside the gateway: log it with the onnx flavour, or set allow_pyfunc: "
            f"true on model {model.name!r} if you trust whoever can register its versions")
    else:
        from serving.runtime.pyfunc_runtime import PyfuncRuntime

        log.warning("model %s v%s has no onnx flavour: serving it through mlflow.pyfunc (slower; "
                    "allowed by allow_pyfunc)", model.name, version)
        runtime = PyfuncRuntime(str(path), spec)
    validate(runtime)
    seconds = time.perf_counter() - started
    runtime.spec = replace(runtime.spec, load_seconds=seconds)
    log.info("loaded %s v%s (%s) in %.2fs", model.name, version, spec.flavor, seconds)
    return runtime


def verify_digest(path: Path, tags: dict[str, str], uri: str, required: bool = False) -> None:
    """Refuse artifacts that differ from the ones approved (tag ``mlgate.artifact_sha256``).

    A version without the tag passes unless ``required``. A mismatching copy is also dropped
    from the cache, so that nothing reuses it."""
    expected = (tags.get(ARTIFACT_SHA256) or "").strip().lower()
    if not expected:
        if required:
            raise ModelValidationError(
                f"{uri} carries no {ARTIFACT_SHA256} tag and registry.require_digest is on: "
                f"approve it with `mlgate rollout approve`, which records its artifact digest")
        return
    actual = artifact_digest(path)
    if actual != expected:
        shutil.rmtree(path, ignore_errors=True)
        raise ModelValidationError(
            f"{uri}: artifacts differ from the approved ones (sha256 approved {expected[:12]}..., "
            f"downloaded {actual[:12]}...); if the change is intended, approve the version again")
