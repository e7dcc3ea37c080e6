"""The model registry (OpenShift AI / Kubeflow Model Registry, REST API v1alpha3): where every stored version is registered.

Data flows one way, store -> registry: ``sync.sync_model`` makes the registry match the store's index (each version, its
artifact and its status); nothing the registry says changes the store, except the properties a human sets there that a
step reads on purpose (``registered_properties``: the approval gate's ``approved``).
"""
