"""The pipelines' names, compiled file names and default image: what the command line needs before it imports kfp."""

from components import __version__
from components.model.contract import ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS

DEFAULT_IMAGE = f"image-registry.openshift-image-registry.svc:5000/self-healing-platform/model-pipelines:{__version__}"
ROLLOUT = "model-rollout"
MONITOR = "model-monitor"
PIPELINE_FILES = {
    ANOMALY_DETECTOR: "anomaly-detector-retrain.yaml",
    PREDICTIVE_ANALYTICS: "predictive-analytics-retrain.yaml",
    ROLLOUT: "model-rollout.yaml",
    MONITOR: "model-monitor.yaml",
}


def pipeline_file(key: str) -> str:
    """Return the compiled file name of the pipeline ``key`` (a model's retrain is ``<model>-retrain.yaml``)."""
    return PIPELINE_FILES.get(key) or (f"{key}.yaml" if key.endswith(("-rollout", "-monitor")) else f"{key}-retrain.yaml")


def model_pipeline_key(model: str, pipeline: str) -> str:
    """Return the key of a spec model's own pipeline: its retrain (``pipeline`` names the model), rollout (ROLLOUT) or monitor (MONITOR)."""
    return {ROLLOUT: f"{model}-rollout", MONITOR: f"{model}-monitor"}.get(pipeline, model)


def pipeline_name(key: str) -> str:
    """Return the name a KFP server knows the pipeline ``key`` by: its compiled file's name without .yaml."""
    return pipeline_file(key).removesuffix(".yaml")
