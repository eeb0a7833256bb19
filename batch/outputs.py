"""What a batch score stores of a model's outputs, whatever the model names them.

The score view (:func:`features_online.definitions.score_view`) has two fields per entity,
``label`` (long) and ``score`` (double). A binary classifier stores its label and the
probability of the positive class; a regressor (one numeric output) stores label 0 and its
prediction. The gateway names the fallback answers it serves from these fields after the
``outputs`` fact recorded with the scores: ``label,probability`` or ``prediction``.

Runs in Spark's Python workers too: numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from features_online.definitions import CLASSIFIER_OUTPUTS, REGRESSOR_OUTPUTS

CLASSIFIER, REGRESSOR = CLASSIFIER_OUTPUTS, REGRESSOR_OUTPUTS


class UnscorableOutputs(ValueError):
    """The model's outputs fit neither a binary classifier nor a single-output regressor."""


@dataclass(frozen=True)
class ScoreOutputs:
    """Which graph outputs become ``label`` and ``score``."""

    kind: str
    """``CLASSIFIER`` or ``REGRESSOR``: recorded as the ``outputs`` fact of the scores."""
    score: str
    """The output holding the score: a positive-class probability (1-D, or column 1 of an
    [N, 2] matrix) or a prediction ([N] or [N, 1])."""
    label: str | None = None
    """The output holding the label (classifiers)."""

    def scores(self, out: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(label int64, score float64), one each per row, from one ``predict`` result."""
        score = np.asarray(out[self.score])
        if score.ndim == 2:
            score = score[:, 1] if self.label is not None else score[:, 0]
        score = score.astype(np.float64, copy=False)
        if self.label is None:
            return np.zeros(len(score), np.int64), score
        return np.asarray(out[self.label]).reshape(-1).astype(np.int64, copy=False), score


def score_outputs(names: Sequence[str], shapes: Mapping[str, Sequence] | None = None) -> ScoreOutputs:
    """How a model with outputs ``names`` is stored (``shapes``: each output's declared shape,
    dimensions as ints or None/str when free; used to refuse multi-class matrices early).

    Classifier: ``label`` plus ``probability`` (1-D) or ``probabilities`` ([N, 2]). Regressor:
    a single output, or one named ``prediction``. Raises :class:`UnscorableOutputs` otherwise.
    """
    shapes = shapes or {}
    if "label" in names:
        for name in ("probability", "probabilities"):
            if name in names:
                shape = list(shapes.get(name) or ())
                if name == "probabilities" and shape and (len(shape) != 2 or _fixed(shape[1], not_=2)):
                    raise UnscorableOutputs(f"output {name!r} of shape {shape}: batch scores store the "
                                            "positive class of a binary classifier only")
                return ScoreOutputs(CLASSIFIER, score=name, label="label")
        raise UnscorableOutputs("a classifier needs a 'probability' or 'probabilities' output beside 'label'")
    if REGRESSOR in names:
        return ScoreOutputs(REGRESSOR, score=REGRESSOR)
    if len(names) == 1:
        shape = list(shapes.get(names[0]) or ())
        if len(shape) > 2 or (len(shape) == 2 and _fixed(shape[1], not_=1)):
            raise UnscorableOutputs(f"output {names[0]!r} of shape {shape}: a regressor has one value per row")
        return ScoreOutputs(REGRESSOR, score=names[0])
    raise UnscorableOutputs(f"outputs {list(names)}: expected label and probability (a binary classifier) "
                            "or a single prediction (a regressor)")


def _fixed(dim, not_: int) -> bool:
    """A declared dimension that is a number other than ``not_`` (free ones are None or names)."""
    return isinstance(dim, int) and dim != not_
