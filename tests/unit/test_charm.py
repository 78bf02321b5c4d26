"""ops.testing tests of the charm: install, config, KVM, and every status message.

The charm runs its real workload code against a temporary state directory; the seams are
described in tests/fixtures/charm_env.py (recorded host, recorded systemd, test key pin).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from fixtures.charm_env import CharmEnv
from fixtures.charm_ops import make_stored_image
from ops import testing

from openeuler_image_builder.core.errors import StepFailed
from openeuler_image_builder.core.settings import ACCEPTED_FORMS
from openeuler_image_builder.host import install, kvm
from openeuler_image_builder.unit import history, jobs

NO_MAAS = testing.ActiveStatus("ready: no MAAS configured, images are kept locally")
KVM_BLOCKED = testing.BlockedStatus(
    "KVM unavailable: deploy on bare metal or a VM with nested virtualisation, "
    "or set accelerator=tcg (slow)"
)


# --- install ---------------------------------------------------------------------------------


def test_install_sets_up_the_host_and_reports_ready(charm_env: CharmEnv) -> None:
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.install(), charm_env.state(installed=False))

    host = charm_env.host
    packages, version, _ = host.installs[0]
    assert {"qemu-system-x86", "ovmf", "qemu-utils", "pigz", "rpm"} <= set(packages)
    assert version == ""
    assert host.downloads == [(install.HASHICORP_KEY_URL, {})]
    assert install.KEYRING_PATH in host.files
    sources = host.files[install.SOURCES_PATH][0].decode()
    assert f"Signed-By: {install.KEYRING_PATH}" in sources
    assert (("packer",), "1.11.2-1", {}) in host.installs
    ((argv, env),) = host.plugin_runs()
    assert argv == ("/usr/bin/packer", "plugins", "install", "github.com/hashicorp/qemu", "v1.1.1")
    assert env["PACKER_PLUGIN_PATH"] == str(charm_env.layout.packer_plugins)
    assert out.workload_version == "1.11.2"
    assert out.unit_status == NO_MAAS
    # Maintenance while installing (set directly during the hook, as ops recommends).
    assert testing.MaintenanceStatus("installing QEMU, firmware and Packer") in (
        ctx.unit_status_history
    )


def test_install_pins_hashicorps_fingerprint_by_default() -> None:
    # The charm tests pin a test key; this is the pin production uses.
    assert install.HASHICORP_APT_KEY_FINGERPRINT == "798AEC654E5C15428C8E42EEAA16FCBCA621E701"


def test_install_failure_blocks_and_update_status_retries(charm_env: CharmEnv) -> None:
    ctx = charm_env.ctx()
    host = charm_env.host
    original = host.download

    def offline(url: str, **kwargs: object) -> bytes:
        raise StepFailed("setup-host", f"download of {url} failed (connection refused)")

    host.download = offline  # type: ignore[method-assign]
    out = ctx.run(ctx.on.install(), charm_env.state(installed=False))
    assert out.unit_status == testing.BlockedStatus(
        "installing the build tools failed: setup-host failed: download of "
        "https://apt.releases.hashicorp.com/gpg failed (connection refused); "
        "retrying at each update-status"
    )
    assert out.workload_version == ""

    host.download = original  # type: ignore[method-assign]
    out = ctx.run(ctx.on.update_status(), out)
    assert out.unit_status == NO_MAAS
    assert out.workload_version == "1.11.2"


def test_update_status_does_not_reinstall(charm_env: CharmEnv) -> None:
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.install(), charm_env.state(installed=False))
    charm_env.host.clear()
    ctx.run(ctx.on.update_status(), out)
    assert charm_env.host.installs == []
    assert charm_env.host.runs == []


def test_config_change_of_packer_version_reinstalls(charm_env: CharmEnv) -> None:
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.install(), charm_env.state(installed=False))
    charm_env.host.clear()

    ctx.run(ctx.on.config_changed(), out)  # nothing that affects the install changed
    assert charm_env.host.installs == []

    charm_env.host.packer_output = "Packer v1.11.1"
    state = testing.State(
        config={"packer-version": "1.11.1"},
        resources=out.resources,
        stored_states=out.stored_states,
    )
    out = ctx.run(ctx.on.config_changed(), state)
    assert charm_env.host.apt_removes == ["packer"]
    assert (("packer",), "1.11.1-1", {}) in charm_env.host.installs
    assert out.workload_version == "1.11.1"


def test_qemu_plugin_version_change_reinstalls_the_plugin(charm_env: CharmEnv) -> None:
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.install(), charm_env.state(installed=False))
    charm_env.host.clear()
    state = testing.State(
        config={"qemu-plugin-version": "1.1.3"},
        resources=out.resources,
        stored_states=out.stored_states,
    )
    ctx.run(ctx.on.config_changed(), state)
    ((argv, _),) = charm_env.host.plugin_runs()
    assert argv[-1] == "v1.1.3"


def _bundle(path: Path, zip_name: str, sums_name: str, inner: str, binary: bytes) -> Path:
    release = io.BytesIO()
    with zipfile.ZipFile(release, "w") as archive:
        archive.writestr(inner, binary)
    data = release.getvalue()
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr(zip_name, data)
        bundle.writestr(sums_name, f"{hashlib.sha256(data).hexdigest()}  {zip_name}\n")
    return path


def test_resources_install_packer_and_plugin_offline(charm_env: CharmEnv, tmp_path: Path) -> None:
    packer = _bundle(
        tmp_path / "packer-bundle.zip",
        "packer_1.11.2_linux_amd64.zip",
        "packer_1.11.2_SHA256SUMS",
        "packer",
        b"#!/bin/sh\necho Packer v1.11.2\n",
    )
    plugin_name = "packer-plugin-qemu_v1.1.1_x5.0_linux_amd64"
    plugin = _bundle(
        tmp_path / "plugin-bundle.zip",
        f"{plugin_name}.zip",
        "packer-plugin-qemu_v1.1.1_SHA256SUMS",
        plugin_name,
        b"\x7fELF",
    )
    ctx = charm_env.ctx()
    out = ctx.run(
        ctx.on.install(),
        charm_env.state(
            installed=False, resources={"packer": packer, "packer-qemu-plugin": plugin}
        ),
    )
    host = charm_env.host
    assert host.downloads == []  # no apt key, no repository
    assert install.SOURCES_PATH not in host.files
    assert host.files[install.BUNDLED_PACKER][1] == 0o755
    ((argv, _),) = host.plugin_runs()
    assert argv[:4] == (str(install.BUNDLED_PACKER), "plugins", "install", "--path")
    assert out.workload_version == "1.11.2"
    assert out.unit_status == NO_MAAS


def test_bad_resource_blocks_with_how_to_fix(charm_env: CharmEnv, tmp_path: Path) -> None:
    wrong = _bundle(
        tmp_path / "packer-bundle.zip",
        "packer_1.10.0_linux_amd64.zip",
        "packer_1.10.0_SHA256SUMS",
        "packer",
        b"x",
    )
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.install(), charm_env.state(installed=False, resources={"packer": wrong}))
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "holds no packer_1.11.2_linux_amd64.zip" in out.unit_status.message
    assert "make it with `zip packer-bundle.zip" in out.unit_status.message


def test_model_proxy_is_used_for_every_download(
    charm_env: CharmEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUJU_CHARM_HTTP_PROXY", "http://squid.internal:3128")
    monkeypatch.setenv("JUJU_CHARM_HTTPS_PROXY", "http://squid.internal:3128")
    monkeypatch.setenv("JUJU_CHARM_NO_PROXY", "127.0.0.1,localhost")
    ctx = charm_env.ctx()
    ctx.run(ctx.on.install(), charm_env.state(installed=False))
    host = charm_env.host
    ((_, proxy),) = host.downloads
    assert proxy["https_proxy"] == "http://squid.internal:3128"
    assert proxy["no_proxy"] == "127.0.0.1,localhost"
    assert host.updates == [proxy]
    assert all(used == proxy for _, _, used in host.installs)
    ((_, env),) = host.plugin_runs()
    assert env["HTTPS_PROXY"] == "http://squid.internal:3128"


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("releases", "21.09", "unknown"),
        ("mirror-url", "ftp://mirror", "not an http(s) URL"),
        ("extra-packages", "vim;rm", "is not an RPM package name"),
        ("disk-size", "2G", "smaller than 4G"),
        ("build-memory", "lots", "not a size"),
        ("build-cpus", 0, "out of range"),
        ("accelerator", "xen", ""),
        ("packer-version", "1.9.4", "at least 1.11.0"),
        ("qemu-plugin-version", "1.1.2", "halts kickstart builds"),
        ("maas-url", "10.0.0.2:5240", "not an http(s) URL"),
        ("maas-ca-certificate", "not a cert", "not a PEM certificate"),
        ("maas-name-scheme", "ubuntu", ""),
        ("rebuild-schedule", "every day; rm -rf /", "not a systemd calendar expression"),
        ("keep-images", 0, "out of range"),
    ],
)
def test_invalid_config_blocks_naming_option_value_and_form(
    charm_env: CharmEnv, option: str, value: object, reason: str
) -> None:
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.config_changed(), charm_env.state(config={option: value}))
    assert isinstance(out.unit_status, testing.BlockedStatus)
    message = out.unit_status.message
    assert message.startswith(f"config option {option}={value!r} is invalid")
    assert reason in message
    assert message.endswith(f"use {ACCEPTED_FORMS[option]}")
    # Nothing is done with an invalid config: no install, no job, no timer.
    assert charm_env.host.installs == []
    assert charm_env.runner.argvs == []
    assert charm_env.timer.calls == []


def test_invalid_config_does_not_install(charm_env: CharmEnv) -> None:
    ctx = charm_env.ctx()
    out = ctx.run(
        ctx.on.install(), charm_env.state(installed=False, config={"packer-version": "one"})
    )
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert charm_env.host.installs == []


# --- KVM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("accelerator", ["auto", "kvm"])
def test_missing_kvm_blocks_unless_tcg(charm_env: CharmEnv, accelerator: str) -> None:
    charm_env.kvm_missing()
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.update_status(), charm_env.state(config={"accelerator": accelerator}))
    assert out.unit_status == KVM_BLOCKED


def test_unusable_kvm_blocks(charm_env: CharmEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = charm_env.tmp_path / "kvm-dir"
    directory.mkdir()  # exists, but cannot be opened read/write
    monkeypatch.setattr(kvm, "KVM_DEVICE", directory)
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.update_status(), charm_env.state())
    assert out.unit_status == KVM_BLOCKED


def test_tcg_works_without_kvm(charm_env: CharmEnv) -> None:
    charm_env.kvm_missing()
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.update_status(), charm_env.state(config={"accelerator": "tcg"}))
    assert out.unit_status == NO_MAAS


# --- work statuses ---------------------------------------------------------------------------


def _start_build(charm_env: CharmEnv, state: testing.State, release: str) -> Path:
    ctx = charm_env.ctx()
    ctx.run(ctx.on.action("build-image", params={"release": release}), state)
    argv = charm_env.runner.started()[-1]
    return Path(argv[argv.index("--job-state") + 1])


def _progress(path: Path, phase: str, percent: float, minutes: int) -> None:
    started = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=minutes)

    def change(job: jobs.JobState) -> None:
        job.phase, job.percent = phase, percent
        job.started = started.strftime("%Y-%m-%dT%H:%M:%SZ")

    jobs.update_job_state(path, change)


def test_status_while_building_and_uploading(charm_env: CharmEnv) -> None:
    state = charm_env.state()
    path = _start_build(charm_env, state, "24.03-LTS-SP2")
    ctx = charm_env.ctx()

    _progress(path, "install", 45, 7)
    out = ctx.run(ctx.on.update_status(), state)
    assert out.unit_status == testing.MaintenanceStatus(
        "building 24.03-LTS-SP2 (x86_64): installing packages 45%, 7m"
    )
    _progress(path, "upload", 60, 31)
    out = ctx.run(ctx.on.update_status(), state)
    assert out.unit_status == testing.MaintenanceStatus(
        "uploading 24.03-LTS-SP2 (x86_64): 60%, 31m"
    )


def test_status_after_an_image_is_in_maas_without_maas_config(charm_env: CharmEnv) -> None:
    make_stored_image(
        charm_env.layout,
        "24.03-LTS-SP2",
        built_at=datetime.datetime(2026, 11, 27, 7, 0, tzinfo=datetime.timezone.utc),
        uploaded=True,
    )
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.update_status(), charm_env.state())
    assert out.unit_status == testing.ActiveStatus(
        "ready: 24.03-LTS-SP2 in MAAS (2026-11-27); no MAAS configured, images are kept locally"
    )


def test_failed_build_stays_active_with_summary_and_log_action(charm_env: CharmEnv) -> None:
    state = charm_env.state()
    path = _start_build(charm_env, state, "22.03")
    charm_env.runner.finish(
        path, "failed", error="install failed: the installer never powered off (log: /x.log)"
    )
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.update_status(), state)
    assert out.unit_status == testing.ActiveStatus(
        "build of 22.03-LTS-SP4 (x86_64) failed: install failed: the installer never powered "
        "off (log: /x.log); for the log run "
        "'juju run openeuler-image-builder/0 build-status release=22.03-LTS-SP4'"
    )


def test_failure_that_leaves_the_unit_unable_to_build_blocks(charm_env: CharmEnv) -> None:
    state = charm_env.state()
    path = _start_build(charm_env, state, "22.03")
    charm_env.runner.finish(
        path, "failed", error="build failed: not enough free disk space in /var/lib (need 9 GiB)"
    )
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.update_status(), state)
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith("build of 22.03-LTS-SP4 (x86_64) failed:")


def test_dead_job_is_reported_failed(charm_env: CharmEnv) -> None:
    state = charm_env.state()
    path = _start_build(charm_env, state, "24.03")
    charm_env.runner.active.clear()  # the unit vanished without the job recording an end
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.update_status(), state)
    assert "failed: build job died without finishing" in out.unit_status.message
    assert jobs.read_job_state(path).result == "failed"
    records = history.History.load(history.History.path_in(charm_env.layout.root))
    assert records.records[0].result == "failed"


def test_rebuild_schedule_systemd_rejects_blocks(charm_env: CharmEnv) -> None:
    # "Mon 25:00" passes the config pattern; systemd-analyze (real) rejects the hour.
    ctx = charm_env.ctx()
    out = ctx.run(
        ctx.on.config_changed(), charm_env.state(config={"rebuild-schedule": "Mon 25:00"})
    )
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith(
        "rebuild-schedule not applied: config option rebuild-schedule='Mon 25:00' is invalid "
        "(systemd-analyze: Failed to parse calendar specification"
    )
    assert charm_env.timer.calls == []
    assert not charm_env.timer_dir.exists() or not any(charm_env.timer_dir.iterdir())
