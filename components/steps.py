"""Thin KFP wrappers: each parses its inputs, calls one step function and writes KFP outputs.

The functions are plain so that ``pipelines.retrain`` can turn them into components on any image with
``dsl.component(func=..., base_image=image, install_kfp_package=False)``; they import the project inside their
bodies because KFP ships only the function source to the pod, where the image provides the package.
"""

from typing import NamedTuple

from kfp.dsl import ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def ingest(
    model_name: str,
    source: str,
    file_path: str,
    days: float,
    seed: int,
    validation_fraction: float,
    train_data: Output[Dataset],
    validation_data: Output[Dataset],
) -> str:
    """Read raw metrics from the source, validate them and write train/validation Parquet; return a description."""
    from components.ingest import IngestRequest, ingest as run_ingest

    result = run_ingest(IngestRequest(model_name, source, file_path, days, seed, validation_fraction))
    result.train.to_parquet(train_data.path, index=False)
    result.validation.to_parquet(validation_data.path, index=False)
    train_data.metadata.update({"rows": len(result.train), "source": source})
    validation_data.metadata.update({"rows": len(result.validation), "source": source})
    print(result.description)
    return result.description


def train_anomaly_detector(
    train_data: Input[Dataset],
    algorithm: str,
    scaler: str,
    n_estimators: int,
    max_samples: int,
    pca_components: int,
    target_false_positive_rate: float,
    random_state: int,
    model: Output[Model],
):
    """Fit the anomaly detector and write model.pkl plus training.json into the Model artifact directory."""
    import json
    from pathlib import Path

    import pandas as pd

    from components.train import DetectorParams, save_model, train_anomaly_detector as fit

    params = DetectorParams(algorithm, scaler, n_estimators, max_samples, pca_components, target_false_positive_rate, random_state)
    trained = fit(pd.read_parquet(train_data.path), params)
    directory = Path(model.path)
    save_model(trained, directory)
    training = {"parameters": trained.parameters, "data_fingerprint": trained.data_fingerprint, "training_rows": trained.training_rows}
    (directory / "training.json").write_text(json.dumps(training, indent=2))
    model.metadata.update(training)


def train_predictive_analytics(
    train_data: Input[Dataset],
    horizon_minutes: int,
    alpha: float,
    model: Output[Model],
):
    """Fit the forecaster and write model.pkl plus training.json into the Model artifact directory."""
    import json
    from pathlib import Path

    import pandas as pd

    from components.train import ForecasterParams, save_model, train_predictive_analytics as fit

    trained = fit(pd.read_parquet(train_data.path), ForecasterParams(horizon_minutes, alpha))
    directory = Path(model.path)
    save_model(trained, directory)
    training = {"parameters": trained.parameters, "data_fingerprint": trained.data_fingerprint, "training_rows": trained.training_rows}
    (directory / "training.json").write_text(json.dumps(training, indent=2))
    model.metadata.update(training)


def evaluate_anomaly_detector(
    model: Input[Model],
    validation_data: Input[Dataset],
    data_description: str,
    min_f1: float,
    max_predict_latency_ms: float,
    max_pickle_mb: float,
    champion_tolerance: float,
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[Markdown],
) -> bool:
    """Score the detector, check the contract, gates and champion; return whether to deploy (reason in the report)."""
    from components.evaluate import Gates
    from components.workflow import evaluate_step

    gates = Gates(min_f1=min_f1, max_predict_latency_ms=max_predict_latency_ms, max_pickle_mb=max_pickle_mb, champion_tolerance=champion_tolerance)
    evaluation, markdown = evaluate_step("anomaly-detector", model.path, validation_data.path, data_description, gates)
    for name, value in evaluation.metrics.items():
        metrics.log_metric(name, round(value, 6))
    classification_metrics.log_confusion_matrix(["normal", "anomaly"], evaluation.confusion)
    if evaluation.roc is not None:
        classification_metrics.log_roc_curve(*evaluation.roc)
    with open(report.path, "w") as handle:
        handle.write(markdown)
    print(markdown)
    return evaluation.deploy


def evaluate_predictive_analytics(
    model: Input[Model],
    validation_data: Input[Dataset],
    data_description: str,
    horizon_minutes: int,
    max_mase: float,
    max_predict_latency_ms: float,
    max_pickle_mb: float,
    champion_tolerance: float,
    metrics: Output[Metrics],
    report: Output[Markdown],
) -> bool:
    """Score the forecaster, check the contract, gates and champion; return whether to deploy (reason in the report)."""
    from components.evaluate import Gates
    from components.workflow import evaluate_step

    gates = Gates(max_mase=max_mase, max_predict_latency_ms=max_predict_latency_ms, max_pickle_mb=max_pickle_mb, champion_tolerance=champion_tolerance)
    evaluation, markdown = evaluate_step(
        "predictive-analytics", model.path, validation_data.path, data_description, gates, horizon_minutes=horizon_minutes
    )
    for name, value in evaluation.metrics.items():
        metrics.log_metric(name, round(value, 6))
    with open(report.path, "w") as handle:
        handle.write(markdown)
    print(markdown)
    return evaluation.deploy


def save_to_storage(
    model_name: str,
    model: Input[Model],
    metrics: Input[Metrics],
    pvc_name: str,
    run_name: str,
) -> NamedTuple("SaveOutputs", [("version", str), ("storage_uri", str)]):
    """Store the model as the next immutable version; return the version and its storageUri."""
    from collections import namedtuple

    from components.workflow import save_step

    stored = save_step(model_name, model.path, dict(metrics.metadata), pvc_name, run_name)
    print(f"saved {model_name} {stored.version} -> {stored.storage_uri} ({stored.location})")
    return namedtuple("SaveOutputs", ["version", "storage_uri"])(stored.version, stored.storage_uri)
