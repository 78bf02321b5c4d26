"""The rebuild timer: ``rebuild-schedule`` as a systemd ``.timer`` and ``.service`` pair.

Design (docs/charm-ops.md, "Scheduled rebuilds"): the timer's service does not build anything
itself. It runs ``juju-exec <unit> JUJU_DISPATCH_PATH=hooks/rebuild ./dispatch`` in the charm
directory (as ``jobs.DispatchTarget`` does for ``build-finished``), so
the charm's custom ``rebuild`` event queues a rebuild of the unit's share
(``History.request_rebuild``) and starts it through the same job machinery as every other
build: one job at a time per unit, visible in ``juju status`` and ``build-status``, reported by
``build-finished``, with ``include-updates`` forced on (``QueuedBuild.job_settings``). Running the
CLI directly from the timer would bypass the queue and could run several builds at once.

The units live in ``/etc/systemd/system/``, are rendered from ``templates/systemd/`` (jinja2,
StrictUndefined) and are enabled, restarted and disabled through charmlibs-systemd; the systemd
layer is injectable because systemd is not PID 1 in the test environment.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

import jinja2
from charmlibs import systemd as charmlibs_systemd

from openeuler_image_builder.core import files
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.paths import templates_dir
from openeuler_image_builder.core.settings import ACCEPTED_FORMS, Settings

logger = logging.getLogger(__name__)

SYSTEMD_UNIT_DIR = Path("/etc/systemd/system")
JUJU_EXEC = "/usr/bin/juju-exec"
REBUILD_EVENT = "rebuild"
ANALYZE_TIMEOUT = 10.0

_UNIT_NAME = re.compile(r"^[a-z][a-z0-9-]*/\d+$")
# Paths that need no quoting or escaping in a unit file's ExecStart= (no %, $, quotes, spaces).
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*$")

ScheduleAction = Literal["installed", "updated", "unchanged", "removed", "absent"]


class SystemdLayer(Protocol):
    """The systemd calls the timer needs (charmlibs-systemd in production, a recorder in tests)."""

    def daemon_reload(self) -> None:
        """``systemctl daemon-reload``."""
        ...

    def enable_now(self, unit: str) -> None:
        """``systemctl enable --now <unit>``."""
        ...

    def restart(self, unit: str) -> None:
        """``systemctl restart <unit>``."""
        ...

    def disable_now(self, unit: str) -> None:
        """``systemctl disable --now <unit>``."""
        ...


class CharmlibsSystemd:
    """:class:`SystemdLayer` over charmlibs-systemd; failures become ``StepFailed("schedule")``."""

    @staticmethod
    def _run(what: str, call: Callable[[], object]) -> None:
        try:
            call()
        except charmlibs_systemd.SystemdError as error:
            first_line = str(error).splitlines()[0] if str(error) else what
            raise StepFailed("schedule", f"{what}: {first_line}") from None

    def daemon_reload(self) -> None:
        """``systemctl daemon-reload``."""
        self._run("systemctl daemon-reload", charmlibs_systemd.daemon_reload)

    def enable_now(self, unit: str) -> None:
        """``systemctl enable --now <unit>``."""
        self._run(
            f"enable {unit}", functools.partial(charmlibs_systemd.service_enable, "--now", unit)
        )

    def restart(self, unit: str) -> None:
        """``systemctl restart <unit>``."""
        self._run(f"restart {unit}", functools.partial(charmlibs_systemd.service_restart, unit))

    def disable_now(self, unit: str) -> None:
        """``systemctl disable --now <unit>``."""
        self._run(
            f"disable {unit}", functools.partial(charmlibs_systemd.service_disable, "--now", unit)
        )


@dataclasses.dataclass(frozen=True)
class CalendarCheck:
    """A validated calendar expression.

    Attributes:
        expression: as configured (stripped).
        normalized: systemd's normalized form (the expression itself when not checked by
            systemd).
        next_elapse: when it fires next, as systemd-analyze says, or None.
        checked_by: ``systemd-analyze`` or ``pattern`` (settings.py's check, when
            systemd-analyze is not available).
    """

    expression: str
    normalized: str
    next_elapse: str | None
    checked_by: Literal["systemd-analyze", "pattern"]


def _invalid(expression: str, reason: str) -> UsageError:
    return UsageError(
        f"config option rebuild-schedule={expression!r} is invalid ({reason}): "
        f"use {ACCEPTED_FORMS['rebuild-schedule']}"
    )


def validate_calendar(
    expression: str,
    *,
    analyze: str | None = None,
    runner: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
) -> CalendarCheck:
    """Check a systemd calendar expression with ``systemd-analyze calendar``.

    Falls back to ``settings.py``'s pattern check when systemd-analyze is not installed or does
    not answer in time.

    Args:
        expression: the ``rebuild-schedule`` value (not empty).
        analyze: path of systemd-analyze (default: found on PATH).
        runner: ``subprocess.run`` (tests inject a double).

    Raises:
        UsageError: invalid, or valid but never elapses (a date in the past); one line naming
            the option and the accepted form.
    """
    expression = expression.strip()
    if not expression:
        raise _invalid(expression, "empty; leave the option unset to switch rebuilds off")
    if any(ord(character) < 32 for character in expression):
        raise _invalid(expression, "contains a control character")
    analyze = analyze if analyze is not None else shutil.which("systemd-analyze")
    if analyze:
        try:
            completed = runner(
                [analyze, "calendar", expression],
                capture_output=True,
                text=True,
                timeout=ANALYZE_TIMEOUT,
                check=False,
                env={**os.environ, "LC_ALL": "C", "SYSTEMD_COLORS": "0"},
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            logger.warning("systemd-analyze unusable (%s); checking the pattern only", error)
        else:
            output = completed.stdout + completed.stderr
            if completed.returncode != 0:
                reason = next((line.strip() for line in output.splitlines() if line.strip()), "")
                raise _invalid(expression, f"systemd-analyze: {reason or 'rejected'}")
            fields = _analyze_fields(completed.stdout)
            next_elapse = fields.get("Next elapse")
            if next_elapse == "never":
                raise _invalid(expression, "it never elapses: the date is in the past")
            return CalendarCheck(
                expression=expression,
                normalized=fields.get("Normalized form", expression),
                next_elapse=next_elapse,
                checked_by="systemd-analyze",
            )
    # settings.py's check of the option (same message format as any config error).
    Settings.from_mapping({"rebuild-schedule": expression})
    return CalendarCheck(expression, expression, None, "pattern")


def _analyze_fields(stdout: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stdout.splitlines():
        name, separator, value = line.partition(":")
        if separator and name.strip() and name.strip() not in fields:
            fields[name.strip()] = value.strip()
    return fields


@dataclasses.dataclass(frozen=True)
class ScheduleChange:
    """What :meth:`RebuildTimer.apply` did."""

    action: ScheduleAction
    timer: str
    calendar: CalendarCheck | None = None

    def describe(self) -> str:
        """One line for the log."""
        if self.calendar is None:
            return f"rebuild timer {self.timer}: {self.action}"
        when = f", next {self.calendar.next_elapse}" if self.calendar.next_elapse else ""
        return (
            f"rebuild timer {self.timer}: {self.action} "
            f"(OnCalendar={self.calendar.normalized}{when})"
        )


@dataclasses.dataclass(frozen=True)
class RebuildTimer:
    """The timer and service of one unit.

    Attributes:
        unit_name: the Juju unit (``openeuler-image-builder/0``).
        charm_dir: the unit's charm directory (``self.charm_dir``), holding ``dispatch``.
        unit_dir: where unit files go.
        juju_exec: the juju-exec binary.
        randomized_delay: ``RandomizedDelaySec=``.
        start_timeout: ``TimeoutStartSec=`` of the service (juju-exec may wait for the machine
            lock while a long locked operation runs).
    """

    unit_name: str
    charm_dir: Path
    unit_dir: Path = SYSTEMD_UNIT_DIR
    juju_exec: str = JUJU_EXEC
    randomized_delay: str = "5min"
    start_timeout: str = "2h"

    def __post_init__(self) -> None:
        if not _UNIT_NAME.match(self.unit_name):
            raise ValueError(f"not a Juju unit name: {self.unit_name!r}")
        for path in (str(self.charm_dir), self.juju_exec):
            if not _SAFE_PATH.match(path):
                raise ValueError(f"path {path!r} cannot go unquoted into a unit file")

    @property
    def base_name(self) -> str:
        """``<application>-<number>-rebuild``."""
        return self.unit_name.replace("/", "-") + "-rebuild"

    @property
    def service_name(self) -> str:
        """The service unit's name."""
        return self.base_name + ".service"

    @property
    def timer_name(self) -> str:
        """The timer unit's name."""
        return self.base_name + ".timer"

    @property
    def service_path(self) -> Path:
        """Where the service unit file goes."""
        return self.unit_dir / self.service_name

    @property
    def timer_path(self) -> Path:
        """Where the timer unit file goes."""
        return self.unit_dir / self.timer_name

    def render(self, calendar: CalendarCheck) -> dict[Path, str]:
        """The two unit files' text, by path."""
        environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(templates_dir() / "systemd"),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=jinja2.select_autoescape(default=False, default_for_string=False),
        )
        values = {
            "unit_name": self.unit_name,
            "charm_dir": str(self.charm_dir),
            "juju_exec": self.juju_exec,
            "event": REBUILD_EVENT,
            "start_timeout": self.start_timeout,
            "service_name": self.service_name,
            "on_calendar": calendar.normalized,
            "expression": calendar.expression,
            "randomized_delay": self.randomized_delay,
        }
        return {
            self.service_path: environment.get_template("rebuild.service.j2").render(values),
            self.timer_path: environment.get_template("rebuild.timer.j2").render(values),
        }

    def apply(
        self,
        expression: str,
        *,
        systemd: SystemdLayer | None = None,
        check: Callable[[str], CalendarCheck] = validate_calendar,
    ) -> ScheduleChange:
        """Make the installed timer match ``rebuild-schedule`` (empty: remove it).

        Calls made: changed or new files -> daemon-reload, enable --now, restart of the timer
        (so a new OnCalendar= takes effect); unchanged -> enable --now only (repairs a timer
        disabled by hand); empty expression -> :meth:`remove`.

        Raises:
            UsageError: the expression is invalid (nothing is changed on disk).
            StepFailed: a systemctl call failed.
        """
        if not expression.strip():
            return self.remove(systemd=systemd)
        calendar = check(expression)
        systemd = systemd or CharmlibsSystemd()
        existed = self.timer_path.exists() or self.service_path.exists()
        changed = False
        for path, text in self.render(calendar).items():
            changed |= _write_if_changed(path, text)
        if not changed:
            systemd.enable_now(self.timer_name)
            change = ScheduleChange("unchanged", self.timer_name, calendar)
        else:
            systemd.daemon_reload()
            systemd.enable_now(self.timer_name)
            systemd.restart(self.timer_name)
            change = ScheduleChange(
                "updated" if existed else "installed", self.timer_name, calendar
            )
        logger.info(change.describe())
        return change

    def remove(self, *, systemd: SystemdLayer | None = None) -> ScheduleChange:
        """Disable and delete the timer and service (no calls when nothing is installed)."""
        if not (self.timer_path.exists() or self.service_path.exists()):
            return ScheduleChange("absent", self.timer_name)
        systemd = systemd or CharmlibsSystemd()
        try:
            systemd.disable_now(self.timer_name)
        except StepFailed as error:
            # A timer systemd never loaded cannot be disabled; deleting its files is what counts.
            logger.warning("%s", error)
        self.timer_path.unlink(missing_ok=True)
        self.service_path.unlink(missing_ok=True)
        systemd.daemon_reload()
        change = ScheduleChange("removed", self.timer_name)
        logger.info(change.describe())
        return change


def _write_if_changed(path: Path, text: str) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    return files.write_if_changed(path, text)
