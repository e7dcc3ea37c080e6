"""Each OpenShift AI release's own DSP backend protos, compiled at test time with grpcio-tools into a private pool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

DSP_BACKENDS = REPO.parent / "shared" / "reference" / "dsp-backends"


def releases() -> list[str]:
    """Return the release folders that hold protos (empty when shared/ is not beside the clone)."""
    return sorted(path.name for path in DSP_BACKENDS.iterdir() if (path / "pipeline_spec.proto").is_file()) if DSP_BACKENDS.is_dir() else []


def message_classes(release: str, work: Path):
    """Return (PipelineSpec, KubernetesExecutorConfig) message classes built from ``release``'s protos."""
    import google.rpc.status_pb2
    import grpc_tools
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    folder = DSP_BACKENDS / release
    descriptors = work / f"{release}.pb"
    includes = [folder, Path(grpc_tools.__file__).parent / "_proto", Path(google.rpc.status_pb2.__file__).parents[2]]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", *(f"-I{path}" for path in includes), "--include_imports",
                    f"--descriptor_set_out={descriptors}", str(folder / "pipeline_spec.proto"), str(folder / "kubernetes_executor_config.proto")],
                   check=True, capture_output=True)
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes()).file:
        pool.Add(file)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("ml_pipelines.PipelineSpec")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("kfp_kubernetes.KubernetesExecutorConfig")))


def strict_parse_errors(documents: list[dict], classes) -> list[str]:
    """Return what the backend's strict parser refuses: the pipeline spec and every executor's Kubernetes config."""
    from google.protobuf import json_format

    pipeline_class, executor_class = classes
    errors = []
    try:
        json_format.ParseDict(documents[0], pipeline_class(), ignore_unknown_fields=False)
    except json_format.ParseError as error:
        errors.append(f"pipeline spec: {error}")
    for name, config in documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        try:
            json_format.ParseDict(config, executor_class(), ignore_unknown_fields=False)
        except json_format.ParseError as error:
            errors.append(f"{name}: {error}")
    return errors
