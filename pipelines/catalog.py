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
