"""Model runtimes: resolve a registered model, load it, validate it, score batches."""

from serving.runtime.base import FeatureSpec, ModelRuntime, ModelSpec

__all__ = ["FeatureSpec", "ModelRuntime", "ModelSpec"]
