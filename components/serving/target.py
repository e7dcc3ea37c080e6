"""The serving seam: what deploy, smoke-test and canary-promote need from a place that serves models.

``LocalTarget`` (KServe model servers on this machine) and the Kubernetes target both implement
``ServingTarget``; the pipeline steps only ever talk to this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class ServingError(RuntimeError):
    """A serving operation failed; the message names what failed and what to do."""


@dataclass(frozen=True)
class ServingStatus:
    """Which versions serve a model, how traffic is split, and the URL its clients call."""

    model_name: str
    stable: str | None
    candidate: str | None
    candidate_percent: int
    url: str | None

    def as_json(self) -> dict:
        """Return the status in the ``serve status --json`` shape."""
        return {"url": self.url, "stable": self.stable, "candidate": self.candidate, "candidate_percent": self.candidate_percent}


@dataclass(frozen=True)
class Endpoints:
    """Model URLs (``.../v1/models/<name>``): the main one clients call, and each version's own."""

    main: str | None
    stable: str | None
    candidate: str | None


class ServingTarget(Protocol):
    """Somewhere a model is served with a stable version and at most one candidate."""

    # Whether malformed requests are answered 4xx (our server) or 5xx with an error body (stock sklearn runtime).
    strict_client_errors: bool

    def deploy(self, model_name: str, version: str, storage_uri: str, checksum: str, timeout_s: float) -> ServingStatus:
        """Serve ``version``: as stable when nothing serves yet, else as the candidate at 0 % traffic; wait until ready."""

    def status(self, model_name: str) -> ServingStatus:
        """Return the current serving status."""

    def set_traffic(self, model_name: str, candidate_percent: int, timeout_s: float) -> ServingStatus:
        """Send ``candidate_percent`` of the main URL's traffic to the candidate; wait until it applies."""

    def promote(self, model_name: str, timeout_s: float) -> ServingStatus:
        """Make the candidate the stable version with all traffic; wait until it applies."""

    def rollback(self, model_name: str, timeout_s: float, *, reason: str) -> ServingStatus:
        """Send all traffic to stable and remove the candidate (stable is never touched), recording ``reason`` where the
        target keeps a history (gitops: the revert commit); wait.
        """

    def remove(self, model_name: str, version: str, timeout_s: float, *, reason: str) -> ServingStatus:
        """Stop serving the stable ``version`` of a first deployment this run created, recording ``reason`` where the target
        keeps a history; refuse anything else; wait.
        """

    def endpoints(self, model_name: str) -> Endpoints:
        """Return the main, stable and candidate model URLs."""

    def traffic_strategy(self, model_name: str) -> str:
        """Return one sentence on how candidate traffic is shifted for this model (shown in canary reports)."""

    def metric_scope(self, model_name: str) -> str:
        """Return extra PromQL label matchers (",cluster=~..." or "") that limit live metrics to where the candidate serves."""


def namespace_scope(namespace: str) -> str:
    """Return the PromQL label matcher that limits live metrics to ``namespace`` ("" for none), as ``metric_scope`` returns it."""
    return f',namespace="{namespace}"' if namespace else ""


def model_url(base: str, model_name: str) -> str:
    """Return the v1 model URL under a server's base URL."""
    return f"{base.rstrip('/')}/v1/models/{model_name}"
