"""Running Packer: progress from the installer's console, failures, the install timeout, and
stopping Packer and its QEMU on every path (with the stand-in packer, see fixtures).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from fixtures.standin_packer import StandinPacker

from openeuler_image_builder.backends.vm import packer
from openeuler_image_builder.core import cancellation
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.paths import StateLayout

TEMPLATE = """
source "qemu" "openeuler" {
  output_directory = "${path.root}/output"
  vm_name          = "openeuler-24.03-LTS-SP3-x86_64.raw"
  qemu_binary      = "qemu-system-x86_64"
  shutdown_timeout = "%s"
  qemuargs = [
    ["-serial", "file:${path.root}/serial.log"],
  ]
}
"""


class Progress:
    def __init__(self) -> None:
        self.reports: list[tuple[str, float | None, str]] = []

    def __call__(self, phase: str, percent: float | None, detail: str = "") -> None:
        self.reports.append((phase, percent, detail))


def make_run(
    tmp_path: Path,
    standin: StandinPacker,
    monkeypatch: pytest.MonkeyPatch,
    *,
    mode: str = "ok",
    timeout: float = 60,
    shutdown_timeout: str = "60s",
    progress: Progress | None = None,
    stop_grace: float = 5,
    watchdog_grace: float = 60,
    **env: str,
) -> tuple[packer.PackerRun, Path]:
    for key, value in standin.environment(mode, **env).items():
        monkeypatch.setenv(key, value)
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "openeuler.pkr.hcl").write_text(TEMPLATE % shutdown_timeout)
    layout = StateLayout(tmp_path / "state")
    layout.ensure()
    work = tmp_path / "work"
    work.mkdir()
    run = packer.PackerRun(
        [str(standin.packer), "build", "-color=false", "."],
        cwd=recipe,
        env=packer.packer_environment(layout, work, layout.logs / "b.packer.log"),
        serial=packer.InstallerProgress(recipe / "serial.log", progress or Progress()),
        timeout=timeout,
        stop_grace=stop_grace,
        watchdog_grace=watchdog_grace,
        packer_log=layout.logs / "b.packer.log",
        serial_log_copy=layout.logs / "b.serial.log",
    )
    return run, recipe


def test_successful_install_reports_package_progress(
    tmp_path: Path, standin_packer: StandinPacker, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress = Progress()
    run, recipe = make_run(
        tmp_path, standin_packer, monkeypatch, progress=progress, STANDIN_PACKAGES="20"
    )
    run.run()
    assert (recipe / "output" / "openeuler-24.03-LTS-SP3-x86_64.raw").is_file()
    percents = [p for phase, p, _ in progress.reports if phase == "install" and p is not None]
    assert percents == sorted(percents), "progress went backwards"
    assert ("install", 5.0, "installing packages") in progress.reports
    assert ("install", 47.5, "package 10 of 20") in progress.reports
    assert ("install", 90.0, "package 20 of 20") in progress.reports
    assert ("install", 98.0, "%post done, powering off") in progress.reports
    assert standin_packer.processes() == []
    # Packer ran with its log, temp and cache under our directories, checkpoint off.
    (invocation,) = standin_packer.invocations()
    assert invocation["argv"] == ["build", "-color=false", "."]
    env_names = set(invocation["env"])  # type: ignore[arg-type]
    assert {"PACKER_LOG", "PACKER_LOG_PATH", "CHECKPOINT_DISABLE", "TMPDIR"} <= env_names
    assert "Waiting for shutdown" in (tmp_path / "state/logs/b.packer.log").read_text()


def test_packer_environment_never_carries_the_maas_key(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path / "state")
    layout.ensure()
    work = tmp_path / "work"
    work.mkdir()
    env = packer.packer_environment(
        layout,
        work,
        tmp_path / "p.log",
        {"MAAS_API_KEY": "a:b:c", "MAAS_API_KEY_FILE": "/k", "PATH": "/usr/bin"},
    )
    assert "MAAS_API_KEY" not in env and "MAAS_API_KEY_FILE" not in env
    assert env["PACKER_LOG"] == "1" and env["PACKER_LOG_PATH"] == str(tmp_path / "p.log")
    assert env["CHECKPOINT_DISABLE"] == "1"
    assert env["TMPDIR"] == str(work / "tmp") and env["PACKER_CACHE_DIR"] == str(
        work / "packer_cache"
    )
    assert "PACKER_PLUGIN_PATH" not in env  # nothing installed in the state's plugin dir
    plugin = layout.packer_plugins / "github.com/hashicorp/qemu"
    plugin.mkdir(parents=True)
    env = packer.packer_environment(layout, work, tmp_path / "p.log", {"PATH": "/usr/bin"})
    assert env["PACKER_PLUGIN_PATH"] == str(layout.packer_plugins)
    env = packer.packer_environment(
        layout, work, tmp_path / "p.log", {"PACKER_PLUGIN_PATH": "/opt/plugins"}
    )
    assert env["PACKER_PLUGIN_PATH"] == "/opt/plugins"


def test_packer_failure_is_one_line_with_packers_reason(
    tmp_path: Path, standin_packer: StandinPacker, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = make_run(tmp_path, standin_packer, monkeypatch, mode="fail")
    with pytest.raises(StepFailed) as failed:
        run.run()
    assert failed.value.step == "install"
    assert failed.value.reason == (
        "packer build failed: Error launching VM: Qemu failed to start. "
        "Please run with logs to get more info."
    )
    assert failed.value.log_path == tmp_path / "state/logs/b.packer.log"


def test_installer_that_never_powers_off_fails_at_packers_timeout(
    tmp_path: Path, standin_packer: StandinPacker, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = make_run(
        tmp_path, standin_packer, monkeypatch, mode="hang", timeout=2, shutdown_timeout="2s"
    )
    with pytest.raises(StepFailed) as failed:
        run.run()
    assert str(failed.value) == (
        "install failed: install did not finish within 2s: the installer never powered off; "
        f"see {tmp_path}/state/logs/b.serial.log (log: {tmp_path}/state/logs/b.packer.log)"
    )
    assert standin_packer.processes() == []


def test_watchdog_kills_a_packer_that_never_gives_up(
    tmp_path: Path, standin_packer: StandinPacker, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = make_run(
        tmp_path, standin_packer, monkeypatch, mode="hang-hard", timeout=1, watchdog_grace=1
    )
    began = time.monotonic()
    with pytest.raises(StepFailed, match="install did not finish within 1s: the installer never"):
        run.run()
    assert time.monotonic() - began < 30
    assert standin_packer.processes() == []


def test_failed_post_script_stops_the_build_early(
    tmp_path: Path, standin_packer: StandinPacker, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = make_run(tmp_path, standin_packer, monkeypatch, mode="post-fail", timeout=600)
    with pytest.raises(StepFailed) as failed:
        run.run()
    assert failed.value.reason.startswith(
        "the kickstart's %post failed: cloud-init probe: no network renderer for openEuler;"
    )
    assert standin_packer.processes() == []


@pytest.mark.parametrize("mode", ["hang", "ignore-term", "escape"])
def test_signal_stops_packer_and_qemu(
    tmp_path: Path, standin_packer: StandinPacker, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """SIGTERM during the install: Packer and its QEMU are gone afterwards, even when Packer
    ignores SIGTERM (killed after the grace period) or QEMU left Packer's process group.
    """
    progress = Progress()
    run, _ = make_run(
        tmp_path,
        standin_packer,
        monkeypatch,
        mode=mode,
        timeout=600,
        stop_grace=1,
        progress=progress,
    )

    def terminate_when_installing() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(detail.startswith("package") for _, _, detail in progress.reports):
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_when_installing)
    with cancellation.interrupt_on_signals():
        killer.start()
        with pytest.raises(cancellation.Interrupted):
            run.run()
    killer.join()
    assert run.tracked, "the stand-in QEMU was never seen"
    assert standin_packer.processes() == []


def test_packer_dies_with_the_build_process(tmp_path: Path, standin_packer: StandinPacker) -> None:
    """kill -9 of the build process: the kernel sends Packer SIGTERM (PR_SET_PDEATHSIG), and
    Packer stops QEMU.
    """
    import subprocess
    import sys

    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "openeuler.pkr.hcl").write_text(TEMPLATE % "600s")
    script = f"""
import sys
from pathlib import Path
from openeuler_image_builder.backends.vm import packer
from openeuler_image_builder.core.paths import StateLayout
layout = StateLayout(Path({str(tmp_path / "state")!r})); layout.ensure()
work = Path({str(tmp_path / "work")!r}); work.mkdir()
run = packer.PackerRun([{str(standin_packer.packer)!r}, "build", "."], cwd=Path({str(recipe)!r}),
    env=packer.packer_environment(layout, work, layout.logs / "p.log"),
    serial=packer.InstallerProgress(Path({str(recipe / "serial.log")!r}), lambda *a: None),
    timeout=600, packer_log=layout.logs / "p.log", serial_log_copy=layout.logs / "s.log")
run.run()
"""
    env = dict(os.environ, **standin_packer.environment("hang"))
    child = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 30
    while not any("qemu-system" in text for _, text in standin_packer.processes()):
        assert time.monotonic() < deadline, "the stand-in QEMU never started"
        time.sleep(0.05)
    child.kill()
    child.wait()
    deadline = time.monotonic() + 30
    while standin_packer.processes():
        assert time.monotonic() < deadline, f"left behind: {standin_packer.processes()}"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Installing bash.x86_64 (120/400)", (30.5, "package 120 of 400")),
        ("\x1b[1mInstalling glibc-common.aarch64 (3/300)\x1b[0m", (5.8, "package 3 of 300")),
        ("Installing package 12 of 24", (47.5, "package 12 of 24")),
        ("Starting package installation process", (5.0, "installing packages")),
        ("Running post-installation scripts", (93.0, "running %post")),
        ("Installing kernel", None),
        ("random console noise (1/2)", None),
    ],
)
def test_installer_lines(line: str, expected: tuple[float, str] | None) -> None:
    progress = Progress()
    packer.InstallerProgress(Path("/nonexistent"), progress).feed(line)
    if expected is None:
        assert progress.reports == []
    else:
        assert progress.reports == [("install", expected[0], expected[1])]


def test_installer_progress_reads_incrementally_and_never_goes_back(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    progress = Progress()
    follower = packer.InstallerProgress(log, progress)
    follower.poll()  # no file yet: nothing, no error
    with log.open("wb") as stream:
        stream.write(b"Installing a.x86_64 (10/20)\r\nInstalling b.x86_64 (1")
        stream.flush()
        follower.poll()
        stream.write(b"1/20)\r\nInstalling a.x86_64 (2/20)\r\nOEIB-POST: FAILED: disk full\r\n")
        stream.flush()
        follower.poll()
    assert [detail for _, _, detail in progress.reports] == [
        "package 10 of 20",
        "package 11 of 20",
    ]
    assert follower.post_failure == "disk full"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400), ("1h30m", 5400), ("2h", 7200), ("45s", 45), ("5400", 5400), ("1h0m30s", 3630)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert packer.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "0", "1d", "-5m"])
def test_bad_duration(text: str) -> None:
    with pytest.raises(UsageError, match="duration"):
        packer.parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(5400, "1h30m"), (45, "45s"), (3630, "1h30s"), (0.2, "1s")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert packer.format_duration(seconds) == text


def test_detect_packer_version(
    standin_packer: StandinPacker, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert packer.detect_packer_version(str(standin_packer.packer)) == "1.6.6"
    monkeypatch.setenv("STANDIN_PACKER_VERSION", "1.11.2")
    assert packer.detect_packer_version(str(standin_packer.packer)) == "1.11.2"
    with pytest.raises(UsageError, match=r"Packer not found .*--packer"):
        packer.detect_packer_version("/nonexistent/packer")
    with pytest.raises(UsageError, match="did not report a Packer version"):
        packer.detect_packer_version("/bin/true")


def test_packer_gets_a_short_temporary_directory_for_its_plugin_sockets(tmp_path: Path) -> None:
    # Packer binds "<TMPDIR>/packer-pluginNNNNNNNNNN" sockets: 107 bytes at most. A work
    # directory as deep as the charm's leaves no room, hence the short one build_image() passes.
    layout = StateLayout(tmp_path / "state")
    layout.ensure()
    work = layout.work / ("openeuler-24.03-LTS-SP4-aarch64-" + "x" * 40)
    work.mkdir()
    short = tmp_path / "t"
    env = packer.packer_environment(layout, work, tmp_path / "p.log", {}, temporary=short)
    assert env["TMPDIR"] == str(short) and short.is_dir()
    assert env["PACKER_CACHE_DIR"] == str(work / "packer_cache")
    default = packer.packer_environment(layout, work, tmp_path / "p.log", {})
    assert default["TMPDIR"] == str(work / "tmp")
