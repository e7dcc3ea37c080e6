"""What a model's answers mean, by its spec's type: what the runtime calls, which class an answer is, and when it alerts.

The runtime, the smoke test, the canary and the monitor read answers through these functions, so none of them asks
which model it serves. An anomaly model answers -1/1 labels, a predictive model a row of values, a classification
model a class label or, with ``outputs.probabilities``, a row of one probability per declared class (predict_proba's
columns, ascending class values), which the stock sklearn runtime serves when its predictor has ``PREDICT_PROBA=true``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from components.model.spec import ANOMALY, CLASSIFICATION, ModelSpec

if TYPE_CHECKING:
    import numpy as np

PREDICT_PROBA_ENV = "PREDICT_PROBA"  # the stock sklearnserver's switch (kserve python/sklearnserver/sklearnserver/model.py)


def predictor_environment(spec: ModelSpec) -> dict[str, str]:
    """Return the environment a predictor of ``spec`` needs beyond the version: PREDICT_PROBA=true when it serves probabilities."""
    return {PREDICT_PROBA_ENV: "true"} if spec.outputs.probabilities else {}


def answers_are_labels(spec: ModelSpec) -> bool:
    """Return whether ``spec``'s answers are one JSON integer per instance (anomaly labels, or classes without probabilities)."""
    return spec.type == ANOMALY or (spec.type == CLASSIFICATION and not spec.outputs.probabilities)


def offline_answers(model: object, spec: ModelSpec, instances: np.ndarray) -> np.ndarray:
    """Return what the stock runtime serves for ``instances``: ``predict_proba`` when ``spec`` serves probabilities, else ``predict``."""
    return model.predict_proba(instances) if spec.outputs.probabilities else model.predict(instances)


def alert_rule(spec: ModelSpec) -> tuple[int, float | None]:
    """Return (the class that alerts, the probability above which it does) of a classification spec.

    ``outputs.alert`` when the spec gives one; else the last declared class (the positive class of a binary
    classifier) whenever it is the predicted class, the threshold None.
    """
    alert = spec.outputs.alert
    return (alert.class_value, alert.threshold) if alert else (spec.outputs.classes[-1].value, None)


def predicted_classes(spec: ModelSpec, answers: np.ndarray) -> np.ndarray:
    """Return the class value of each classification answer: the label itself, or the most probable class of a probability row."""
    import numpy as np

    if answers.ndim == 2:
        return np.asarray([item.value for item in spec.outputs.classes])[np.argmax(answers, axis=1)]
    return answers


def alert_probabilities(spec: ModelSpec, answers: np.ndarray) -> np.ndarray:
    """Return the alert class's probability in each probability row of a classification spec."""
    values = [item.value for item in spec.outputs.classes]
    return answers[:, values.index(alert_rule(spec)[0])]


def alerts(spec: ModelSpec, answers: np.ndarray) -> np.ndarray:
    """Return, per classification answer, whether a caller alerts: the alert class's probability above the threshold, else the
    alert class predicted."""
    alert_class, threshold = alert_rule(spec)
    if threshold is not None and answers.ndim == 2:
        return alert_probabilities(spec, answers) > threshold
    return predicted_classes(spec, answers) == alert_class
