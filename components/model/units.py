"""The units a model input is sent in, each with its largest plausible value and the mix-ups that overshoot it.

A model spec names an input's unit by the member's name in lower case (``ratio``, ``cores``, ``count``, ``per_second``,
``days``); ``components.model.contract`` checks every value against these limits and names the likely mix-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Unit(str, Enum):
    """The unit a base metric is sent in."""

    RATIO = "ratio 0-1"
    CORES = "CPU cores"
    COUNT = "cumulative count"
    PER_SECOND = "per second"
    DAYS = "days"

    @property
    def spec_name(self) -> str:
        """Return the name a model spec uses for this unit (``ratio``, ``per_second`` ...)."""
        return self.name.lower()


@dataclass(frozen=True)
class MixUp:
    """A unit a metric is sent in by mistake, and how many of it make one contract unit (percent: 100 per ratio)."""

    name: str
    factor: float


@dataclass(frozen=True)
class UnitLimits:
    """A unit's largest plausible value, the mix-ups that overshoot it, and the fix when none of them explains a value."""

    expected: str  # what a value must be, for messages
    maximum: float
    mix_ups: tuple[MixUp, ...]
    fix: str


# The largest plausible value of each unit, and why:
UNIT_LIMITS: dict[Unit, UnitLimits] = {
    # A ratio is at most 1 by definition (contract §2-3). Percent is the usual mix-up, and upstream's own.
    Unit.RATIO: UnitLimits("a ratio 0-1", 1.0, (MixUp("percent", 100.0),), "scale it to 0-1"),
    # The default query sums the CPU of every container in the cluster. Kubernetes supports clusters of at most 5,000
    # nodes (kubernetes.io, "Considerations for large clusters"): even 200 busy cores on each is 1e6 cores. Kubernetes
    # tools show millicores ("250m"); the kubelet's summary API reports nanocores (usageNanoCores).
    Unit.CORES: UnitLimits("CPU cores (at most 1e6, a whole cluster's)", 1e6, (MixUp("millicores", 1e3), MixUp("nanocores", 1e9)),
                           "send CPU cores, the rate() of container_cpu_usage_seconds_total, not the counter itself"),
    # 150,000 pods, Kubernetes' documented maximum, each restarting every 5 minutes (the kubelet's longest back-off) for
    # three weeks restart 0.9e9 times. A larger value is another series, such as a timestamp in epoch seconds (1.7e9).
    Unit.COUNT: UnitLimits("a cumulative count (at most 1e9)", 1e9, (),
                           "send the cumulative restart count, e.g. sum(kube_pod_container_status_restarts_total), not a timestamp"),
    # A rate such as IOPS or requests per second. 5,000 nodes each doing 2e5 operations a second is 1e9; above it is
    # the counter itself (a busy disk's completed-I/O counter passes 1e9 within days), not its rate().
    Unit.PER_SECOND: UnitLimits("a rate per second (at most 1e9)", 1e9, (),
                                "send the rate() of the counter, e.g. rate(node_disk_writes_completed_total[5m]), not the counter"),
    # A duration in days, such as a disk's age, is below a century. SMART reports power-on hours and smartctl_exporter
    # power-on seconds: a year is 8,760 hours or 31.5e6 seconds.
    Unit.DAYS: UnitLimits("days (at most 36500)", 36500.0, (MixUp("hours", 24.0), MixUp("seconds", 86400.0)),
                          "send days, e.g. smartctl_device_power_on_seconds / 86400"),
}
