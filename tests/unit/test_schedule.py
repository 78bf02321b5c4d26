"""The rebuild timer: calendar validation, rendered units, and the exact systemd calls."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.unit.schedule import (
    CalendarCheck,
    CharmlibsSystemd,
    RebuildTimer,
    validate_calendar,
)

UNIT = "openeuler-image-builder/3"
CHARM_DIR = Path("/var/lib/juju/agents/unit-openeuler-image-builder-3/charm")
HAVE_ANALYZE = shutil.which("systemd-analyze") is not None


class RecordingSystemd:
    """Records the calls the timer makes; can fail one of them."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.fail = fail

    def _record(self, *call: str) -> None:
        self.calls.append(call)
        if self.fail == call[0]:
            raise StepFailed("schedule", f"{call[0]} refused")

    def daemon_reload(self) -> None:
        self._record("daemon-reload")

    def enable_now(self, unit: str) -> None:
        self._record("enable --now", unit)

    def restart(self, unit: str) -> None:
        self._record("restart", unit)

    def disable_now(self, unit: str) -> None:
        self._record("disable --now", unit)


@pytest.fixture
def timer(tmp_path: Path) -> RebuildTimer:
    return RebuildTimer(UNIT, CHARM_DIR, unit_dir=tmp_path / "systemd")


def pattern_only(expression: str) -> CalendarCheck:
    return validate_calendar(expression, analyze="")


# ---- validation ------------------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_ANALYZE, reason="systemd-analyze is not installed")
@pytest.mark.parametrize(
    ("expression", "normalized"),
    [
        ("weekly", "Mon *-*-* 00:00:00"),
        ("Sun *-*-* 03:00:00", "Sun *-*-* 03:00:00"),
        ("Mon..Fri 02:00", "Mon..Fri *-*-* 02:00:00"),
    ],
)
def test_systemd_analyze_validates_and_normalizes(expression: str, normalized: str) -> None:
    check = validate_calendar(expression)
    assert check.checked_by == "systemd-analyze"
    assert check.normalized == normalized
    assert check.next_elapse and check.next_elapse != "never"


@pytest.mark.skipif(not HAVE_ANALYZE, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("expression", ["bogus", "Sun 25:00", "*-*-32"])
def test_systemd_analyze_rejects_with_one_line_naming_the_option(expression: str) -> None:
    with pytest.raises(UsageError) as caught:
        validate_calendar(expression)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"config option rebuild-schedule={expression!r} is invalid")
    assert "systemd-analyze" in message
    assert "e.g. weekly" in message


@pytest.mark.skipif(not HAVE_ANALYZE, reason="systemd-analyze is not installed")
def test_a_date_in_the_past_never_elapses_and_is_refused() -> None:
    with pytest.raises(UsageError, match="never elapses"):
        validate_calendar("2020-01-01")


def test_fallback_pattern_check_without_systemd_analyze() -> None:
    check = pattern_only("Sun *-*-* 03:00:00")
    assert check == CalendarCheck("Sun *-*-* 03:00:00", "Sun *-*-* 03:00:00", None, "pattern")
    with pytest.raises(UsageError, match="rebuild-schedule"):
        pattern_only("rm -rf /; reboot")


def test_fallback_when_systemd_analyze_hangs() -> None:
    def hanging(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired("systemd-analyze", 10)

    check = validate_calendar("daily", analyze="/usr/bin/systemd-analyze", runner=hanging)
    assert check.checked_by == "pattern"


def test_the_exact_systemd_analyze_command() -> None:
    seen: list[list[str]] = []

    def runner(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(argv)
        assert kwargs["timeout"] == 10.0
        return subprocess.CompletedProcess(
            argv, 0, "Normalized form: *-*-* 00:00:00\n    Next elapse: Sat 2026-11-28\n", ""
        )

    check = validate_calendar(" daily ", analyze="/bin/systemd-analyze", runner=runner)
    assert seen == [["/bin/systemd-analyze", "calendar", "daily"]]
    assert check.normalized == "*-*-* 00:00:00"
    assert check.next_elapse == "Sat 2026-11-28"


@pytest.mark.parametrize("expression", ["daily\nExecStart=/bin/sh", "daily\x00"])
def test_control_characters_are_refused_before_anything_runs(expression: str) -> None:
    with pytest.raises(UsageError, match="control character"):
        validate_calendar(expression, analyze="/nonexistent")


# ---- rendering -------------------------------------------------------------------------------


def parse_unit(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=True, delimiters=("=",), comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_rendered_units(timer: RebuildTimer) -> None:
    files = timer.render(pattern_only("Sun *-*-* 03:00:00"))
    service = parse_unit(files[timer.service_path])
    assert timer.service_path.name == "openeuler-image-builder-3-rebuild.service"
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["WorkingDirectory"] == str(CHARM_DIR)
    assert service["Service"]["ExecStart"] == (
        "/usr/bin/juju-exec openeuler-image-builder/3 JUJU_DISPATCH_PATH=hooks/rebuild ./dispatch"
    )
    assert service["Service"]["TimeoutStartSec"] == "2h"
    timer_unit = parse_unit(files[timer.timer_path])
    assert timer.timer_path.name == "openeuler-image-builder-3-rebuild.timer"
    assert timer_unit["Timer"]["OnCalendar"] == "Sun *-*-* 03:00:00"
    assert timer_unit["Timer"]["Persistent"] == "true"
    assert timer_unit["Timer"]["Unit"] == "openeuler-image-builder-3-rebuild.service"
    assert timer_unit["Install"]["WantedBy"] == "timers.target"


@pytest.mark.skipif(not HAVE_ANALYZE, reason="systemd-analyze is not installed")
def test_rendered_units_pass_systemd_analyze_verify(timer: RebuildTimer, tmp_path: Path) -> None:
    # systemd's own unit-file checker, on copies whose ExecStart names a binary that exists here
    # (juju-exec and the charm directory only exist on a Juju machine).
    stand_in = RebuildTimer(UNIT, tmp_path, unit_dir=tmp_path / "verify", juju_exec="/bin/true")
    stand_in.unit_dir.mkdir()
    for path, text in stand_in.render(validate_calendar("weekly")).items():
        path.write_text(text)
    completed = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            str(stand_in.timer_path),
            str(stand_in.service_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    relevant = [
        line
        for line in completed.stderr.splitlines()
        if "rebuild" in line and "System has not been booted with systemd" not in line
    ]
    assert relevant == [], completed.stderr
    assert completed.returncode == 0, completed.stderr


@pytest.mark.parametrize("bad", ["unit", "app/x", "App/0", "a b/0"])
def test_bad_unit_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="unit name"):
        RebuildTimer(bad, CHARM_DIR)


@pytest.mark.parametrize("bad", ["relative/charm", "/charm dir", "/charm/%n", "/a$b"])
def test_paths_that_would_need_quoting_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="unquoted"):
        RebuildTimer(UNIT, Path(bad))


# ---- apply / remove: the exact calls ---------------------------------------------------------


def test_enable_installs_both_units_and_starts_the_timer(timer: RebuildTimer) -> None:
    systemd = RecordingSystemd()
    change = timer.apply("weekly", systemd=systemd, check=pattern_only)
    assert change.action == "installed"
    assert systemd.calls == [
        ("daemon-reload",),
        ("enable --now", timer.timer_name),
        ("restart", timer.timer_name),
    ]
    assert "OnCalendar=weekly" in timer.timer_path.read_text()
    assert timer.service_path.exists()
    assert oct(timer.timer_path.stat().st_mode & 0o777) == "0o644"


def test_unchanged_schedule_only_ensures_enabled(timer: RebuildTimer) -> None:
    timer.apply("weekly", systemd=RecordingSystemd(), check=pattern_only)
    systemd = RecordingSystemd()
    change = timer.apply("weekly", systemd=systemd, check=pattern_only)
    assert change.action == "unchanged"
    assert systemd.calls == [("enable --now", timer.timer_name)]


def test_changed_schedule_rewrites_reloads_and_restarts(timer: RebuildTimer) -> None:
    timer.apply("weekly", systemd=RecordingSystemd(), check=pattern_only)
    systemd = RecordingSystemd()
    change = timer.apply("daily", systemd=systemd, check=pattern_only)
    assert change.action == "updated"
    assert systemd.calls == [
        ("daemon-reload",),
        ("enable --now", timer.timer_name),
        ("restart", timer.timer_name),
    ]
    assert "OnCalendar=daily" in timer.timer_path.read_text()


def test_empty_schedule_disables_and_removes(timer: RebuildTimer) -> None:
    timer.apply("weekly", systemd=RecordingSystemd(), check=pattern_only)
    systemd = RecordingSystemd()
    change = timer.apply("  ", systemd=systemd, check=pattern_only)
    assert change.action == "removed"
    assert systemd.calls == [("disable --now", timer.timer_name), ("daemon-reload",)]
    assert not timer.timer_path.exists()
    assert not timer.service_path.exists()


def test_empty_schedule_with_nothing_installed_makes_no_call(timer: RebuildTimer) -> None:
    systemd = RecordingSystemd()
    assert timer.apply("", systemd=systemd).action == "absent"
    assert systemd.calls == []


def test_remove_goes_on_when_systemd_never_loaded_the_timer(timer: RebuildTimer) -> None:
    timer.apply("weekly", systemd=RecordingSystemd(), check=pattern_only)
    systemd = RecordingSystemd(fail="disable --now")
    assert timer.remove(systemd=systemd).action == "removed"
    assert not timer.timer_path.exists()
    assert systemd.calls[-1] == ("daemon-reload",)


def test_invalid_schedule_changes_nothing(timer: RebuildTimer) -> None:
    timer.apply("weekly", systemd=RecordingSystemd(), check=pattern_only)
    before = timer.timer_path.read_text()
    systemd = RecordingSystemd()
    with pytest.raises(UsageError):
        timer.apply("not a calendar!", systemd=systemd, check=pattern_only)
    assert systemd.calls == []
    assert timer.timer_path.read_text() == before


def test_charmlibs_layer_runs_systemctl_and_reports_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # charmlibs-systemd runs ``systemctl`` through subprocess.run; record the argv it uses.
    seen: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(list(argv))
        if argv[1] == "restart":
            raise subprocess.CalledProcessError(1, argv, "", "Unit x.timer not found.")
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    layer = CharmlibsSystemd()
    layer.daemon_reload()
    layer.enable_now("a-rebuild.timer")
    layer.disable_now("a-rebuild.timer")
    with pytest.raises(StepFailed, match=r"schedule failed: restart a-rebuild\.timer"):
        layer.restart("a-rebuild.timer")
    assert seen == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "a-rebuild.timer"],
        ["systemctl", "disable", "--now", "a-rebuild.timer"],
        ["systemctl", "restart", "a-rebuild.timer"],
    ]
