"""Ops-side helpers of the charm: MAAS access (URL, secret, key file, credential check), peer data.

Everything that needs ``ops`` but is not an event handler lives here, so ``charm.py`` stays a
list of handlers. The workload package (``openeuler_image_builder``) never imports this.

The MAAS API key is read from the Juju secret named by ``maas-api-key``, kept in memory only as
long as a hook needs it, and written to one root-only file (0600 in a 0700 directory) that
background jobs read. It never goes into logs, action results, relation data or argv.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import ops
from charms.openeuler_image_builder.v0.maas_controller import MaasEndpoint

from openeuler_image_builder import fleet, maas
from openeuler_image_builder.errors import StepFailed, UsageError
from openeuler_image_builder.settings import Settings

logger = logging.getLogger(__name__)

API_KEY_FIELD = "key"
# Calls made inside hooks and actions must answer in seconds, not in the client's defaults.
HOOK_MAAS_TIMEOUT = 10.0
HOOK_MAAS_RETRIES = 1

CheckKind = Literal["ok", "rejected", "not-admin", "unreachable", "error"]


# --- MAAS access ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MaasAccess:
    """Where MAAS is and the key to use, or why there is none.

    Attributes:
        url: the MAAS URL in use ("" when none): ``maas-url`` config, else the relation's.
        url_source: ``config``, ``relation`` or "".
        secret_id: the ``maas-api-key`` option ("" when unset).
        key: the API key (never logged; excluded from repr).
        blocked: what the operator must do before MAAS can be used (Blocked status), or None.
        waiting: what the charm waits for (Waiting status), or None.
    """

    url: str = ""
    url_source: Literal["config", "relation", ""] = ""
    secret_id: str = ""
    key: str | None = dataclasses.field(default=None, repr=False)
    blocked: str | None = None
    waiting: str | None = None

    @property
    def configured(self) -> bool:
        """A URL and a readable, well-formed key: uploads can work."""
        return bool(self.url and self.key) and self.blocked is None

    @property
    def wanted(self) -> bool:
        """The operator configured some part of MAAS (a URL or a key)."""
        return bool(self.url or self.secret_id)

    @property
    def host(self) -> str:
        """The host part of the URL."""
        return MaasEndpoint(self.url).host if self.url else ""

    def fingerprint(self, ca_certificate: str) -> str:
        """Identifies URL, key and CA: a change means the credentials must be checked again.

        Only a digest of the key enters it; the key itself is never stored here.
        """
        key_digest = hashlib.sha256((self.key or "").encode()).hexdigest()
        text = "\0".join((self.url, key_digest, ca_certificate))
        return hashlib.sha256(text.encode()).hexdigest()

    def client(self, settings: Settings) -> maas.MaasClient:
        """A client for hooks and actions (short timeout, one retry)."""
        if not self.configured or self.key is None:
            raise UsageError("MAAS is not configured")
        return maas.MaasClient(
            self.url,
            self.key,
            ca_certificate=settings.maas_ca_certificate or None,
            timeout=HOOK_MAAS_TIMEOUT,
            retries=HOOK_MAAS_RETRIES,
        )


def grant_command(secret_id: str, app_name: str) -> str:
    """The command that lets the application read the secret."""
    return f"juju grant-secret {secret_id} {app_name}"


def read_api_key(model: ops.Model, secret_id: str, app_name: str) -> tuple[str | None, str | None]:
    """The API key from the ``maas-api-key`` secret (newest revision), or why it cannot be read.

    Returns:
        ``(key, None)`` or ``(None, blocked message)``.
    """
    try:
        secret = model.get_secret(id=secret_id)
        content = secret.get_content(refresh=True)
    except ops.SecretNotFoundError:
        return None, (
            f"cannot read secret {secret_id} (maas-api-key): it does not exist or is not "
            f"granted to {app_name}: run '{grant_command(secret_id, app_name)}'"
        )
    except ops.ModelError:
        # Juju says "permission denied" for a user secret that exists but was not granted.
        return None, (
            f"cannot read secret {secret_id} (maas-api-key): permission denied: run "
            f"'{grant_command(secret_id, app_name)}'"
        )
    key = (content.get(API_KEY_FIELD) or "").strip()
    if not key:
        return None, (
            f"secret {secret_id} (maas-api-key) has no '{API_KEY_FIELD}' field: run "
            f"'juju update-secret {secret_id} {API_KEY_FIELD}=<MAAS API key>'"
        )
    try:
        maas.ApiKey.parse(key)
    except UsageError as error:  # the message never contains the key
        return None, f"secret {secret_id} (maas-api-key): {error}"
    return key, None


def resolve_maas_access(
    model: ops.Model,
    app_name: str,
    settings: Settings,
    *,
    secret_id: str,
    endpoint: MaasEndpoint | None,
    relation_problem: str | None,
) -> MaasAccess:
    """Combine ``maas-url``, the maas-region relation and the ``maas-api-key`` secret."""
    if settings.maas_url:
        url, source = settings.maas_url, "config"
    elif endpoint is not None:
        url, source = endpoint.api_url, "relation"
    else:
        url, source = "", ""
    key, problem = (None, None)
    if secret_id:
        key, problem = read_api_key(model, secret_id, app_name)
    if problem:
        return MaasAccess(url, source, secret_id, None, blocked=problem)
    if not url:
        if relation_problem:
            return MaasAccess("", "", secret_id, key, waiting=relation_problem)
        if secret_id:
            return MaasAccess(
                "",
                "",
                secret_id,
                key,
                blocked=(
                    "maas-api-key is set but there is no MAAS URL: integrate with maas-region "
                    "('juju integrate <this app> maas-region') or set maas-url"
                ),
            )
        return MaasAccess()
    if not secret_id:
        return MaasAccess(
            url,
            source,
            "",
            None,
            blocked=(
                f"MAAS at {MaasEndpoint(url).host} needs an admin API key: run 'juju add-secret "
                f"maas-api key=<key>', '{grant_command('maas-api', app_name)}' and 'juju config "
                f"{app_name} maas-api-key=<secret URI>'"
            ),
        )
    return MaasAccess(url, source, secret_id, key)


def write_key_file(path: Path, key: str) -> bool:
    """Write the key for background jobs: 0600 file in a 0700 directory, atomically.

    Returns:
        Whether the file changed.
    """
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    data = key.encode() + b"\n"
    with contextlib.suppress(OSError):
        if path.read_bytes() == data and (path.stat().st_mode & 0o777) == 0o600:
            return False
    descriptor, temporary = tempfile.mkstemp(prefix=".key.", dir=directory)  # mode 0600
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return True


def remove_key_file(path: Path) -> bool:
    """Remove the key file; returns whether there was one."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class MaasCheck:
    """The result of the last credential check (kept in the charm's stored state).

    Attributes:
        fingerprint: ``MaasAccess.fingerprint`` it was made for.
        kind: ``ok`` or why not.
        message: the status text when not ok.
        host: the MAAS host.
        version: MAAS version (when ok).
        images: how many of our images MAAS holds (None when unknown).
        checked_at: when (UTC).
    """

    fingerprint: str
    kind: CheckKind
    message: str = ""
    host: str = ""
    version: str = ""
    images: int | None = None
    checked_at: str = ""

    @property
    def ok(self) -> bool:
        """The key works and belongs to an admin."""
        return self.kind == "ok"

    def to_dict(self) -> dict[str, Any]:
        """Plain types for ``StoredState``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> MaasCheck | None:
        """Read what ``to_dict`` wrote (None when nothing or unreadable)."""
        if not data:
            return None
        try:
            return cls(**dict(data))
        except TypeError:
            return None

    def with_images(self, images: int | None) -> MaasCheck:
        """The same check with a new image count."""
        return dataclasses.replace(self, images=images)

    def summary(self) -> str:
        """``MAAS 10.0.0.2 holds 2 of our images`` (for the Active status)."""
        if self.images is None:
            return f"MAAS {self.host}"
        noun = "image" if self.images == 1 else "images"
        return f"MAAS {self.host} holds {self.images} of our {noun}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def count_our_images(client: maas.MaasClient) -> int:
    """How many of our images (either naming scheme) MAAS holds."""
    return len(maas.list_images(client))


def check_maas(access: MaasAccess, settings: Settings, app_name: str) -> MaasCheck:
    """Check the key once (``maas.check_credentials``) and count our images in MAAS."""
    fingerprint = access.fingerprint(settings.maas_ca_certificate)
    host = access.host
    secret = access.secret_id
    fix = (
        f"get an admin's key ('juju run maas-region/leader get-api-key username=<admin>' or "
        f"'maas apikey --username <admin>') and run 'juju update-secret {secret} "
        f"{API_KEY_FIELD}=<key>'"
    )
    try:
        with access.client(settings) as client:
            found = maas.check_credentials(client, step="maas-check")
            images = count_our_images(client)
    except maas.MaasKeyRejected:
        return MaasCheck(
            fingerprint,
            "rejected",
            f"MAAS at {host} rejected the API key in {secret}: {fix}",
            host,
            checked_at=_now(),
        )
    except maas.MaasNotAdmin:
        return MaasCheck(
            fingerprint,
            "not-admin",
            f"the API key in {secret} is not a MAAS admin's, MAAS at {host} refuses uploads: "
            f"{fix}",
            host,
            checked_at=_now(),
        )
    except maas.MaasUnreachable as error:
        return MaasCheck(
            fingerprint,
            "unreachable",
            f"MAAS unreachable at {access.url} ({error.why}): check maas-url or the "
            f"maas-region relation; checking again at the next update-status",
            host,
            checked_at=_now(),
        )
    except (StepFailed, UsageError) as error:
        return MaasCheck(
            fingerprint,
            "error",
            f"MAAS at {host} answered an error: {error}",
            host,
            checked_at=_now(),
        )
    logger.info(
        "MAAS %s %s: key of user %s accepted (admin); %d of our images",
        host,
        found.version,
        found.user,
        images,
    )
    return MaasCheck(fingerprint, "ok", "", host, found.version, images, _now())


# --- background jobs -----------------------------------------------------------------------


def job_python_path() -> str:
    """``PYTHONPATH`` for background jobs: what this charm process imports from.

    The job runs ``python -m openeuler_image_builder`` with the charm's interpreter; it needs
    the charm's ``src``, ``lib`` and virtual environment, which dispatch put on ``sys.path``.
    """
    entries: list[str] = []
    for entry in sys.path:
        if not entry:
            continue
        path = Path(entry).resolve()
        if path.is_dir() and str(path) not in entries:
            entries.append(str(path))
    return os.pathsep.join(entries)


# --- peer data -----------------------------------------------------------------------------


def read_peer_reports(
    relation: ops.Relation | None, own_unit: str, own_report: fleet.UnitReport
) -> tuple[dict[str, fleet.UnitReport], dict[str, str]]:
    """Every unit's report (ours from memory, the others' from their databags), and problems."""
    databags: dict[str, Mapping[str, str]] = {}
    if relation is not None:
        for unit in relation.units:
            databags[unit.name] = relation.data[unit]
    reports, problems = fleet.read_reports(databags)
    reports[own_unit] = own_report
    return reports, problems


def publish(databag: ops.RelationDataContent, key: str, value: str) -> bool:
    """Set a databag key only when it changes (no needless relation-changed on the peers)."""
    if databag.get(key) == value:
        return False
    databag[key] = value
    return True


def read_assignments(
    relation: ops.Relation | None, app: ops.Application
) -> fleet.Assignments | None:
    """The leader's published assignments, or None (not published yet, or unreadable)."""
    if relation is None:
        return None
    text = relation.data[app].get(fleet.ASSIGNMENTS_KEY)
    if not text:
        return None
    try:
        return fleet.Assignments.from_json(text)
    except fleet.PeerDataError as error:
        logger.warning("ignoring the leader's assignments: %s", error)
        return None
