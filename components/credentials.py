"""Where bearer tokens come from and where they may go, for every client in the project that sends one.

A token is never a run parameter: it comes from an environment variable (a Secret's key injected into the pod,
or exported on a laptop), else from the pod's service-account token, which goes only to in-cluster ``*.svc`` services.
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
SERVICE_ACCOUNT_NAMESPACE = SERVICE_ACCOUNT_TOKEN.with_name("namespace")
SERVICE_CA_BUNDLE = SERVICE_ACCOUNT_TOKEN.with_name("service-ca.crt")  # OpenShift's service CA, which signs *.svc certificates
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}  # a token may go over plain http only to this machine


def token_from_environment(variable: str, url: str = "") -> str:
    """Return ``$variable``, else the pod's service-account token when ``url`` is a service inside the cluster, else "".

    The pod's own token never goes to a host a run parameter could point elsewhere: only to ``*.svc`` (``*.svc.cluster.local``)
    services. A token for any other host comes from a Secret's key in ``$variable``."""
    if os.environ.get(variable, "").strip():  # a Secret made with --from-file from `oc create token` output ends in a newline
        return os.environ[variable].strip()
    return SERVICE_ACCOUNT_TOKEN.read_text().strip() if SERVICE_ACCOUNT_TOKEN.is_file() and in_cluster_service(url) else ""


def trusted_cas(url: str, ca_bundle: str) -> str | bool:
    """Return what verifies ``url``'s certificate: ``ca_bundle``, else the pod's service CA for an in-cluster ``*.svc`` address
    (what signs those certificates on OpenShift), else True (the CAs the HTTP library ships, not the system's)."""
    if ca_bundle:
        return ca_bundle
    return str(SERVICE_CA_BUNDLE) if in_cluster_service(url) and SERVICE_CA_BUNDLE.is_file() else True


def pod_namespace() -> str:
    """Return the namespace this pod runs in, or "" outside a cluster."""
    return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() if SERVICE_ACCOUNT_NAMESPACE.is_file() else ""


def in_cluster_service(url: str) -> bool:
    """Return whether ``url`` names a Kubernetes service of this cluster (``<name>.<namespace>.svc``, optionally ``.cluster.local``)."""
    host = (urllib.parse.urlparse(url).hostname or "").lower()
    return host.endswith(".svc") or host.endswith(".svc.cluster.local")


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
        answer = requests.request(method, url, params=params, json=body, headers=headers, timeout=timeout_s, verify=trusted_cas(url, ca_bundle),
                                  allow_redirects=False)
    except requests.exceptions.SSLError as failure:
        raise error(f"TLS to {advice.name} at {_origin(url)} failed ({failure.__class__.__name__}); {advice.tls}") from None
    except requests.exceptions.InvalidHeader:
        raise error(_unsendable_token(advice, url)) from None
    except requests.RequestException as failure:
        raise error(f"cannot reach {advice.name} at {_origin(url)} ({failure.__class__.__name__}); {advice.unreachable}") from None
    except ValueError:  # http.client refuses a header ending in a newline, which requests lets through; its message quotes the token
        raise error(_unsendable_token(advice, url)) from None
    except OSError as failure:  # requests raises it for a CA bundle path that does not exist
        raise error(f"TLS to {advice.name} at {_origin(url)} cannot start ({failure.__class__.__name__}: no CA bundle at {ca_bundle!r}); "
                    f"{advice.tls}") from None
    if answer.status_code in (401, 403):
        raise error(f"{advice.name} at {_origin(url)} refused the credentials ({answer.status_code}); {advice.refused}")
    if answer.is_redirect:  # e.g. a route's OAuth login page: following it would carry the token to another host
        elsewhere = _origin(urllib.parse.urljoin(url, answer.headers["Location"]))
        raise error(f"{advice.name} at {_origin(url)} answered {answer.status_code}, a redirect to {elsewhere}, which is never followed so that "
                    f"a token stays on its host; {advice.unreachable} (the API's own address, not a page that redirects)")
    return answer


def json_object(answer: requests.Response) -> dict | None:
    """Return the answer's body when it is a JSON object, else None (a login page, a list, nothing)."""
    try:
        found = answer.json()
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _unsendable_token(advice: ApiAdvice, url: str) -> str:
    """Return the error for a token no HTTP header may carry, without quoting it."""
    return (f"{advice.name} at {_origin(url)} was not called: the token has a line break inside it, which no HTTP header may hold; "
            f"{advice.refused}, with the token alone")


def _origin(url: str) -> str:
    """Return the scheme and host[:port] of ``url`` (what errors name: never a path or query that could carry data)."""
    parsed = urllib.parse.urlparse(url)
    return f"{parsed.scheme}://{parsed.netloc}"
