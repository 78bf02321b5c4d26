"""The proxy every download of the host set-up and of a build goes through.

The Juju model's proxy (``JUJU_CHARM_HTTP_PROXY``, ``JUJU_CHARM_HTTPS_PROXY``,
``JUJU_CHARM_NO_PROXY``) or, standalone, the usual proxy variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit


def proxy_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Proxy variables for every download, in both spellings tools look for.

    The Juju model's proxy (``JUJU_CHARM_HTTP_PROXY``, ``..._HTTPS_PROXY``, ``..._NO_PROXY``) wins;
    otherwise the usual ``http_proxy``/``HTTP_PROXY`` etc. of the environment are kept.
    """
    environ = os.environ if environ is None else environ
    result: dict[str, str] = {}
    for name in ("http_proxy", "https_proxy", "no_proxy"):
        value = (
            environ.get(f"JUJU_CHARM_{name.upper()}")
            or environ.get(name)
            or environ.get(name.upper())
        )
        if value:
            result[name] = value
            result[name.upper()] = value
    return result


def redact_url(url: str) -> str:
    """A URL without its user and password (proxy URLs may carry credentials)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))
