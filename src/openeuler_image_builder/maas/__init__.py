"""MAAS registration: API client, chunked boot-resource upload, listing and deletion.

Facts come from `shared/reference/maas-api.md` (sections in brackets below) and MAAS's own
source where the reference is silent (named where used). The client is plain ``requests``
with a hand-built OAuth 1.0 PLAINTEXT header, as MAAS itself does (section 1); python-libmaas
cannot send ``base_image`` and is not used (docs/maas.md says why).

Public surface (docs/architecture.md): ``MaasClient``, ``check_credentials()``,
``upload_image()``, ``list_images()``, ``delete_image()``, ``api_key_from_environment()``.

The API key never reaches a log record, an exception message, a ``repr`` or a process's
arguments. Packer (and the QEMU it starts) gets an environment without it; background jobs get
the name of a root-only key file, never the key. A standalone run given ``MAAS_API_KEY`` leaves
it in its own environment, which its helpers (tar, pigz) inherit: readable only by the same
user, as the variable already was; ``MAAS_API_KEY_FILE`` avoids even that.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import ssl
import stat
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import requests
import requests.auth
import requests.utils
from requests.adapters import HTTPAdapter

from openeuler_image_builder.core import files
from openeuler_image_builder.core.catalogue import MAAS_ARCHITECTURE, Arch, NameScheme, Release
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.progress import ByteProgress, Reporter, null_reporter
from openeuler_image_builder.core.timestamps import format_utc, utc_now
from openeuler_image_builder.pipeline.pack import manifest_path_for

logger = logging.getLogger(__name__)

# The maas CLI's chunk size (section 5); snap installs refuse bodies over 10 MiB (section 7).
CHUNK_SIZE = 4 * 1024 * 1024
MAX_CHUNK_SIZE = 8 * 1024 * 1024
API_PATH = "api/2.0/"
FILETYPE = "tgz"

API_KEY_ENV = "MAAS_API_KEY"
API_KEY_FILE_ENV = "MAAS_API_KEY_FILE"
MAAS_URL_ENV = "MAAS_URL"

UploadStatus = Literal["uploaded", "already-present"]

# Texts of MAAS's chunk-upload errors (section 5; maasserver/api/boot_resources.py).
_COMPLETE_FILE = "Cannot upload to a complete file."
_TOO_MUCH_DATA = "Too much data received."
_HASH_MISMATCH = "Saved content does not match given SHA256 value."

_FIX_KEY = (
    "get a valid key with `maas apikey --username ADMIN` on a region controller "
    "(or the maas-region charm's get-api-key action) and pass it again"
)
_FIX_ADMIN = (
    "use the key of a MAAS administrator (`maas createadmin`, or the maas-region charm's "
    "create-admin action, then `maas apikey --username ADMIN`)"
)


# --------------------------------------------------------------------------------------------
# Errors


class MaasKeyRejected(UsageError):
    """MAAS answered 401: the API key is unknown, revoked or malformed."""

    def __init__(self, url: str) -> None:
        super().__init__(f"MAAS rejected the API key (HTTP 401 from {url}): {_FIX_KEY}")


class MaasNotAdmin(UsageError):
    """The key is valid but its user may not upload or delete boot resources."""

    def __init__(self, user: str | None = None) -> None:
        who = f" ({user})" if user else ""
        super().__init__(f"the API key's user{who} is not a MAAS admin: {_FIX_ADMIN}")


class MaasUnreachable(StepFailed):
    """No HTTP answer from MAAS (refused, timed out, TLS failure, name not found)."""

    def __init__(self, step: str, url: str, why: str) -> None:
        self.url = url
        self.why = why
        super().__init__(step, f"MAAS is unreachable at {url}: {why}")


class MaasApiError(StepFailed):
    """MAAS answered with an error; ``maas_text`` is MAAS's own error text."""

    def __init__(self, step: str, what: str, status: int, maas_text: str) -> None:
        self.status = status
        self.maas_text = maas_text
        super().__init__(step, f"{what}: MAAS answered HTTP {status}: {maas_text}")


# --------------------------------------------------------------------------------------------
# API key


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """A MAAS API key ``consumer_key:token_key:token_secret`` (section 1)."""

    consumer_key: str
    token_key: str
    token_secret: str = dataclasses.field(repr=False)

    def __repr__(self) -> str:
        return f"ApiKey(consumer_key={self.consumer_key!r}, token_key=..., token_secret=...)"

    @classmethod
    def parse(cls, text: str) -> ApiKey:
        """Split a key; the error message never contains the key itself."""
        parts = text.strip().split(":")
        if len(parts) != 3 or not all(parts):
            raise UsageError(
                f"the MAAS API key must be consumer_key:token_key:token_secret (three non-empty "
                f"fields separated by colons; this one has {len(parts)} field(s)): "
                "copy the whole line printed by `maas apikey --username ADMIN`"
            )
        if any(re.search(r"\s", part) for part in parts):
            raise UsageError(
                "the MAAS API key contains white space inside it: copy the whole line printed "
                "by `maas apikey --username ADMIN`"
            )
        return cls(parts[0], parts[1], parts[2])


def read_api_key_file(path: Path) -> str:
    """Read a key file, refusing one that other users could read or change.

    Raises:
        UsageError: missing, unreadable, group/other-accessible, owned by another user, or not
            exactly one key.
    """
    try:
        info = path.stat()
    except OSError as error:
        raise UsageError(
            f"cannot read the MAAS API key file {path}: {error.strerror}: "
            f"check {API_KEY_FILE_ENV} or --api-key-file"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"the MAAS API key file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise UsageError(
            f"the MAAS API key file {path} is accessible to other users "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): run `chmod 600 {path}`"
        )
    if info.st_uid not in (0, os.geteuid()):
        raise UsageError(
            f"the MAAS API key file {path} belongs to another user (uid {info.st_uid}): "
            "it must be owned by you or root"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read the MAAS API key file {path}: {error}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise UsageError(
            f"the MAAS API key file {path} must hold exactly one key on one line "
            f"(it holds {len(lines)} non-empty lines)"
        )
    return lines[0]


def api_key_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """The API key from ``MAAS_API_KEY``, else from the file named by ``MAAS_API_KEY_FILE``.

    Returns None when neither is set. The file must be readable by its owner only.
    """
    env = os.environ if environ is None else environ
    key = env.get(API_KEY_ENV, "").strip()
    if key:
        return key
    key_file = env.get(API_KEY_FILE_ENV, "").strip()
    if key_file:
        return read_api_key_file(Path(key_file))
    return None


def connection_settings(
    *,
    url: str | None = None,
    key: str | None = None,
    key_file: Path | None = None,
    default_url: str = "",
    environ: Mapping[str, str] | None = None,
) -> tuple[str, str | None]:
    """The MAAS URL and API key to use: given values, else the environment, else defaults.

    URL: ``url``, ``MAAS_URL``, ``default_url`` (the settings' ``maas-url``). Key: ``key``, the
    file ``key_file``, then :func:`api_key_from_environment`. ``""``/None when missing; the
    caller says which of its options to set.

    Raises:
        UsageError: a key file readable by others, or not a key.
    """
    env = os.environ if environ is None else environ
    found_url = url or env.get(MAAS_URL_ENV, "").strip() or default_url
    if key:
        return found_url, key
    if key_file is not None:
        return found_url, read_api_key_file(key_file)
    return found_url, api_key_from_environment(env)


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


def _json_of(response: requests.Response, step: str, what: str) -> Any:
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
        return _json_of(response, step, what or f"reading {path}")

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
        data = _json_of(response, step, f"reading boot resource {resource_id}")
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


# --------------------------------------------------------------------------------------------
# Names (DESIGN "MAAS naming"; section 8 on stored names)


def canonical_name(name: str) -> str:
    """``custom/<x>`` for a bare ``<x>`` (MAAS reads a bare name as custom; section 4)."""
    return name if "/" in name else f"custom/{name}"


def stored_name_variants(name: str) -> tuple[str, ...]:
    """Names MAAS may store for ``name``: up to 3.7 ``custom/`` is stripped, 3.8 keeps it."""
    name = canonical_name(name)
    if name.startswith("custom/"):
        return (name, name.removeprefix("custom/"))
    return (name,)


def scheme_of(name: str) -> NameScheme | None:
    """The naming scheme a (canonical) name belongs to, or None for other OS names."""
    osystem = canonical_name(name).split("/", 1)[0]
    if osystem == "custom":
        return "custom"
    if osystem == "rhel":
        return "rhel"
    return None


def is_our_image(name: str, scheme: NameScheme | None = None) -> bool:
    """Whether a stored boot-resource name follows our naming (``<scheme>/openeuler-...``)."""
    name = canonical_name(name)
    schemes: tuple[NameScheme, ...] = (scheme,) if scheme else ("custom", "rhel")
    return any(name.startswith(f"{s}/openeuler-") for s in schemes)


def maas_arch_of(architecture: str) -> Arch | None:
    """The openEuler architecture of a MAAS ``arch/subarch``, or None."""
    for arch, maas_arch in MAAS_ARCHITECTURE.items():
        if (
            architecture == maas_arch
            or architecture.split("/", 1)[0] == maas_arch.split("/", 1)[0]
        ):
            return arch
    return None


def _version_key(version: str) -> tuple[int, ...] | tuple[int, str]:
    # Set versions are YYYYmmdd or YYYYmmdd.n (section 3). The maas CLI compares them as
    # strings, which ranks "20261127.9" above "20261127.10"; compare the numbers instead.
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1, version)


def newest_set(resource: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The newest set of a resource read with sets: ``(version, set)``, or None."""
    sets = resource.get("sets") or {}
    if not isinstance(sets, dict) or not sets:
        return None
    version = max(sets, key=_version_key)
    return version, sets[version]


def single_file(resource_set: Mapping[str, Any]) -> dict[str, Any] | None:
    """The one file of an uploaded set (``root.tgz``), or None."""
    set_files = resource_set.get("files") or {}
    if isinstance(set_files, dict) and len(set_files) == 1:
        return next(iter(set_files.values()))
    return None


# --------------------------------------------------------------------------------------------
# Image facts: sha256 and size from the manifest beside the tarball, or by hashing


@dataclasses.dataclass(frozen=True)
class ImageFacts:
    """Size and sha256 of a tarball, and where they came from."""

    path: Path
    sha256: str
    size: int
    source: Literal["manifest", "hashed"]
    manifest: Path | None = None
    release: str | None = None
    arch: str | None = None


_IMAGE_NAME = re.compile(r"^openeuler-(?P<release>.+)-(?P<arch>x86_64|aarch64)\.(?:tar\.gz|tgz)$")


def identity_from_filename(tarball: Path) -> tuple[str | None, str | None]:
    """Release and arch from ``openeuler-<release>-<arch>.tar.gz``, else ``(None, None)``."""
    match = _IMAGE_NAME.match(tarball.name)
    if not match:
        return None, None
    return match.group("release"), match.group("arch")


def image_identity(tarball: Path) -> tuple[str | None, str | None]:
    """Release and arch of a tarball: from its manifest when it has them, else its name.

    Reads no more than the manifest (never hashes).
    """
    from_name = identity_from_filename(tarball)
    manifest = manifest_path_for(tarball)
    if not manifest.is_file():
        return from_name
    release, arch = _manifest_identity(_read_manifest(manifest))
    return release or from_name[0], arch or from_name[1]


def _manifest_identity(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    release, arch = data.get("release"), data.get("arch")
    return (
        release if isinstance(release, str) else None,
        arch if isinstance(arch, str) else None,
    )


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(
            f"the manifest {path} cannot be read ({error}): re-run pack, or delete the "
            "manifest to upload the tarball without it (it is then hashed)"
        ) from None
    if not isinstance(data, dict):
        raise UsageError(f"the manifest {path} is not a JSON object: re-run pack or delete it")
    return data


def hash_file(path: Path, *, progress: Reporter = null_reporter) -> tuple[str, int]:
    """sha256 and size of a file, read once (reported as ``upload``: computing sha256)."""
    report = ByteProgress(progress, "upload", "computing sha256")
    return files.hash_file(path, block_size=CHUNK_SIZE, report=report)


def read_image_facts(tarball: Path, *, progress: Reporter = null_reporter) -> ImageFacts:
    """sha256 and size from the manifest (its size checked against the file), else hashed.

    A manifest older than the tarball is not trusted (the tarball changed after packing): the
    file is hashed instead.

    Raises:
        UsageError: the tarball is missing, or the manifest is invalid or disagrees with it.
    """
    try:
        info = tarball.stat()
    except OSError as error:
        raise UsageError(f"cannot read the image {tarball}: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"the image {tarball} is not a regular file")
    if info.st_size == 0:
        raise UsageError(f"the image {tarball} is empty")
    manifest = manifest_path_for(tarball)
    if manifest.is_file():
        data = _read_manifest(manifest)
        sha256 = data.get("sha256")
        size = data.get("size")
        if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise UsageError(
                f"the manifest {manifest} has no valid sha256: re-run pack or delete it"
            )
        if not isinstance(size, int) or isinstance(size, bool):
            raise UsageError(
                f"the manifest {manifest} has no valid size: re-run pack or delete it"
            )
        if size != info.st_size:
            raise UsageError(
                f"{tarball.name} is {info.st_size} bytes but its manifest says {size}: the "
                f"tarball changed after it was packed; rebuild it, or delete {manifest} to "
                "upload it as it is"
            )
        release, arch = _manifest_identity(data)
        if manifest.stat().st_mtime + 1 >= info.st_mtime:
            return ImageFacts(tarball, sha256, size, "manifest", manifest, release, arch)
        logger.warning(
            "%s is newer than its manifest %s: hashing it instead of trusting the manifest",
            tarball,
            manifest,
        )
        sha256, size = hash_file(tarball, progress=progress)
        return ImageFacts(tarball, sha256, size, "hashed", manifest, release, arch)
    sha256, size = hash_file(tarball, progress=progress)
    release, arch = identity_from_filename(tarball)
    return ImageFacts(tarball, sha256, size, "hashed", None, release, arch)


# --------------------------------------------------------------------------------------------
# Upload (sections 4, 5, 6)


@dataclasses.dataclass(frozen=True)
class UploadTarget:
    """What the image is called in MAAS and how it is created."""

    name: str  # canonical: custom/<x> or rhel/<x>
    architecture: str  # MAAS arch/subarch
    title: str
    base_image: str | None  # only for custom/ names

    def form(self, facts: ImageFacts) -> dict[str, str]:
        """The ``POST boot-resources/`` fields: sha256 + size, never ``content``."""
        fields = {
            "name": self.name,
            "architecture": self.architecture,
            "title": self.title,
            "filetype": FILETYPE,
            "sha256": facts.sha256,
            "size": str(facts.size),
        }
        if self.base_image:
            fields["base_image"] = self.base_image
        return fields


def upload_target(
    release: Release,
    arch: Arch,
    *,
    scheme: NameScheme = "custom",
    name: str | None = None,
    title: str | None = None,
) -> UploadTarget:
    """Name, architecture, title and ``base_image`` of an upload (DESIGN "MAAS naming").

    Raises:
        UsageError: a name outside the ``custom/`` and ``rhel/`` OS names, or a name whose
            OS disagrees with ``scheme``.
    """
    if arch not in release.architectures:
        raise UsageError(f"openEuler {release.name} has no {arch} build")
    if name:
        full = canonical_name(name.strip())
        osystem, _, series = full.partition("/")
        if not series or "/" in series or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", series):
            raise UsageError(
                f"invalid MAAS image name {name!r}: use custom/<name> or rhel/<name> with "
                "letters, digits, dots, dashes and underscores"
            )
        found = scheme_of(full)
        if found is None:
            raise UsageError(
                f"invalid MAAS image name {name!r}: an openEuler image must be named "
                f"custom/<name> or rhel/<name>, not {osystem}/..."
            )
        scheme = found
    else:
        full = release.maas_name(scheme)
    return UploadTarget(
        name=full,
        architecture=MAAS_ARCHITECTURE[arch],
        title=title or release.title,
        # base_image only for custom names: MAAS forces it empty for rhel/ (section 4), and a
        # custom image without it is deployed as Ubuntu (section 8).
        base_image=release.maas_base_image if scheme == "custom" else None,
    )


@dataclasses.dataclass(frozen=True)
class UploadResult:
    """What ``upload_image()`` did."""

    status: UploadStatus
    name: str
    architecture: str
    resource_id: int
    set_version: str
    sha256: str
    size: int
    bytes_sent: int = 0
    bytes_read: int = 0
    attempts: int = 0
    duration: float = 0.0
    facts_source: str = "manifest"

    def to_json(self) -> dict[str, object]:
        """JSON-serialisable form (``upload --json``)."""
        return dataclasses.asdict(self)

    def store_record(self, maas_url: str) -> dict[str, str]:
        """What the image store keeps about this upload (``images.record_upload``)."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "sha256": self.sha256,
            "status": self.status,
            "maas_url": maas_url,
            "uploaded_at": format_utc(utc_now()),
        }

    @property
    def message(self) -> str:
        """One line for a human."""
        if self.status == "already-present":
            return f"{self.name} ({self.architecture}) is already in MAAS with this content"
        return (
            f"uploaded {self.name} ({self.architecture}), set {self.set_version}, "
            f"{self.size / 2**20:.1f} MiB, complete on every region controller"
        )


class _Restart(Exception):
    """The set cannot be continued safely: delete it and start over."""


def _region_count(stored: int, progress: float, size: int) -> int | None:
    """Regions behind ``progress`` when one region holds ``stored`` bytes; None if not whole.

    ``progress`` is 100 x (bytes held by all regions) / (size x regions) (section 6).
    """
    count = stored / (progress * size / 100)
    if count < 0.5 or abs(count - round(count)) > 1e-6:
        return None
    return round(count)


def _matching_resources(
    resources: list[dict[str, Any]], name: str, architecture: str
) -> list[dict[str, Any]]:
    names = stored_name_variants(name)
    return [
        item
        for item in resources
        if item.get("type") == "Uploaded"
        and item.get("name") in names
        and item.get("architecture") == architecture
    ]


class _Uploader:
    """One upload: POST, chunked PUTs with recovery, sync wait (see ``upload_image``)."""

    def __init__(
        self,
        client: MaasClient,
        facts: ImageFacts,
        target: UploadTarget,
        *,
        progress: Reporter,
        chunk_size: int,
        sync_timeout: float,
        max_attempts: int,
    ) -> None:
        self.client = client
        self.facts = facts
        self.target = target
        self.progress = progress
        self.chunk_size = chunk_size
        self.sync_timeout = sync_timeout
        self.max_attempts = max_attempts
        self.bytes_sent = 0
        self.bytes_read = 0
        self.attempts = 0
        self._last_percent = 0.0
        self._buffer: memoryview | None = None
        self.started = time.monotonic()

    def result(self, status: UploadStatus, resource_id: int, version: str) -> UploadResult:
        return UploadResult(
            status=status,
            name=self.target.name,
            architecture=self.target.architecture,
            resource_id=resource_id,
            set_version=version,
            sha256=self.facts.sha256,
            size=self.facts.size,
            bytes_sent=self.bytes_sent,
            bytes_read=self.bytes_read,
            attempts=self.attempts,
            duration=round(time.monotonic() - self.started, 3),
            facts_source=self.facts.source,
        )

    # -- steps ---------------------------------------------------------------------------

    def find_complete_copy(self) -> UploadResult | None:
        """A complete newest set with our sha256 under our name: nothing to do.

        Checked before POSTing because a POST always adds a new set and (without keep_old)
        drops the files of the older ones (section 4; maasserver/forms BootResourceForm.save).
        """
        listed = self.client.boot_resources("uploaded", step="upload")
        for item in _matching_resources(listed, self.target.name, self.target.architecture):
            resource = self.client.boot_resource(int(item["id"]), step="upload")
            found = newest_set(resource) if resource else None
            rfile = single_file(found[1]) if found else None
            if (
                found
                and rfile
                and found[1].get("complete")
                and rfile.get("sha256") == self.facts.sha256
            ):
                return self.result("already-present", int(item["id"]), found[0])
        return None

    def create(self) -> tuple[int, str, dict[str, Any]]:
        """POST the resource; returns its id, the new set's version and its file."""
        response = self.client.request(
            "POST", "boot-resources/", step="upload", fields=self.target.form(self.facts)
        )
        self.client.check_auth(response)
        if response.status_code not in (200, 201):
            text = maas_error_text(response)
            try:
                fields = response.json()
            except ValueError:
                fields = None
            if (
                response.status_code == 400
                and isinstance(fields, dict)
                and "architecture" in fields
            ):
                # The form offers only usable architectures, those with boot images (section 4).
                raise StepFailed(
                    "upload",
                    f"MAAS has no boot images for {self.target.architecture}: import Ubuntu "
                    f"{self.target.architecture.split('/')[0]} images first",
                )
            raise MaasApiError(
                "upload",
                f"creating boot resource {self.target.name} ({self.target.architecture})",
                response.status_code,
                text,
            )
        resource = _json_of(response, "upload", f"creating boot resource {self.target.name}")
        found = newest_set(resource)
        rfile = single_file(found[1]) if found else None
        if not found or not rfile:
            note = self.discard(int(resource["id"]))
            raise StepFailed("upload", "MAAS created the boot resource without its file" + note)
        if (
            rfile.get("sha256") != self.facts.sha256
            or int(rfile.get("size", -1)) != self.facts.size
        ):
            note = self.discard(int(resource["id"]))
            raise StepFailed(
                "upload",
                f"MAAS answered with a set for sha256 {rfile.get('sha256')} / size "
                f"{rfile.get('size')}, not the image's {self.facts.sha256} / {self.facts.size}"
                + note,
            )
        return int(resource["id"]), found[0], rfile

    def discard(self, resource_id: int) -> str:
        """Delete an incomplete upload; returns a note for the error message."""
        try:
            self.client.delete_boot_resource(resource_id, step="upload")
        except (StepFailed, UsageError) as error:
            logger.warning("could not remove the incomplete boot resource: %s", error)
            return (
                f"; the incomplete upload (boot resource {resource_id}) could not be removed: "
                f"run maas-delete {self.target.name} or re-run upload"
            )
        logger.info("removed the incomplete boot resource %s", resource_id)
        return "; the incomplete upload was removed from MAAS"

    def report_upload(self, offset: int, force: bool = False) -> None:
        # At most about a hundred reports per attempt: each whole percent, and the end.
        percent = 100 * offset / self.facts.size
        if force or percent - self._last_percent >= 1 or offset >= self.facts.size:
            self._last_percent = percent
            self.progress(
                "upload",
                percent,
                f"{offset / 2**20:.0f}/{self.facts.size / 2**20:.0f} MiB",
            )

    def file_state(self, resource_id: int, version: str) -> dict[str, Any] | None:
        resource = self.client.boot_resource(resource_id, step="upload")
        if resource is None:
            return None
        resource_set = (resource.get("sets") or {}).get(version)
        return single_file(resource_set) if isinstance(resource_set, dict) else None

    def server_offset(
        self, rfile: Mapping[str, Any], offset: int, length: int, regions: int | None
    ) -> tuple[int | None, int | None]:
        """Where MAAS's copy ends after a chunk whose outcome is unknown.

        ``progress`` is 100 x (bytes held by all regions) / (size x regions), not an offset
        (section 6). Before the last byte only the receiving region holds bytes, so with the
        region count known the offset is exact. The count is learnt from the first chunk
        (``regions``); without it only "nothing stored yet" is certain. Returns
        ``(offset or None when unsafe, regions)``.
        """
        size = self.facts.size
        end = offset + length
        if rfile.get("complete"):
            return size, regions
        progress = float(rfile.get("progress") or 0.0)
        if progress == 0.0:
            return (0, regions) if offset == 0 else (None, regions)
        held_per_region = progress * size / 100  # = bytes held by all regions / regions
        if regions is None:
            if offset != 0:
                return None, None
            if end == size:
                # The only chunk: any byte held means MAAS stored it (a PUT appends whole).
                return size, None
            regions = _region_count(length, progress, size)
            if regions is None:
                return None, None
        exact = held_per_region * regions
        if end == size and exact > offset + 0.5:
            # The last chunk was stored; copying to the other regions may have begun.
            return size, regions
        nearest = round(exact)
        if abs(exact - nearest) > 0.01 or nearest not in (offset, end):
            return None, regions
        return nearest, regions

    def calibrate_regions(self, resource_id: int, version: str, offset: int) -> int | None:
        """Region count from the progress after the first chunk (see ``server_offset``)."""
        try:
            rfile = self.file_state(resource_id, version)
        except (StepFailed, UsageError):
            return None
        progress = float((rfile or {}).get("progress") or 0.0)
        return _region_count(offset, progress, self.facts.size) if progress else None

    def send_file(self, handle: Any, resource_id: int, version: str, upload_uri: str) -> None:
        """PUT every chunk in order; returns when MAAS holds the whole file on one region.

        Raises ``_Restart`` when the set cannot be continued safely.
        """
        size = self.facts.size
        offset = 0
        regions: int | None = None
        failures = 0
        handle.seek(0)
        self.report_upload(0, force=True)
        while offset < size:
            length = min(self.chunk_size, size - offset)
            chunk = self.read_chunk(handle, offset, length)
            while True:  # until this chunk is known to be stored
                outcome = self.put_chunk(upload_uri, chunk)
                if outcome == "stored":
                    self.bytes_sent += length
                    failures = 0
                    break
                if outcome == "complete":
                    self.bytes_sent += length
                    return
                failures += 1
                if failures > self.client.retries:
                    raise MaasUnreachable(
                        "upload", self.client.url, f"{outcome} on {failures} tries in a row"
                    )
                self.progress(
                    "upload", 100 * offset / size, f"{outcome}; re-reading the upload state"
                )
                self.client.sleep(self.client.backoff_delay(failures))
                rfile = self.file_state(resource_id, version)
                if rfile is None:
                    raise _Restart("the boot resource disappeared from MAAS during the upload")
                found, regions = self.server_offset(rfile, offset, length, regions)
                logger.info("after %s at byte %d MAAS holds up to byte %s", outcome, offset, found)
                if found is None:
                    raise _Restart(f"after {outcome} MAAS's copy could not be matched to a chunk")
                if found == size:
                    self.bytes_sent += length
                    return
                if found == offset + length:
                    self.bytes_sent += length
                    break
                # found == offset: nothing of this chunk was stored; send it again.
            offset += length
            self.report_upload(offset)
            if regions is None and offset < size and offset == length:
                regions = self.calibrate_regions(resource_id, version, offset)

    def read_chunk(self, handle: Any, offset: int, length: int) -> memoryview:
        """Read ``length`` bytes at ``offset`` into the one reused buffer.

        Reusing one buffer (instead of a new 4 MiB ``bytes`` per chunk) saves the allocation
        and its page faults; the memoryview goes to the socket as it is.
        """
        if self._buffer is None or len(self._buffer) < length:
            self._buffer = memoryview(bytearray(max(length, self.chunk_size)))
        view = self._buffer[:length]
        if handle.tell() != offset:
            handle.seek(offset)
        done = 0
        while done < length:
            count = handle.readinto(view[done:])
            if not count:
                raise StepFailed("upload", f"{self.facts.path} shrank while it was being uploaded")
            done += count
        self.bytes_read += done
        return view

    def put_chunk(self, upload_uri: str, chunk: bytes | memoryview) -> str:
        """PUT one chunk.

        Returns ``stored``, ``complete``, or a short description of a failure whose outcome is
        unknown. Raises for answers that end the attempt or the upload.
        """
        try:
            response = self.client.request(
                "PUT",
                upload_uri,
                step="upload",
                data=chunk,
                headers={"Content-Type": "application/octet-stream"},
                retry=False,
            )
        except MaasUnreachable as error:
            return error.why
        status = response.status_code
        if status == 200:
            return "stored"
        self.client.check_auth(response)
        if status >= 500:
            return f"HTTP {status}"
        text = maas_error_text(response)
        if status == 400 and _COMPLETE_FILE in text:
            return "complete"
        if status == 400 and _TOO_MUCH_DATA in text:
            raise _Restart(f"MAAS answered: {text}")
        if status == 400 and _HASH_MISMATCH in text:
            self.check_file_unchanged(text)
            raise _Restart(f"MAAS answered: {text}")
        if status == 404:
            raise _Restart("the boot resource disappeared from MAAS during the upload")
        if status == 413:
            raise MaasApiError(
                "upload",
                f"uploading a {len(chunk)}-byte chunk (over the MAAS request-body limit)",
                status,
                text,
            )
        raise MaasApiError("upload", "uploading a chunk", status, text)

    def check_file_unchanged(self, maas_text: str) -> None:
        """After MAAS's hash mismatch: a changed file is fatal, transit damage is retried."""
        actual, _ = hash_file(self.facts.path, progress=self.progress)
        self.bytes_read += self.facts.size
        if actual != self.facts.sha256:
            origin = (
                f"its manifest {self.facts.manifest}"
                if self.facts.source == "manifest"
                else "the hash taken before the upload"
            )
            raise StepFailed(
                "upload",
                f"MAAS answered: {maas_text} The tarball's sha256 is now {actual}, but "
                f"{origin} says {self.facts.sha256}: the file changed; rebuild the image"
                + (f" or delete {self.facts.manifest}" if self.facts.manifest else ""),
            )

    def wait_for_sync(self, resource_id: int, version: str) -> None:
        """Poll until the set is complete on every region controller (section 6)."""
        deadline = time.monotonic() + self.sync_timeout
        interval = 0.2
        percent: float | None = None
        while True:
            resource = self.client.boot_resource(resource_id, step="upload")
            resource_set = ((resource or {}).get("sets") or {}).get(version)
            if not isinstance(resource_set, dict):
                raise StepFailed(
                    "upload",
                    f"the uploaded set {version} of {self.target.name} disappeared from MAAS "
                    "while it was being copied to the region controllers",
                )
            if resource_set.get("complete"):
                self.progress("sync", 100, "complete on every region controller")
                return
            percent = float(resource_set.get("progress") or 0.0)
            self.progress("sync", percent, "copying to every region controller")
            if time.monotonic() >= deadline:
                raise StepFailed(
                    "upload",
                    f"MAAS has not copied {self.target.name} to every region controller within "
                    f"{self.sync_timeout:.0f} s ({percent:.0f}% done); it goes on copying in "
                    "the background: check later with maas-list (if it never completes, a load "
                    "balancer may have spread the chunks over several regions; upload to one "
                    "region's URL)",
                )
            self.client.sleep(interval)
            interval = min(interval * 1.5, 5.0)

    def run(self) -> UploadResult:
        present = self.find_complete_copy()
        if present:
            self.progress("upload", 100, "already in MAAS")
            return present
        with self.facts.path.open("rb", buffering=0) as handle:
            last_reason = ""
            while self.attempts < self.max_attempts:
                self.attempts += 1
                resource_id, version, rfile = self.create()
                if rfile.get("complete"):
                    # MAAS already holds this content (section 5, step 3).
                    self.progress("upload", 100, "already in MAAS")
                    return self.result("already-present", resource_id, version)
                try:
                    self.send_file(handle, resource_id, version, str(rfile["upload_uri"]))
                except _Restart as restart:
                    last_reason = str(restart)
                    logger.warning(
                        "upload attempt %d/%d of %s: %s; deleting the set and starting over",
                        self.attempts,
                        self.max_attempts,
                        self.target.name,
                        last_reason,
                    )
                    note = self.discard(resource_id)
                    if "could not" in note:
                        raise StepFailed("upload", last_reason + note) from None
                    self.progress("upload", 0, f"starting over: {last_reason}"[:60])
                    continue
                except BaseException as error:
                    # Never leave a broken set behind: remove it, then report.
                    note = self.discard(resource_id)
                    if isinstance(error, MaasUnreachable):
                        raise MaasUnreachable("upload", error.url, error.why + note) from None
                    if isinstance(error, StepFailed):
                        raise StepFailed("upload", error.reason + note) from None
                    raise
                self.wait_for_sync(resource_id, version)
                return self.result("uploaded", resource_id, version)
        raise StepFailed(
            "upload",
            f"gave up after {self.max_attempts} attempts: {last_reason}; nothing was left in MAAS",
        )


def upload_image(
    client: MaasClient,
    tarball: Path,
    *,
    release: Release,
    arch: Arch,
    scheme: NameScheme = "custom",
    name: str | None = None,
    title: str | None = None,
    progress: Reporter = null_reporter,
    sync_timeout: float = 1800,
    chunk_size: int = CHUNK_SIZE,
    max_attempts: int = 3,
) -> UploadResult:
    """Register a root-filesystem tarball as a MAAS boot resource (section 5), idempotently.

    1. sha256 and size from the manifest beside the tarball (size checked), else hashed.
    2. Our name already holds a complete newest set with that sha256: ``already-present``.
    3. ``POST boot-resources/`` with sha256 + size (never ``content``), name, title,
       architecture, ``filetype=tgz`` and ``base_image`` for ``custom/`` names.
    4. PUT chunks of at most ``chunk_size`` (4 MiB) to ``upload_uri``. After a failed chunk the
       resource is re-read to learn whether MAAS stored it; when that cannot be told, or MAAS
       refuses the data, the set is deleted and the upload starts over (``max_attempts``).
    5. Poll until the set is complete on every region controller (``sync_timeout``).

    Progress phases: ``upload`` (percent of bytes), ``sync`` (MAAS's percentage).

    Raises:
        UsageError: bad input (file, manifest, name), or MaasKeyRejected / MaasNotAdmin.
        StepFailed: step ``upload``: MAAS's error text, unusable architecture, unreachable MAAS,
            sync timeout. No incomplete set is left behind when MAAS can be reached.
    """
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise UsageError(f"chunk size must be 1..{MAX_CHUNK_SIZE} bytes (MAAS body limit)")
    target = upload_target(release, arch, scheme=scheme, name=name, title=title)
    facts = read_image_facts(tarball, progress=progress)
    if facts.arch and facts.arch != arch:
        raise UsageError(
            f"{tarball.name} is an {facts.arch} image (its manifest says so), not {arch}: "
            f"pass --arch {facts.arch} or the right image"
        )
    if facts.source == "manifest" and facts.release and facts.release != release.name:
        raise UsageError(
            f"{tarball.name} is openEuler {facts.release} (its manifest says so), not "
            f"{release.name}: pass --release {facts.release} or the right image"
        )
    uploader = _Uploader(
        client,
        facts,
        target,
        progress=progress,
        chunk_size=chunk_size,
        sync_timeout=sync_timeout,
        max_attempts=max(1, max_attempts),
    )
    result = uploader.run()
    logger.info("%s", result.message)
    return result


# --------------------------------------------------------------------------------------------
# Listing and deletion


@dataclasses.dataclass(frozen=True)
class MaasImage:
    """One of our images in MAAS, described by its newest set."""

    resource_id: int
    name: str  # canonical (custom/ prefix restored on MAAS <= 3.7)
    stored_name: str
    architecture: str
    arch: Arch | None
    title: str
    base_image: str | None
    state: str  # complete | incomplete | empty
    progress: float | None  # percentage across regions while incomplete
    size: int | None
    sha256: str | None
    set_version: str | None

    def to_json(self) -> dict[str, object]:
        """JSON-serialisable form (``maas-list --json``)."""
        return dataclasses.asdict(self)


def _image_from_resource(resource: Mapping[str, Any]) -> MaasImage:
    found = newest_set(resource)
    rfile = single_file(found[1]) if found else None
    if not found or not rfile:
        state, percent = "empty", None
    elif found[1].get("complete"):
        state, percent = "complete", None
    else:
        state, percent = "incomplete", float(found[1].get("progress") or 0.0)
    stored = str(resource.get("name", ""))
    architecture = str(resource.get("architecture", ""))
    return MaasImage(
        resource_id=int(resource.get("id", 0)),
        name=canonical_name(stored),
        stored_name=stored,
        architecture=architecture,
        arch=maas_arch_of(architecture),
        title=str(resource.get("title", "")),
        base_image=resource.get("base_image") or None,
        state=state,
        progress=percent,
        size=int(rfile["size"]) if rfile and "size" in rfile else None,
        sha256=rfile.get("sha256") if rfile else None,
        set_version=found[0] if found else None,
    )


def list_images(client: MaasClient, scheme: NameScheme | None = None) -> list[MaasImage]:
    """Our uploaded images (names ``custom/openeuler-*``, ``rhel/openeuler-*``), by name."""
    images = []
    for item in client.boot_resources("uploaded", step="maas-list"):
        if item.get("type") != "Uploaded" or not is_our_image(str(item.get("name", "")), scheme):
            continue
        resource = client.boot_resource(int(item["id"]), step="maas-list")
        if resource is not None:
            images.append(_image_from_resource(resource))
    return sorted(images, key=lambda image: (image.name, image.architecture))


def delete_image(client: MaasClient, name: str, arch: Arch) -> bool:
    """Delete the uploaded boot resource ``name`` for ``arch``; False when there is none.

    ``name`` may be given with or without ``custom/``; both stored forms match (section 8).
    Only uploaded resources are considered, never synced Ubuntu images.
    """
    architecture = MAAS_ARCHITECTURE[arch]
    listed = client.boot_resources("uploaded", step="maas-delete")
    deleted = False
    for item in _matching_resources(listed, name, architecture):
        deleted |= client.delete_boot_resource(int(item["id"]), step="maas-delete")
    return deleted
