"""The serving seam and its targets: local model servers, KServe InferenceServices, a GitOps fleet."""
