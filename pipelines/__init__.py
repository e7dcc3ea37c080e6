"""Pipeline wiring, compilation, local runs and the ``model-pipelines`` command line."""
