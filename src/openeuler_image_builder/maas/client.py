"""The MAAS API 2.0 client: signed requests with timeouts and retries, and a credentials check.

Facts come from ``shared/reference/maas-api.md`` (sections in brackets) and MAAS's own source
where the reference is silent (named where used). The client is plain ``requests`` with a
hand-built OAuth 1.0 PLAINTEXT header, as MAAS itself does (section 1); python-libmaas cannot
send ``base_image`` and is not used (docs/maas.md says why).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import ssl
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import requests
import requests.auth
import requests.utils
from requests.adapters import HTTPAdapter

from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.maas.credentials import ApiKey
from openeuler_image_builder.maas.errors import (
    MaasApiError,
    MaasKeyRejected,
    MaasNotAdmin,
    MaasUnreachable,
)

logger = logging.getLogger(__name__)

API_PATH = "api/2.0/"


class _PlaintextOAuth(requests.auth.AuthBase):
    """OAuth 1.0 PLAINTEXT header, fresh nonce and timestamp per request (section 1)."""

    def __init__(self, key: ApiKey) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "_PlaintextOAuth(...)"

    def header(self) -> str:
        """The ``Authorization`` header value."""
        params = {
            "oauth_version": "1.0",
            "oauth_signature_method": "PLAINTEXT",
            "oauth_consumer_key": self._key.consumer_key,
            "oauth_token": self._key.token_key,
            # The consumer secret is empty: signature = "&" + token secret (RFC 5849 3.4.4).
            "oauth_signature": "&" + self._key.token_secret,
            "oauth_nonce": uuid.uuid4().hex,
            "oauth_timestamp": str(int(time.time())),
        }
        return "OAuth " + ", ".join(f'{k}="{quote(v, safe="~")}"' for k, v in params.items())

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self.header()
        return request


class _CaCertificateAdapter(HTTPAdapter):
    """Verifies TLS against one CA certificate given as PEM text (no file needed)."""

    def __init__(self, pem: str) -> None:
        try:
            self._context = ssl.create_default_context(cadata=pem)
        except (ssl.SSLError, ValueError) as error:
            raise UsageError(
                f"the MAAS CA certificate is not valid PEM ({error}): give the PEM text of "
                "the CA that signed the MAAS certificate"
            ) from None
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)
        # requests points every connection at certifi's bundle; trust only the given CA.
        conn.ca_certs = None
        conn.ca_cert_dir = None


# --------------------------------------------------------------------------------------------
# Client


def normalise_maas_url(url: str) -> str:
    """``http(s)://host[:port]/MAAS`` without a trailing slash or ``/api/2.0``.

    A URL without a path gets ``/MAAS`` (what ``maas login`` expects).
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"invalid MAAS URL {url!r}: use http://HOST:5240/MAAS or https://HOST:5443/MAAS"
        )
    path = parts.path.rstrip("/")
    path = re.sub(r"/api/2\.0$", "", path)
    if not path:
        path = "/MAAS"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _connection_reason(error: BaseException) -> str:
    text = str(error)
    for needle, reason in (
        ("CERTIFICATE_VERIFY_FAILED", "TLS certificate verification failed"),
        ("certificate verify failed", "TLS certificate verification failed"),
        ("WRONG_VERSION_NUMBER", "TLS handshake failed (is it an http:// URL?)"),
        ("Connection refused", "connection refused"),
        ("Name or service not known", "host name not found"),
        ("Temporary failure in name resolution", "host name not found"),
        ("No route to host", "no route to host"),
        ("Network is unreachable", "network unreachable"),
        ("Connection reset", "connection reset"),
        ("Broken pipe", "connection reset"),
        ("RemoteDisconnected", "connection closed by the server"),
        ("timed out", "timed out"),
    ):
        if needle in text:
            return reason
    if isinstance(error, requests.Timeout):
        return "timed out"
    return type(error).__name__


def json_of(response: requests.Response, step: str, what: str) -> Any:
    """The decoded JSON of a successful answer; raises ``MaasApiError`` when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        raise MaasApiError(step, what, response.status_code, "answer is not JSON") from None


def maas_error_text(response: requests.Response) -> str:
    """MAAS's own error text from a response, on one line.

    Validation errors come as JSON ``{"field": ["message", ...]}``; others as plain text.
    """
    body = response.text.strip()
    text = body
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        items = []
        for field, messages in data.items():
            joined = (
                "; ".join(str(m) for m in messages) if isinstance(messages, list) else messages
            )
            items.append(str(joined) if field == "__all__" else f"{field}: {joined}")
        text = "; ".join(items)
    elif isinstance(data, list):
        text = "; ".join(str(item) for item in data)
    elif body.startswith("<"):
        # An HTML error page (nginx, haproxy): the title says enough.
        match = re.search(r"<title>(.*?)</title>", body, re.IGNORECASE | re.DOTALL)
        text = match.group(1).strip() if match else ""
    text = " ".join(text.split())
    if 300 <= response.status_code < 400 and response.headers.get("Location"):
        return f"redirected to {response.headers['Location']}: give that URL instead"
    if not text:
        text = response.reason or "no error text"
    return text[:500]


class MaasClient:
    """One MAAS region's API 2.0, with a keep-alive session.

    Every call has a timeout. Calls are retried with exponential backoff on connection errors
    and 5xx answers (``retries`` times), never on 4xx. Chunk uploads are never retried here:
    they append, so ``upload_image()`` decides after re-reading the resource.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        ca_certificate: str | None = None,
        timeout: float = 30,
        retries: int = 5,
        backoff: float = 0.5,
    ) -> None:
        self.url = normalise_maas_url(url)
        self.api_url = self.url + "/" + API_PATH
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.sleep: Callable[[float], None] = time.sleep
        self._auth = _PlaintextOAuth(ApiKey.parse(api_key))
        self.session = requests.Session()
        # Proxy variables are read once here, not on every request (requests re-reads the whole
        # environment per request when trust_env is on: measurable over ~256 chunks per GiB).
        self.session.proxies.update(requests.utils.get_environ_proxies(self.url))
        self.session.trust_env = False
        self.session.headers["User-Agent"] = "openeuler-image-builder"
        self.session.headers["Accept"] = "application/json"
        if ca_certificate:
            self.session.mount("https://", _CaCertificateAdapter(ca_certificate))

    def __repr__(self) -> str:
        return f"MaasClient({self.url!r})"

    def __enter__(self) -> MaasClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the session's connections."""
        self.session.close()

    def backoff_delay(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): exponential, capped, jittered."""
        base: float = min(self.backoff * (2 ** (attempt - 1)), 10.0)
        return base * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not cryptography

    def endpoint(self, path: str) -> str:
        """Absolute URL of an API path (``boot-resources/``) or an absolute path from MAAS."""
        if path.startswith("/"):
            return urljoin(self.url, path)
        return self.api_url + path

    def request(
        self,
        method: str,
        path: str,
        *,
        step: str = "maas",
        params: Mapping[str, str] | None = None,
        fields: Mapping[str, str] | None = None,
        data: bytes | memoryview | None = None,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
        retry: bool = True,
        timeout: float | None = None,
    ) -> requests.Response:
        """Send one request; returns the response whatever its status.

        ``fields`` go as multipart/form-data, as the maas CLI sends them. Retries connection
        errors and 5xx when ``retry``; raises ``MaasUnreachable`` when no answer came.
        """
        url = self.endpoint(path)
        attempts = 1 + (self.retries if retry else 0)
        multipart = {name: (None, value) for name, value in fields.items()} if fields else None
        for attempt in range(1, attempts + 1):
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    files=multipart,
                    data=data,
                    headers=dict(headers or {}),
                    auth=self._auth if authenticated else None,
                    timeout=timeout or self.timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as error:
                why = _connection_reason(error)
                logger.debug("%s %s: %s (attempt %d/%d)", method, url, why, attempt, attempts)
                if attempt == attempts or "TLS" in why:
                    raise MaasUnreachable(step, self.url, why) from None
                self.sleep(self.backoff_delay(attempt))
                continue
            logger.debug("%s %s -> %d", method, url, response.status_code)
            if response.status_code >= 500 and attempt < attempts:
                self.sleep(self.backoff_delay(attempt))
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def check_auth(self, response: requests.Response) -> None:
        """Raise the key errors for 401 and 403 answers."""
        if response.status_code == 401:
            raise MaasKeyRejected(self.url)
        if response.status_code == 403:
            raise MaasNotAdmin()

    def get_json(self, path: str, *, step: str = "maas", what: str = "", **kwargs: Any) -> Any:
        """GET an API path and decode its JSON; raises on any error status."""
        response = self.request("GET", path, step=step, **kwargs)
        self.check_auth(response)
        if response.status_code != 200:
            raise MaasApiError(
                step, what or f"reading {path}", response.status_code, maas_error_text(response)
            )
        return json_of(response, step, what or f"reading {path}")

    # Endpoints (sections 2 and 3) --------------------------------------------------------

    def version(self, *, step: str = "maas") -> dict[str, Any]:
        """``GET version/`` (anonymous): ``version``, ``subversion``, ``capabilities``."""
        data = self.get_json("version/", step=step, authenticated=False, what="reading version")
        return data if isinstance(data, dict) else {}

    def whoami(self, *, step: str = "maas") -> dict[str, Any]:
        """``GET users/?op=whoami``: the key's user (``username``, ``is_superuser``).

        Not in the reference; maasserver/api/users.py ``UsersHandler.whoami`` (any user).
        """
        data = self.get_json(
            "users/", step=step, params={"op": "whoami"}, what="reading the key's user"
        )
        return data if isinstance(data, dict) else {}

    def boot_resources(
        self, rtype: Literal["uploaded", "synced"] | None = None, *, step: str = "maas"
    ) -> list[dict[str, Any]]:
        """``GET boot-resources/`` (items without sets)."""
        params = {"type": rtype} if rtype else None
        data = self.get_json(
            "boot-resources/", step=step, params=params, what="listing boot resources"
        )
        return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []

    def boot_resource(self, resource_id: int, *, step: str = "maas") -> dict[str, Any] | None:
        """``GET boot-resources/{id}/`` with sets; None when it no longer exists."""
        path = f"boot-resources/{resource_id}/"
        response = self.request("GET", path, step=step)
        self.check_auth(response)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise MaasApiError(
                step,
                f"reading boot resource {resource_id}",
                response.status_code,
                maas_error_text(response),
            )
        data = json_of(response, step, f"reading boot resource {resource_id}")
        return data if isinstance(data, dict) else None

    def delete_boot_resource(self, resource_id: int, *, step: str = "maas") -> bool:
        """``DELETE boot-resources/{id}/``; False when it did not exist."""
        response = self.request("DELETE", f"boot-resources/{resource_id}/", step=step)
        self.check_auth(response)
        if response.status_code == 404:
            return False
        if response.status_code not in (200, 204):
            raise MaasApiError(
                step,
                f"deleting boot resource {resource_id}",
                response.status_code,
                maas_error_text(response),
            )
        return True


# --------------------------------------------------------------------------------------------
# Credentials


@dataclasses.dataclass(frozen=True)
class CredentialCheck:
    """What one cheap authenticated call told about MAAS and the key."""

    url: str
    version: str
    user: str
    is_admin: bool
    capabilities: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """JSON-serialisable form."""
        return {
            "url": self.url,
            "version": self.version,
            "user": self.user,
            "is_admin": self.is_admin,
            "capabilities": list(self.capabilities),
        }


def check_credentials(
    client: MaasClient, *, require_admin: bool = True, step: str = "maas"
) -> CredentialCheck:
    """Check the URL and key with two small calls: ``version/`` and ``users/?op=whoami``.

    Raises:
        MaasUnreachable: no answer from the URL.
        MaasKeyRejected: 401.
        MaasNotAdmin: 403, or (with ``require_admin``) the user is not a superuser.
        MaasApiError: any other error answer.
    """
    version = client.version(step=step)
    user = client.whoami(step=step)
    username = str(user.get("username", ""))
    is_admin = bool(user.get("is_superuser", False))
    if require_admin and not is_admin:
        raise MaasNotAdmin(username or None)
    return CredentialCheck(
        url=client.url,
        version=str(version.get("version", "unknown")),
        user=username,
        is_admin=is_admin,
        capabilities=tuple(str(c) for c in version.get("capabilities", []) or []),
    )
