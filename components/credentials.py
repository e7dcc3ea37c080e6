"""Where bearer tokens come from and where they may go, for every client in the project that sends one.

A token is never a run parameter: it comes from an environment variable (a Secret's key injected into the pod,
or exported on a laptop), else from the pod's service-account token.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # requests is imported where a call is made: the command line's quick verbs never load it
    import requests

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}  # a token may go over plain http only to this machine


def token_from_environment(variable: str) -> str:
    """Return ``$variable``, else the pod's service-account token, else ""."""
    return os.environ.get(variable, "") or (SERVICE_ACCOUNT_TOKEN.read_text().strip() if SERVICE_ACCOUNT_TOKEN.is_file() else "")


def token_may_go_to(url: str) -> bool:
    """Return whether a token may be sent to ``url``: over https, or over plain http to this machine."""
    parsed = urllib.parse.urlparse(url)
    return parsed.scheme == "https" or parsed.hostname in LOOPBACK_HOSTS


@dataclass(frozen=True)
class ApiAdvice:
    """How an HTTP API is named in errors, and the fix to print when it cannot be reached, TLS fails or it refuses the credentials."""

    name: str  # "Prometheus", "the KFP API" ...
    unreachable: str
    tls: str
    refused: str


def api_request(method: str, url: str, advice: ApiAdvice, error: type[Exception], *, headers: dict, timeout_s: float, ca_bundle: str = "",
                params: dict | None = None, body: dict | None = None) -> requests.Response:
    """Return the answer to one call (redirects not followed, so a token never leaves its host), or raise ``error`` with the fix."""
    import requests

    try:
        answer = requests.request(method, url, params=params, json=body, headers=headers, timeout=timeout_s, verify=ca_bundle or True,
                                         allow_redirects=False)
    except requests.exceptions.SSLError as failure:
        raise error(f"TLS to {advice.name} at {_origin(url)} failed ({failure.__class__.__name__}); {advice.tls}") from None
    except requests.RequestException as failure:
        raise error(f"cannot reach {advice.name} at {_origin(url)} ({failure.__class__.__name__}); {advice.unreachable}") from None
    if answer.status_code in (401, 403):
        raise error(f"{advice.name} at {_origin(url)} refused the credentials ({answer.status_code}); {advice.refused}")
    return answer


def _origin(url: str) -> str:
    """Return the scheme and host[:port] of ``url`` (what errors name: never a path or query that could carry data)."""
    parsed = urllib.parse.urlparse(url)
    return f"{parsed.scheme}://{parsed.netloc}"
