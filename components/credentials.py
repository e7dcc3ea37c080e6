"""Where bearer tokens come from and where they may go, for every client in the project that sends one.

A token is never a run parameter: it comes from an environment variable (a Secret's key injected into the pod,
or exported on a laptop), else from the pod's service-account token.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}  # a token may go over plain http only to this machine


def token_from_environment(variable: str) -> str:
    """Return ``$variable``, else the pod's service-account token, else ""."""
    return os.environ.get(variable, "") or (SERVICE_ACCOUNT_TOKEN.read_text().strip() if SERVICE_ACCOUNT_TOKEN.is_file() else "")


def token_may_go_to(url: str) -> bool:
    """Return whether a token may be sent to ``url``: over https, or over plain http to this machine."""
    parsed = urllib.parse.urlparse(url)
    return parsed.scheme == "https" or parsed.hostname in LOOPBACK_HOSTS
