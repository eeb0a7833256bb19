"""mlgate's error taxonomy: one class per failure a caller can see.

Every error carries its HTTP status, a stable ``code`` for clients to branch on, whether a retry
may help, and a message that is safe to show (it never echoes request values or exception text).
No framework imports here: transports map these in their own module (``serving/http/errors.py``).
"""

from __future__ import annotations


class MlgateError(Exception):
    status: int = 500
    code: str = "internal_error"
    retryable: bool = False
    retry_after_s: int | None = None
    default_message: str = "internal error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class InvalidRequest(MlgateError):
    status, code, default_message = 400, "invalid_request", "the request body is not valid"


class MalformedJson(InvalidRequest):
    code, default_message = "malformed_json", "the request body is not valid JSON"


class NestingTooDeep(InvalidRequest):
    code, default_message = "nesting_too_deep", "the request body is nested too deeply"


class InvalidFeatureType(InvalidRequest):
    code = "invalid_feature_type"


class NonFiniteValue(InvalidRequest):
    code = "non_finite_value"


class UnknownFeature(InvalidRequest):
    code = "unknown_feature"


class RequestFeaturesMissing(MlgateError):
    """The request body lacks inputs the model needs."""

    status, code = 422, "missing_features"


class StoredFeaturesMissing(MlgateError):
    """The online store holds no features for an entity (under the ``error`` policy)."""

    status, code = 422, "features_missing"


class StoredFeaturesStale(MlgateError):
    """The entity's stored features are older than the view's TTL (under the ``error`` policy)."""

    status, code = 422, "features_stale"


class ModelNotFound(MlgateError):
    status, code = 404, "model_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"no model named {name!r} is served here")

    @classmethod
    def no_default(cls) -> "ModelNotFound":
        """No model was named, and the gateway serves several without a default."""
        error = cls("")
        error.message = "several models are served: name one in the path, or set protocols.default_model"
        return error


class VariantNotFound(MlgateError):
    status, code = 404, "variant_not_found"


class VersionNotServed(MlgateError):
    """A protocol path named a model version this caller cannot be answered by."""

    status, code = 404, "version_not_found"


class Unauthorized(MlgateError):
    status, code, default_message = 401, "unauthorized", "a valid bearer token is required"


class CredentialsExpired(Unauthorized):
    code, default_message = "credentials_expired", "the bearer token has expired"


class Forbidden(MlgateError):
    status, code, default_message = 403, "forbidden", "not allowed for this caller"


class QuotaExceeded(MlgateError):
    """The caller, or the model it calls, is over its request-rate limit."""

    status, code, retryable = 429, "quota_exceeded", True

    def __init__(self, retry_after_s: float, limit: str) -> None:
        super().__init__(f"over the {limit} request-rate limit; retry after the Retry-After seconds")
        self.retry_after_s = max(1, int(-(-retry_after_s // 1)))
        self.limit = limit


class RolloutConflict(MlgateError):
    status, code = 409, "rollout_conflict"


class RouteNotFound(MlgateError):
    status, code, default_message = 404, "not_found", "no such endpoint"


class MethodNotAllowed(MlgateError):
    status, code, default_message = 405, "method_not_allowed", "method not allowed on this endpoint"


class RequestTimeout(MlgateError):
    """The caller did not send its whole request within the read timeout; the connection closes."""

    status, code, retryable = 408, "request_timeout", True
    default_message = "the request was not received in time"


class PayloadTooLarge(MlgateError):
    status, code = 413, "payload_too_large"


class TooManyInstances(PayloadTooLarge):
    code = "too_many_instances"


class HeadersTooLarge(MlgateError):
    status, code, default_message = 431, "headers_too_large", "the request headers are too large"


class UnsupportedMediaType(MlgateError):
    status, code, default_message = 415, "unsupported_media_type", "send Content-Type: application/json"


class ModelNotReady(MlgateError):
    status, code, retryable, retry_after_s = 503, "model_not_ready", True, 5


class InferenceLogDisabled(MlgateError):
    status, code = 404, "inference_log_disabled"
    default_message = "this gateway keeps no inference log (inference_log.enabled), so labels have nothing to join"


class DependencyUnavailable(MlgateError):
    status, code, retryable, retry_after_s = 503, "dependency_unavailable", True, 2


class QuotaUnavailable(MlgateError):
    """The quota store could not answer and quotas are configured to fail closed."""

    status, code, retryable, retry_after_s = 503, "quota_unavailable", True, 1
    default_message = "request quotas cannot be checked right now; retry shortly"


class AuthUnavailable(MlgateError):
    """The identity provider's keys could not be fetched to check a token."""

    status, code, retryable, retry_after_s = 503, "auth_unavailable", True, 2
    default_message = "the token cannot be checked right now; retry shortly"


class FallbackUnavailable(MlgateError):
    """The online path could not answer and no usable batch score exists either."""

    status, code, retryable, retry_after_s = 503, "fallback_unavailable", True, 2


class Overloaded(MlgateError):
    status, code, retryable, retry_after_s = 503, "overloaded", True, 1
    default_message = "this gateway replica is at its limit of requests in flight; retry shortly"


class DeadlineExceeded(MlgateError):
    status, code, retryable = 504, "deadline_exceeded", True
    default_message = "the request did not finish within its deadline"


class InternalError(MlgateError):
    """Anything unexpected. Its message is fixed: the cause goes to the log, not the caller."""


class ModelValidationError(Exception):
    """A model refused at load time (bad artifact, wrong schema, failing input example, artifact
    digest mismatch, a flavour not allowed, a graph too large).

    Not an HTTP error: it keeps a model from ever serving, and the gateway reports the model as
    not ready instead.
    """


class RegistryUnavailable(Exception):
    """The MLflow registry or its artifact store could not be asked (unreachable, 5xx, timeout).

    Never a verdict on the model: the gateway retries the load with backoff and does not add
    the version to the ones it refuses for good (unlike :class:`ModelValidationError`).
    """


class CommandFailed(Exception):
    """An expected failure of an ``mlgate`` command: its message says what went wrong and what
    to do. The command line prints it as one line and exits with ``exit_code``."""

    exit_code = 1


class UsageError(CommandFailed):
    """The command was asked for something it cannot do as given (arguments, configuration)."""

    exit_code = 2
