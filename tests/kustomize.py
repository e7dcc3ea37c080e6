"""The kustomizations under manifests/, rendered the way a user applies them: ``kubectl kustomize`` (kustomize v5)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import REPO

MANIFESTS = REPO / "manifests"
KUSTOMIZATIONS = sorted(path.parent.name for path in MANIFESTS.glob("*/kustomization.yaml"))


def rendered(directory: Path) -> list[dict]:
    """Return the objects ``kubectl kustomize directory`` renders, in its order."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not on PATH: the manifest tests render with `kubectl kustomize`; install kubectl 1.27 or later (kustomize v5)"
    rendered = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, f"kubectl kustomize {directory} failed: {rendered.stderr.strip()}"
    return [document for document in yaml.safe_load_all(rendered.stdout) if document]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    """Return the objects of one kind."""
    return [item for item in objects if item["kind"] == kind]
