"""``build_image()`` end to end with the stand-in packer: the real ISO handling, recipe
rendering, process handling, packing (loop or FUSE mount), verification, manifest, upload to
the MAAS double and retention; and every way a build can fail or be stopped, each leaving
nothing behind (no work directory, no half image, no mount, loop device, Packer or QEMU) and
the previous image untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.maas_double import MaasDouble
from fixtures.standin_packer import StandinPacker

from openeuler_image_builder import maas
from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import Cancelled, StepFailed, UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.pipeline import build, images, locks, space
from openeuler_image_builder.unit import jobs, retention

RELEASE = catalogue.resolve("24.03-LTS-SP3")


def mounts_and_loops(work: Path) -> tuple[set[str], set[str]]:
    """Mounts and loop devices this test process made (pack mounts under ``oeib-pack-<pid>-``
    in the temp directory; its loop devices are backed by the disk in the build's work dir).

    Other processes on the machine (other test runs, other pytest-xdist workers) are left out
    of the comparison: only loop devices backed by a file under ``work`` count.
    """
    marker = f"oeib-pack-{os.getpid()}-"
    mounts = {
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if marker in line.split()[1]
    }
    mounts |= {str(path) for path in Path(tempfile.gettempdir()).glob(marker + "*")}
    loops = set()
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            loops.add(backing.read_text().strip())
    return mounts, {path for path in loops if path.startswith(f"{work}/")}


class Progress:
    def __init__(self, on_report: Callable[[str, float | None, str], None] | None = None) -> None:
        self.reports: list[tuple[str, float | None, str]] = []
        self.on_report = on_report

    def __call__(self, phase: str, percent: float | None, detail: str = "") -> None:
        self.reports.append((phase, percent, detail))
        if self.on_report:
            self.on_report(phase, percent, detail)

    def phases(self) -> list[str]:
        return list(dict.fromkeys(phase for phase, _, _ in self.reports))


@dataclasses.dataclass
class BuildEnv:
    layout: StateLayout
    standin: StandinPacker
    iso: Path
    iso_sha256: str
    monkeypatch: pytest.MonkeyPatch
    disks: Callable[..., Path]

    def use(self, mode: str = "ok", breaks: tuple[str, ...] = (), **extra: str) -> None:
        disk = self.disks("x86_64", breaks)
        env = self.standin.environment(mode, STANDIN_DISK_SOURCE=str(disk), **extra)
        for key, value in env.items():
            self.monkeypatch.setenv(key, value)

    def request(self, output: Path | None = None, **changes: object) -> build.BuildRequest:
        fields: dict[str, object] = {
            "release": RELEASE,
            "arch": "x86_64",
            "settings": Settings(disk_size=4096),
            "output_dir": output or images.next_image_dir(self.layout, RELEASE.name, "x86_64"),
            "iso": self.iso,
            "iso_sha256": self.iso_sha256,
            "accelerator": "tcg",
            "timeout": 120,
        }
        fields.update(changes)
        return build.BuildRequest(**fields)  # type: ignore[arg-type]

    def tools(self, **changes: float) -> build.BuildTools:
        return build.BuildTools(packer=str(self.standin.packer), stop_grace=5, **changes)

    def assert_nothing_left(self, before: tuple[set[str], set[str]]) -> None:
        assert list(self.layout.work.iterdir()) == [], "a work directory was left"
        assert self.standin.processes() == [], "Packer or QEMU was left running"
        # An auto-clearing loop device is detached by the kernel shortly after its last user
        # (the unmounted filesystem) lets go: give it a moment.
        deadline = time.monotonic() + 10
        while mounts_and_loops(self.layout.work) != before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert mounts_and_loops(self.layout.work) == before, "a mount or loop device was left"
        assert locks.lock_holder(self.layout, RELEASE.name, "x86_64") is None


@pytest.fixture
def env(
    tmp_path: Path,
    standin_packer: StandinPacker,
    monkeypatch: pytest.MonkeyPatch,
    installed_disk_factory: Callable[..., Path],
) -> BuildEnv:
    iso = tmp_path / "dvd.iso"
    iso.write_bytes(b"not really an ISO\n" * 100)
    monkeypatch.delenv("MAAS_API_KEY", raising=False)
    monkeypatch.delenv("MAAS_URL", raising=False)
    environment = BuildEnv(
        layout=StateLayout(tmp_path / "state"),
        standin=standin_packer,
        iso=iso,
        iso_sha256=hashlib.sha256(iso.read_bytes()).hexdigest(),
        monkeypatch=monkeypatch,
        disks=installed_disk_factory,
    )
    environment.use()
    return environment


def good_image(env: BuildEnv) -> images.StoredImage:
    env.use()
    result = build.build_image(env.request(), layout=env.layout, tools=env.tools())
    image = images.read_stored_image(result.image.parent, RELEASE.name, "x86_64")
    assert image is not None
    return image


def test_build_writes_a_verified_image_with_a_complete_manifest(env: BuildEnv) -> None:
    before = mounts_and_loops(env.layout.work)
    progress = Progress()
    request = env.request()
    result = build.build_image(request, layout=env.layout, progress=progress, tools=env.tools())
    assert result.image == request.output_dir / "openeuler-24.03-LTS-SP3-x86_64.tar.gz"
    assert (
        result.manifest_path == request.output_dir / "openeuler-24.03-LTS-SP3-x86_64.manifest.json"
    )
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["sha256"] == hashlib.sha256(result.image.read_bytes()).hexdigest()
    assert manifest["size"] == result.image.stat().st_size
    assert manifest["release"] == "24.03-LTS-SP3" and manifest["arch"] == "x86_64"
    assert manifest["kernel"] == "5.10.0-216.0.0.115.oe2203sp4.x86_64"
    assert {"fetch-iso", "render", "install", "pack"} <= set(manifest["durations"])
    assert manifest["build_duration"] >= manifest["durations"]["install"] > 0
    assert manifest["tools"]["packer"] == "1.6.6"
    assert manifest["tools"]["openeuler-image-builder"]
    assert manifest["settings"] == {"include_updates": True, "extra_packages": []}
    assert len(manifest["template_hash"]) == 64
    assert manifest["durations"].items() <= result.durations.items()
    assert progress.phases() == ["fetch-iso", "render", "install", "pack", "verify"]
    details = [detail for phase, _, detail in progress.reports if phase == "install"]
    assert "package 40 of 40" in details and details[-1] == "installer powered off"
    # Logs outlive the work directory.
    assert "Waiting for shutdown" in result.logs.packer.read_text()
    assert "OEIB-POST: ok" in result.logs.serial.read_text()
    # Packer ran `packer build .` in the rendered recipe with our environment.
    builds = [i for i in env.standin.invocations() if i["argv"][0] == "build"]  # type: ignore[index]
    assert builds[0]["argv"] == ["build", "-color=false", "."]
    assert "MAAS_API_KEY" not in builds[0]["env"]  # type: ignore[operator]
    # Packer's plugin sockets go to a short TMPDIR (UNIX socket names are limited to 107
    # bytes), removed with the build.
    packer_tmp = Path(str(builds[0]["tmpdir"]))
    assert packer_tmp.name.startswith(f"oeib-packer-{os.getpid()}-")
    assert len(str(packer_tmp / "packer-plugin1234567890")) < 100
    assert not packer_tmp.exists()
    env.assert_nothing_left(before)
    assert images.newest_image(env.layout, RELEASE.name, "x86_64") is not None


def test_build_fetches_the_iso_from_a_mirror(env: BuildEnv, http_server: object) -> None:
    server = http_server
    iso_dir = server.root / f"openEuler-{RELEASE.name}" / "ISO" / "x86_64"  # type: ignore[attr-defined]
    iso_dir.mkdir(parents=True)
    name = RELEASE.iso_name("x86_64")
    (iso_dir / name).write_bytes(env.iso.read_bytes())
    (iso_dir / f"{name}.sha256sum").write_text(f"{env.iso_sha256}  {name}\n")
    settings = Settings(disk_size=4096, mirror_url=server.url)  # type: ignore[attr-defined]
    progress = Progress()
    result = build.build_image(
        env.request(iso=None, iso_sha256=None, settings=settings),
        layout=env.layout,
        progress=progress,
        tools=env.tools(),
    )
    assert (env.layout.iso_cache / name).read_bytes() == env.iso.read_bytes()
    assert result.image.is_file()
    # The rendered template used the cached ISO and its checksum.
    builds = [i for i in env.standin.invocations() if i["argv"][0] == "build"]  # type: ignore[index]
    assert builds


@pytest.mark.parametrize(
    ("mode", "breaks", "step", "reason"),
    [
        ("fail", (), "install", "packer build failed: Error launching VM: Qemu failed to start."),
        ("no-disk", (), "install", "Packer finished but left no disk image at "),
        ("post-fail", (), "install", "the kickstart's %post failed: cloud-init probe"),
        ("ok", ("machine-id-not-empty",), "verify", ""),
    ],
)
def test_failed_build_leaves_the_previous_image_and_nothing_else(
    env: BuildEnv, mode: str, breaks: tuple[str, ...], step: str, reason: str
) -> None:
    previous = good_image(env)
    previous_bytes = previous.tarball.read_bytes()
    before = mounts_and_loops(env.layout.work)
    env.use(mode, breaks)
    request = env.request()
    with pytest.raises(StepFailed) as failed:
        build.build_image(request, layout=env.layout, tools=env.tools())
    assert failed.value.step == step
    assert failed.value.reason.startswith(reason)
    assert "\n" not in str(failed.value)
    assert not request.output_dir.exists(), "the failed build's directory was left"
    assert images.newest_image(env.layout, RELEASE.name, "x86_64") == previous
    assert previous.tarball.read_bytes() == previous_bytes
    env.assert_nothing_left(before)


def test_failed_build_into_an_output_directory_keeps_the_old_image(
    env: BuildEnv, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    first = build.build_image(env.request(output=output), layout=env.layout, tools=env.tools())
    old = first.image.read_bytes(), first.manifest_path.read_bytes()
    env.use("ok", ("root-password-set",))
    with pytest.raises(StepFailed, match="verify failed"):
        build.build_image(env.request(output=output), layout=env.layout, tools=env.tools())
    assert (first.image.read_bytes(), first.manifest_path.read_bytes()) == old
    assert sorted(p.name for p in output.iterdir()) == [
        "openeuler-24.03-LTS-SP3-x86_64.manifest.json",
        "openeuler-24.03-LTS-SP3-x86_64.tar.gz",
    ]


def test_install_that_never_powers_off_fails_at_the_timeout(env: BuildEnv) -> None:
    before = mounts_and_loops(env.layout.work)
    env.use("hang")
    request = env.request(timeout=2)
    with pytest.raises(StepFailed) as failed:
        build.build_image(request, layout=env.layout, tools=env.tools())
    serial_copy = next(env.layout.logs.glob("*.serial.log"))
    assert failed.value.reason == (
        f"install did not finish within 2s: the installer never powered off; see {serial_copy}"
    )
    assert "Installing package40.x86_64 (40/40)" in serial_copy.read_text()
    assert not request.output_dir.exists()
    env.assert_nothing_left(before)


def signal_when(phase: str, detail_prefix: str = "") -> Progress:
    sent = threading.Event()

    def on_report(reported: str, percent: float | None, detail: str) -> None:
        if reported == phase and detail.startswith(detail_prefix) and not sent.is_set():
            sent.set()
            os.kill(os.getpid(), signal.SIGTERM)

    return Progress(on_report)


@pytest.mark.parametrize(
    ("mode", "phase", "detail"),
    [
        ("hang", "install", "package"),  # Packer and QEMU running
        ("ignore-term", "install", "package"),  # Packer ignores SIGTERM: killed after grace
        ("ok", "pack", "looking at partition"),  # the disk is being opened and mounted
        ("ok", "pack", "reading the package database"),  # mounted
    ],
)
def test_sigterm_cancels_and_leaves_nothing(
    env: BuildEnv, mode: str, phase: str, detail: str
) -> None:
    previous = good_image(env)
    before = mounts_and_loops(env.layout.work)
    env.use(mode)
    request = env.request(timeout=600)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Cancelled, match="build cancelled"):
        build.build_image(
            request, layout=env.layout, progress=signal_when(phase, detail), tools=env.tools()
        )
    assert signal.getsignal(signal.SIGTERM) == handler, "the signal handler was not restored"
    assert not request.output_dir.exists()
    assert images.newest_image(env.layout, RELEASE.name, "x86_64") == previous
    env.assert_nothing_left(before)


def test_second_build_of_the_same_release_is_refused(env: BuildEnv) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from openeuler_image_builder.pipeline import locks; "
            "from openeuler_image_builder.core.paths import StateLayout; "
            "cm = locks.build_lock(StateLayout(Path(sys.argv[1])), sys.argv[2], 'x86_64', "
            "job_id='build-job-1'); cm.__enter__(); print('held', flush=True); time.sleep(60)",
            str(env.layout.root),
            RELEASE.name,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        request = env.request()
        with pytest.raises(UsageError) as refused:
            build.build_image(request, layout=env.layout, tools=env.tools())
        assert f"pid {holder.pid}, job build-job-1" in str(refused.value)
        assert not request.output_dir.exists()
        assert env.standin.invocations() == [], "Packer ran although the lock was taken"
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout:
            holder.stdout.close()


def test_not_enough_disk_space_is_refused_before_anything_runs(env: BuildEnv) -> None:
    request = env.request(settings=Settings(disk_size=64 * 1024**3))
    with pytest.raises(UsageError) as refused:
        build.build_image(request, layout=env.layout, tools=env.tools())
    message = str(refused.value)
    assert message.startswith("not enough disk space for ")
    assert "disk image 67108864.0 GiB" in message and "free" in message
    assert "more, or lower disk-size" in message
    assert env.standin.invocations() == []
    assert not request.output_dir.exists()


def test_space_check_counts_each_filesystem_and_what_is_missing(tmp_path: Path) -> None:
    needs = [
        space.SpaceNeed("ISO", tmp_path / "iso", 4 * space.GIB),
        space.SpaceNeed("disk image", tmp_path / "work", 8 * space.GIB),
    ]
    space.check_disk_space(needs, free_space=lambda path: 100 * space.GIB)
    with pytest.raises(UsageError) as refused:
        space.check_disk_space(needs, free_space=lambda path: 10 * space.GIB)
    # 12 GiB + 10 % + 0.5 GiB = 13.7 GiB needed, 10 GiB free: 3.7 GiB missing.
    assert str(refused.value) == (
        f"not enough disk space for {tmp_path}/iso, {tmp_path}/work: the build needs 13.7 GiB "
        "(ISO 4.0 GiB + disk image 8.0 GiB, plus margin) but only 10.0 GiB is free there; "
        "free 3.7 GiB more, or lower disk-size"
    )


def test_stale_work_directory_of_a_killed_build_is_removed(env: BuildEnv) -> None:
    env.layout.ensure()
    stale = env.layout.work / "openeuler-24.03-LTS-SP3-x86_64-abc123"
    (stale / "recipe").mkdir(parents=True)
    other = env.layout.work / "openeuler-22.03-LTS-SP4-x86_64-def456"
    other.mkdir()
    build.build_image(env.request(), layout=env.layout, tools=env.tools())
    assert not stale.exists()
    assert other.exists(), "the work directory of another release's build was touched"


def test_retention_keeps_the_newest_images(env: BuildEnv) -> None:
    settings = Settings(disk_size=4096, keep_images=2)
    built = []
    for _ in range(3):
        result = build.build_image(
            env.request(settings=settings), layout=env.layout, tools=env.tools()
        )
        # As the CLI and the build job do after every build (unit.retention).
        retention.prune_after_build(env.layout, settings.keep_images, result.image.parent)
        built.append(result.image.parent)
        time.sleep(1.1)  # a new directory name (UTC seconds)
    stored = [image.directory for image in images.list_stored_images(env.layout)]
    assert stored == [built[2], built[1]]
    assert retention.prune_images(env.layout, 2) == []


def test_build_with_upload_registers_the_image(
    env: BuildEnv, maas_double: MaasDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAAS_API_KEY", maas_double.admin_key)
    settings = Settings(disk_size=4096, maas_url=maas_double.url)
    progress = Progress()
    result = build.build_image(
        env.request(settings=settings, upload=True),
        layout=env.layout,
        progress=progress,
        tools=env.tools(),
    )
    assert result.upload is not None and result.upload.status == "uploaded"
    # MAAS 3.6 (the double's default) stores custom names without the prefix (maas-api.md 8).
    stored = maas_double.find("openeuler-24.03-lts-sp3", "amd64/generic")
    assert stored is not None
    assert maas_double.content(stored["id"]) == result.image.read_bytes()
    assert progress.phases() == [
        "fetch-iso",
        "render",
        "install",
        "pack",
        "verify",
        "upload",
        "sync",
    ]
    record = json.loads((result.image.parent / images.UPLOAD_RECORD).read_text())
    assert record["sha256"] == result.sha256 and record["name"] == "custom/openeuler-24.03-lts-sp3"


def test_rejected_maas_key_fails_before_the_install(
    env: BuildEnv, maas_double: MaasDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAAS_API_KEY", maas_double.unknown_key)
    request = env.request(settings=Settings(disk_size=4096, maas_url=maas_double.url), upload=True)
    with pytest.raises(maas.MaasKeyRejected):
        build.build_image(request, layout=env.layout, tools=env.tools())
    assert env.standin.invocations() == []
    assert not request.output_dir.exists()


def test_upload_without_maas_url_is_a_usage_error(env: BuildEnv) -> None:
    with pytest.raises(UsageError, match="needs the MAAS URL"):
        build.build_image(env.request(upload=True), layout=env.layout, tools=env.tools())


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"http_proxy": "http://proxy.example:3128"}, "http://proxy.example:3128"),
        (
            {"JUJU_CHARM_HTTP_PROXY": "http://juju:8080", "HTTP_PROXY": "http://x:1"},
            "http://juju:8080",
        ),
        ({"HTTP_PROXY": "http://127.0.0.1:3128"}, "http://10.0.2.2:3128"),
        ({"HTTP_PROXY": "http://u:p@localhost:3128/"}, "http://u:p@10.0.2.2:3128/"),
    ],
)
def test_installer_proxy(environ: dict[str, str], expected: str | None) -> None:
    assert build.installer_proxy(environ) == expected


def test_job_state_file_is_not_needed_for_a_foreground_build(env: BuildEnv) -> None:
    build.build_image(env.request(), layout=env.layout, tools=env.tools())
    assert jobs.list_jobs(env.layout) == []
