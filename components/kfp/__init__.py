"""The KFP side: thin step wrappers, the steps' bodies as the pipeline runs them, and the run parameters."""
