"""The retraining pipelines: one DAG per model, wiring the step components and exposing their knobs."""

from pathlib import Path
from typing import NamedTuple
from types import SimpleNamespace

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Markdown, Metrics

from components import __version__, steps
from components.contract import ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS
from components.evaluate import Gates
from components.storage import DEFAULT_PVC, DEFAULT_STORE_ROOT
from components.train import DetectorParams, ForecasterParams

DEFAULT_IMAGE = f"image-registry.openshift-image-registry.svc:5000/self-healing-platform/model-pipelines:{__version__}"
PIPELINE_FILES = {ANOMALY_DETECTOR: "anomaly-detector-retrain.yaml", PREDICTIVE_ANALYTICS: "predictive-analytics-retrain.yaml"}
STEP_FUNCTIONS = (
    steps.ingest,
    steps.train_anomaly_detector,
    steps.train_predictive_analytics,
    steps.evaluate_anomaly_detector,
    steps.evaluate_predictive_analytics,
    steps.save_to_storage,
)
DETECTOR = DetectorParams()
FORECASTER = ForecasterParams()
GATES = Gates()
# Every pipeline returns its evaluation, so that local runs and the kfp client can summarise a run.
PipelineOutputs = NamedTuple("PipelineOutputs", [("metrics", Metrics), ("report", Markdown)])


def make_components(image: str) -> SimpleNamespace:
    """Return the step components built on ``image``: no KFP install and no pip install at pod start."""
    return SimpleNamespace(
        **{
            function.__name__: dsl.component(func=function, base_image=image, install_kfp_package=False)
            for function in STEP_FUNCTIONS
        }
    )


def _uses_model_store(task: dsl.PipelineTask, pvc_name) -> dsl.PipelineTask:
    """Mount the model-store PVC on a task that reads or writes the store, and never cache it."""
    kubernetes.mount_pvc(task, pvc_name=pvc_name, mount_path=DEFAULT_STORE_ROOT)
    return task.set_caching_options(False)


def build_anomaly_detector_pipeline(image: str = DEFAULT_IMAGE):
    """Return the anomaly-detector retraining pipeline on ``image``."""
    ops = make_components(image)

    @dsl.pipeline(
        name="anomaly-detector-retrain",
        description="Retrain the anomaly detector: ingest, train, evaluate against gates and the champion, save.",
    )
    def anomaly_detector_retrain(
        source: str = "synthetic",
        file_path: str = "",
        days: float = 10.0,
        seed: int = 42,
        validation_fraction: float = 0.3,
        algorithm: str = DETECTOR.algorithm,
        scaler: str = DETECTOR.scaler,
        n_estimators: int = DETECTOR.n_estimators,
        max_samples: int = DETECTOR.max_samples,
        pca_components: int = DETECTOR.pca_components,
        target_false_positive_rate: float = DETECTOR.target_false_positive_rate,
        random_state: int = DETECTOR.random_state,
        min_f1: float = GATES.min_f1,
        max_predict_latency_ms: float = GATES.max_predict_latency_ms,
        max_pickle_mb: float = GATES.max_pickle_mb,
        champion_tolerance: float = GATES.champion_tolerance,
        pvc_name: str = DEFAULT_PVC,
    ) -> PipelineOutputs:
        ingest = ops.ingest(
            model_name=ANOMALY_DETECTOR, source=source, file_path=file_path, days=days, seed=seed,
            validation_fraction=validation_fraction,
        ).set_caching_options(False)
        train = ops.train_anomaly_detector(
            train_data=ingest.outputs["train_data"], algorithm=algorithm, scaler=scaler, n_estimators=n_estimators,
            max_samples=max_samples, pca_components=pca_components,
            target_false_positive_rate=target_false_positive_rate, random_state=random_state,
        )
        evaluate = _uses_model_store(
            ops.evaluate_anomaly_detector(
                model=train.outputs["model"], validation_data=ingest.outputs["validation_data"],
                data_description=ingest.outputs["Output"], min_f1=min_f1,
                max_predict_latency_ms=max_predict_latency_ms, max_pickle_mb=max_pickle_mb,
                champion_tolerance=champion_tolerance,
            ),
            pvc_name,
        )
        _save_if_approved(ops, ANOMALY_DETECTOR, train, evaluate, pvc_name)
        return PipelineOutputs(metrics=evaluate.outputs["metrics"], report=evaluate.outputs["report"])

    return anomaly_detector_retrain


def build_predictive_analytics_pipeline(image: str = DEFAULT_IMAGE):
    """Return the predictive-analytics retraining pipeline on ``image``."""
    ops = make_components(image)

    @dsl.pipeline(
        name="predictive-analytics-retrain",
        description="Retrain the forecaster: ingest, train, evaluate against persistence and the champion, save.",
    )
    def predictive_analytics_retrain(
        source: str = "synthetic",
        file_path: str = "",
        days: float = 10.0,
        seed: int = 42,
        validation_fraction: float = 0.3,
        horizon_minutes: int = FORECASTER.horizon_minutes,
        alpha: float = FORECASTER.alpha,
        max_mase: float = GATES.max_mase,
        max_predict_latency_ms: float = GATES.max_predict_latency_ms,
        max_pickle_mb: float = GATES.max_pickle_mb,
        champion_tolerance: float = GATES.champion_tolerance,
        pvc_name: str = DEFAULT_PVC,
    ) -> PipelineOutputs:
        ingest = ops.ingest(
            model_name=PREDICTIVE_ANALYTICS, source=source, file_path=file_path, days=days, seed=seed,
            validation_fraction=validation_fraction,
        ).set_caching_options(False)
        train = ops.train_predictive_analytics(
            train_data=ingest.outputs["train_data"], horizon_minutes=horizon_minutes, alpha=alpha
        )
        evaluate = _uses_model_store(
            ops.evaluate_predictive_analytics(
                model=train.outputs["model"], validation_data=ingest.outputs["validation_data"],
                data_description=ingest.outputs["Output"], horizon_minutes=horizon_minutes, max_mase=max_mase,
                max_predict_latency_ms=max_predict_latency_ms, max_pickle_mb=max_pickle_mb,
                champion_tolerance=champion_tolerance,
            ),
            pvc_name,
        )
        _save_if_approved(ops, PREDICTIVE_ANALYTICS, train, evaluate, pvc_name)
        return PipelineOutputs(metrics=evaluate.outputs["metrics"], report=evaluate.outputs["report"])

    return predictive_analytics_retrain


def _save_if_approved(ops: SimpleNamespace, model_name: str, train, evaluate, pvc_name) -> None:
    """Wire the save step under ``If(deploy)``; later deploy, smoke-test and canary steps hang here too."""
    with dsl.If(evaluate.outputs["Output"] == True, name="deploy-approved"):  # noqa: E712 (KFP condition syntax)
        _uses_model_store(
            ops.save_to_storage(
                model_name=model_name, model=train.outputs["model"], metrics=evaluate.outputs["metrics"],
                pvc_name=pvc_name, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            ),
            pvc_name,
        )


BUILDERS = {ANOMALY_DETECTOR: build_anomaly_detector_pipeline, PREDICTIVE_ANALYTICS: build_predictive_analytics_pipeline}


def compile_pipelines(output_dir: "str | Path", image: str = DEFAULT_IMAGE) -> list[Path]:
    """Compile both pipelines to ``output_dir`` and return the written YAML paths."""
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for model_name, builder in BUILDERS.items():
        path = directory / PIPELINE_FILES[model_name]
        compiler.Compiler().compile(builder(image), str(path))
        written.append(path)
    return written
