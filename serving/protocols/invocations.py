"""Row-oriented protocols: MLflow's scoring server (``/invocations``), Databricks Model Serving
(``/serving-endpoints/{name}/invocations``, the same payloads) and KServe v1 (``:predict``).

MLflow's payloads: ``dataframe_split`` (columns + data), ``dataframe_records`` (one object per
row), ``instances`` and ``inputs`` (rows, or one list per column) and CSV with a header row —
what ``mlflow.models.convert_input_example_to_serving_input`` writes from an input example.
Answers are ``{"predictions": [...]}``: one value per row for a single-output model, else one
object of outputs per row, as MLflow answers for a DataFrame.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Mapping, Sequence

import orjson

from serving import codec
from serving.errors import InvalidRequest, MlgateError
from serving.protocols.base import Decoded, Headers, ModelInputs, answer_columns, check_rows, payload_of

MLFLOW_FIELDS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_JSON = [(b"content-type", b"application/json")]
# MLflow's error codes (its REST API's names) by HTTP status.
MLFLOW_ERROR_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                      404: "RESOURCE_DOES_NOT_EXIST", 408: "REQUEST_TIMEOUT", 413: "REQUEST_LIMIT_EXCEEDED",
                      415: "BAD_REQUEST", 422: "INVALID_PARAMETER_VALUE", 429: "REQUEST_LIMIT_EXCEEDED",
                      503: "TEMPORARILY_UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def is_csv(content_type: bytes | None) -> bool:
    return content_type is not None and content_type.split(b";", 1)[0].strip().lower() == b"text/csv"


def columns_of_rows(rows: Any, where: str, inputs: ModelInputs) -> tuple[dict[str, list], int]:
    """Rows as named columns: objects (every row the same names), or lists in the order of the
    model's request-time inputs."""
    if not isinstance(rows, list) or not rows:
        raise InvalidRequest(f"'{where}' must be a non-empty list of rows")
    first = rows[0]
    if isinstance(first, dict):
        names = list(first)
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or row.keys() != first.keys():
                raise InvalidRequest(f"{where}[{i}] must be an object with the same names as {where}[0]")
        return {n: [row[n] for row in rows] for n in names}, len(rows)
    if isinstance(first, list):
        if inputs.request is None:
            raise InvalidRequest(f"'{where}' as lists needs the model loaded; send objects of named values")
        return split_columns([f.name for f in inputs.request], rows, where), len(rows)
    raise InvalidRequest(f"'{where}' must hold objects of named values, or lists of values")


def split_columns(names: Sequence[str], data: Any, where: str) -> dict[str, list]:
    """Positional rows (lists of ``len(names)`` values) as named columns."""
    if not isinstance(data, list) or not data:
        raise InvalidRequest(f"'{where}' must be a non-empty list of rows")
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(names):
            raise InvalidRequest(f"{where}[{i}] must be a list of {len(names)} values ({', '.join(names[:8])})")
    return {name: [row[j] for row in data] for j, name in enumerate(names)}


def _dataframe_split(value: Any) -> tuple[dict[str, list], int]:
    if not isinstance(value, dict) or not value.keys() <= {"columns", "data", "index"}:
        raise InvalidRequest("'dataframe_split' must be an object with 'columns' and 'data'")
    names = value.get("columns")
    if (not isinstance(names, list) or not names or not all(type(n) is str for n in names)
            or len(set(names)) != len(names)):
        raise InvalidRequest("dataframe_split.columns must be a list of distinct names")
    columns = split_columns(names, value.get("data"), "dataframe_split.data")
    return columns, len(value["data"])


def _inputs(value: Any, inputs: ModelInputs) -> tuple[dict[str, list], int]:
    if isinstance(value, dict):  # one list per column
        lengths = {len(v) for v in value.values() if isinstance(v, list)}
        if not value or len(lengths) != 1 or not all(isinstance(v, list) for v in value.values()):
            raise InvalidRequest("'inputs' as an object must map each name to a list, all of one length")
        return {str(k): v for k, v in value.items()}, lengths.pop()
    return columns_of_rows(value, "inputs", inputs)


def parse_csv(raw: bytes) -> tuple[dict[str, list], int]:
    """A CSV body with a header row; numbers become numbers, empty cells null."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequest("a CSV body must be UTF-8 text") from None
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header = next(reader, None)
        records = [row for row in reader if row]
    except csv.Error as exc:
        raise InvalidRequest(f"malformed CSV: {exc}") from None
    if not header or len(set(header)) != len(header) or not records:
        raise InvalidRequest("a CSV body needs a header row of distinct names and at least one row")
    columns = split_columns(header, records, "csv")
    return {name: [_cell(v) for v in values] for name, values in columns.items()}, len(records)


def _cell(text: str) -> Any:
    value = text.strip()
    if not value:
        return None
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("nan", "inf", "-inf", "infinity", "-infinity", "+inf"):
        raise InvalidRequest("NaN and Infinity are not valid feature values")
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


class MlflowInvocations:
    """MLflow's scoring protocol; with ``name="databricks"`` the Databricks serving paths."""

    def __init__(self, name: str = "mlflow") -> None:
        self.name = name

    def accepts(self, headers: Mapping[bytes, bytes]) -> bool:
        media = headers.get(b"content-type")
        return codec.is_json_media(media) or is_csv(media)

    def decode(self, raw: bytes, headers: Mapping[bytes, bytes], inputs: ModelInputs, max_rows: int) -> Decoded:
        if is_csv(headers.get(b"content-type")):
            columns, rows = parse_csv(raw)
        else:
            columns, rows = self._json(codec.parse_json(raw), inputs)
        check_rows(rows, max_rows)
        return Decoded(payload_of(columns, rows, inputs))

    @staticmethod
    def _json(body: Any, inputs: ModelInputs) -> tuple[dict[str, list], int]:
        if not isinstance(body, dict):
            raise InvalidRequest(f"the body must be a JSON object with one of: {', '.join(MLFLOW_FIELDS)}")
        given = [f for f in MLFLOW_FIELDS if f in body]
        extra = body.keys() - set(MLFLOW_FIELDS) - {"params"}
        if len(given) != 1 or extra:
            raise InvalidRequest(f"the body must hold exactly one of: {', '.join(MLFLOW_FIELDS)}")
        if body.get("params"):
            raise InvalidRequest("this model takes no params")
        field = given[0]
        if field == "dataframe_split":
            return _dataframe_split(body[field])
        if field == "inputs":
            return _inputs(body[field], inputs)
        return columns_of_rows(body[field], field, inputs)

    def encode(self, result: dict[str, Any], decoded: Decoded, disclose: bool) -> tuple[bytes, Headers]:
        return orjson.dumps({"predictions": predictions_of(result)}), _JSON

    def error(self, exc: MlgateError, rid: str) -> bytes:
        return orjson.dumps({"error_code": MLFLOW_ERROR_CODES.get(exc.status, "INTERNAL_ERROR"),
                             "message": exc.message, "code": exc.code, "request_id": rid})


def predictions_of(result: Mapping[str, Any]) -> list:
    """Each row's outputs: the value itself for a one-output model, else an object of outputs."""
    columns = answer_columns(result["predictions"])
    if len(columns) == 1:
        return next(iter(columns.values()))
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*columns.values())]


class KServeV1:
    """KServe's v1 protocol: ``{"instances": [...]}`` in, ``{"predictions": [...]}`` out."""

    name = "v1"

    def accepts(self, headers: Mapping[bytes, bytes]) -> bool:
        return codec.is_json_media(headers.get(b"content-type"))

    def decode(self, raw: bytes, headers: Mapping[bytes, bytes], inputs: ModelInputs, max_rows: int) -> Decoded:
        body = codec.parse_json(raw)
        if not isinstance(body, dict) or len(body.keys() & {"instances", "inputs"}) != 1 \
                or not body.keys() <= {"instances", "inputs"}:
            raise InvalidRequest("the body must be a JSON object with an 'instances' list")
        field = "instances" if "instances" in body else "inputs"
        columns, rows = columns_of_rows(body[field], field, inputs)
        check_rows(rows, max_rows)
        return Decoded(payload_of(columns, rows, inputs))

    def encode(self, result: dict[str, Any], decoded: Decoded, disclose: bool) -> tuple[bytes, Headers]:
        return orjson.dumps({"predictions": predictions_of(result)}), _JSON

    def error(self, exc: MlgateError, rid: str) -> bytes:
        return orjson.dumps({"error": exc.message, "code": exc.code, "request_id": rid})
