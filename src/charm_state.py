"""Ops-side helpers of the charm: MAAS (access, key file, credential check), install, peer data.

Everything that needs ``ops`` (or the charm's stored state) but is not an event handler lives
here, so ``charm.py`` stays a list of handlers. The workload package (``openeuler_image_builder``)
never imports this.

The MAAS API key is read from the Juju secret named by ``maas-api-key``, kept in memory only as
long as a hook needs it, and written to one root-only file (0600 in a 0700 directory) that
background jobs read. It never goes into logs, action results, relation data or argv.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import ops
from charms.openeuler_image_builder.v0.maas_controller import MaasEndpoint

from openeuler_image_builder import maas
from openeuler_image_builder.core import files
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.core.timestamps import format_utc, utc_now
from openeuler_image_builder.host import install
from openeuler_image_builder.host.system import HostSystem
from openeuler_image_builder.unit import action_params, fleet, status_text

logger = logging.getLogger(__name__)

API_KEY_FIELD = "key"
NO_MAAS = "no MAAS configured, images are kept locally"
# Calls made inside hooks and actions must answer in seconds, not in the client's defaults.
HOOK_MAAS_TIMEOUT = 10.0
HOOK_MAAS_RETRIES = 1

CheckKind = Literal["ok", "rejected", "not-admin", "unreachable", "error"]
InstallMode = Literal["always", "if-needed", "retry", "never"]


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
    return files.write_if_changed(path, key + "\n", mode=files.PRIVATE)


def sync_key_file(path: Path, access: MaasAccess) -> None:
    """Write the key file while MAAS is configured; remove it when the key or URL went away."""
    if access.configured and access.key:
        write_key_file(path, access.key)
    elif remove_key_file(path):
        logger.info("MAAS key or URL gone: removed the key file")


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


def check_due(current: MaasCheck | None, *, force: bool, retry: bool) -> bool:
    """Whether to check the credentials now.

    Config, secret and relation changes (``force``) check a new key and re-check a failed one
    (the operator may have fixed the user in MAAS); update-status (``retry``) checks a key
    never checked and retries a MAAS that did not answer.
    """
    stale = current is None or (force and not current.ok)
    failed_to_connect = current is not None and current.kind == "unreachable"
    return (force and stale) or (retry and (stale or failed_to_connect))


class MaasState:
    """MAAS as one hook sees it: the access, and the credential check stored for it.

    ``stored`` is the charm's ``StoredState``: its ``maas_check`` holds the last check
    (``MaasCheck.to_dict``), which counts only while URL, key and CA are the ones it checked.
    """

    def __init__(self, access: MaasAccess, settings: Settings, stored: Any):
        self.access = access
        self.settings = settings
        self.stored = stored

    @property
    def check(self) -> MaasCheck | None:
        """The stored check when it was made for this access (same URL, key and CA)."""
        check = MaasCheck.from_dict(dict(self.stored.maas_check or {}))
        if check is None or not self.access.configured:
            return None
        fresh = check.fingerprint == self.access.fingerprint(self.settings.maas_ca_certificate)
        return check if fresh else None

    @property
    def usable(self) -> bool:
        """Configured, and the credential check passed: uploads can start."""
        check = self.check
        return check is not None and check.ok

    def update(self, *, force: bool = False, retry: bool = False, recount: bool = False) -> None:
        """Check the credentials when due (:func:`check_due`), or count our images again.

        Args:
            force: config, secret or relation changed.
            retry: update-status.
            recount: an image went into or out of MAAS: count ours again (with a whole check
                when the credentials were never checked, e.g. the first hook is build-finished).
        """
        if not self.access.configured:
            self.stored.maas_check = {}
            return
        current = self.check
        if check_due(current, force=force or (recount and current is None), retry=retry):
            self.stored.maas_check = check_maas(self.access, self.settings).to_dict()
        elif recount and current is not None and current.ok:
            try:
                with self.client() as client:
                    count = count_our_images(client)
            except (StepFailed, UsageError) as error:
                logger.warning("could not count our images in MAAS: %s", error)
                return
            self.stored.maas_check = current.with_images(count).to_dict()

    def client(self) -> maas.MaasClient:
        """A client for hooks and actions (short timeout, one retry)."""
        return self.access.client(self.settings)

    def statuses(self) -> list[status_text.UnitStatus]:
        """The MAAS part of the unit status: what to set, what is awaited, a failed check."""
        found = []
        if self.access.blocked:
            found.append(status_text.UnitStatus("blocked", self.access.blocked))
        if self.access.waiting:
            found.append(status_text.UnitStatus("waiting", self.access.waiting))
        check = self.check
        if check is not None and not check.ok:
            level = "waiting" if check.kind == "unreachable" else "blocked"
            found.append(status_text.UnitStatus(level, check.message))
        return found

    def summary(self) -> str:
        """What MAAS holds (after a good check), or which MAAS, or that there is none."""
        check = self.check
        if check is not None and check.ok:
            return check.summary()
        return f"MAAS {self.access.host}" if self.access.wanted and self.access.url else NO_MAAS

    def missing(self) -> str | None:
        """What stops uploads (config to set, or the failed credential check), or None."""
        access = self.access
        missing = action_params.missing_maas_config(access.url, access.configured)
        if missing:
            return access.blocked or missing
        check = self.check
        return check.message if check is not None and not check.ok else None

    def list_images(self) -> tuple[list[dict[str, Any]] | None, str | None]:
        """Our images in MAAS as result rows, or why they cannot be listed."""
        if not self.access.configured:
            return None, self.access.blocked or self.access.waiting or NO_MAAS
        try:
            with self.client() as client:
                return [dataclasses.asdict(image) for image in maas.list_images(client)], None
        except (StepFailed, UsageError) as error:
            return None, str(error)


def _now() -> str:
    return format_utc(utc_now())


def count_our_images(client: maas.MaasClient) -> int:
    """How many of our images (either naming scheme) MAAS holds."""
    return len(maas.list_images(client))


def check_maas(access: MaasAccess, settings: Settings) -> MaasCheck:
    """Check the key once (``maas.check_credentials``) and count our images in MAAS."""
    fingerprint = access.fingerprint(settings.maas_ca_certificate)
    host = access.host
    secret = access.secret_id
    fix = (
        f"get an admin's key ('juju run maas-region/leader get-api-key username=<admin>' or "
        f"'maas apikey --username <admin>') and run 'juju update-secret {secret} "
        f"{API_KEY_FIELD}=<key>'"
    )

    def failed(kind: CheckKind, message: str) -> MaasCheck:
        return MaasCheck(fingerprint, kind, message, host, checked_at=_now())

    try:
        with access.client(settings) as client:
            found = maas.check_credentials(client, step="maas-check")
            images = count_our_images(client)
    except maas.MaasKeyRejected:
        return failed("rejected", f"MAAS at {host} rejected the API key in {secret}: {fix}")
    except maas.MaasNotAdmin:
        return failed(
            "not-admin",
            f"the API key in {secret} is not a MAAS admin's, MAAS at {host} refuses uploads: "
            f"{fix}",
        )
    except maas.MaasUnreachable as error:
        return failed(
            "unreachable",
            f"MAAS unreachable at {access.url} ({error.why}): check maas-url or the "
            f"maas-region relation; checking again at the next update-status",
        )
    except (StepFailed, UsageError) as error:
        return failed("error", f"MAAS at {host} answered an error: {error}")
    logger.info(
        "MAAS %s %s: key of user %s accepted (admin); %d of our images",
        host,
        found.version,
        found.user,
        images,
    )
    return MaasCheck(fingerprint, "ok", "", host, found.version, images, _now())


# --- build tools ---------------------------------------------------------------------------


def install_tools(
    unit: ops.Unit,
    stored: Any,
    plan: Callable[[], install.InstallPlan],
    system: Callable[[], HostSystem],
    *,
    mode: InstallMode,
) -> None:
    """Install the build tools as the hook's ``mode`` says, showing progress in the status.

    ``always`` (install, upgrade-charm); ``if-needed`` (config-changed: only when the plan
    changed or nothing was installed); ``retry`` (update-status: only after a failure);
    ``never``. The outcome goes to the charm's ``stored`` state (``install_error``,
    ``packer_version``) and the workload version.
    """
    if mode == "never" or (mode == "retry" and not stored.install_error):
        return
    try:
        wanted = plan()
        if mode == "if-needed" and install.is_current(wanted) and stored.packer_version:
            return
        unit.status = ops.MaintenanceStatus("installing QEMU, firmware and Packer")

        def progress(phase: str, percent: float | None, detail: str = "") -> None:
            unit.status = ops.MaintenanceStatus(
                f"installing build tools ({phase}): {detail}"[:100]
            )

        result = install.install(wanted, system=system(), progress=progress)
    except (StepFailed, UsageError) as error:
        logger.error("install failed: %s", error)
        stored.install_error = str(error)
        return
    stored.install_error = ""
    stored.packer_version = result.packer_version
    unit.set_workload_version(result.packer_version)
    logger.info(
        "installed Packer %s and qemu plugin %s", result.packer_version, result.qemu_plugin_version
    )


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


def fleet_share(
    relation: ops.Relation | None,
    unit: ops.Unit,
    app: ops.Application,
    releases: Sequence[str],
    own_report: fleet.UnitReport,
) -> fleet.Share:
    """This unit's share of ``releases`` (``fleet.decide_share``) from the peer relation."""
    reports, problems = read_peer_reports(relation, unit.name, own_report)
    for unit_name, problem in problems.items():
        logger.warning("ignoring the report of %s: %s", unit_name, problem)
    leader = unit.is_leader() or relation is None
    published = None if leader else read_assignments(relation, app)
    return fleet.decide_share(
        releases, unit.name, own_report.arch, reports, leader=leader, published=published
    )


def publish_fleet(
    relation: ops.Relation | None,
    unit: ops.Unit,
    app: ops.Application,
    report: fleet.UnitReport,
    plan: fleet.Assignments | None,
) -> None:
    """Publish this unit's report and, when given (the leader's), the plan."""
    if relation is None:
        return
    publish(relation.data[unit], fleet.UNIT_REPORT_KEY, report.to_json())
    if plan is not None:
        publish(relation.data[app], fleet.ASSIGNMENTS_KEY, plan.to_json())
