"""Tests of the host set-up (install.py, openpgp.py, the setup-host command).

The install path runs for real against a recording ``HostSystem``: every package, repository
file, key and Packer command that would be applied is asserted, nothing is applied to this
machine. Keys are real OpenPGP keys generated with GnuPG (so the fingerprint code is checked
against gpg's own answer); bundles are real zips with real SHA256SUMS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import subprocess
import zipfile
from collections.abc import Mapping
from pathlib import Path

import pytest
from fixtures.host_setup import GeneratedKey, RecordingSystem, gpg_fingerprints, run_gpg

from openeuler_image_builder.cli import main
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.host import install, openpgp

# --- openpgp --------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["rsa", "ed25519"])
def test_fingerprint_agrees_with_gpg(openpgp_keys: dict[str, GeneratedKey], label: str) -> None:
    key = openpgp_keys[label]
    (parsed,) = openpgp.transferable_keys(key.armored)
    assert parsed.fingerprint == key.fingerprint


def test_select_key_keeps_only_the_pinned_key(
    openpgp_keys: dict[str, GeneratedKey], gnupg_home: Path
) -> None:
    both = run_gpg(
        gnupg_home,
        "--armor",
        "--export",
        openpgp_keys["rsa"].fingerprint,
        openpgp_keys["ed25519"].fingerprint,
    )
    assert len(openpgp.transferable_keys(both)) == 2
    chosen = openpgp.select_key(both, openpgp_keys["ed25519"].fingerprint)
    # gpg reads the keyring we would write as exactly one key: the pinned one.
    assert gpg_fingerprints(gnupg_home, chosen.to_bytes()) == [openpgp_keys["ed25519"].fingerprint]


def test_select_key_accepts_spaced_fingerprint_and_binary_input(
    openpgp_keys: dict[str, GeneratedKey], gnupg_home: Path
) -> None:
    binary = run_gpg(gnupg_home, "--export", openpgp_keys["rsa"].fingerprint)
    spaced = " ".join(openpgp_keys["rsa"].fingerprint[i : i + 4] for i in range(0, 40, 4)).lower()
    assert openpgp.select_key(binary, spaced).fingerprint == openpgp_keys["rsa"].fingerprint


def test_select_key_refuses_other_keys(openpgp_keys: dict[str, GeneratedKey]) -> None:
    with pytest.raises(UsageError, match="fingerprint mismatch") as caught:
        openpgp.select_key(openpgp_keys["rsa"].armored, install.HASHICORP_APT_KEY_FINGERPRINT)
    assert openpgp_keys["rsa"].fingerprint in str(caught.value)


def test_armor_checksum_is_checked(openpgp_keys: dict[str, GeneratedKey]) -> None:
    lines = openpgp_keys["rsa"].armored.decode().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("=") and len(line) == 5)
    lines[index] = "=AAAA" if lines[index] != "=AAAA" else "=BBBB"
    with pytest.raises(UsageError, match="CRC-24"):
        openpgp.transferable_keys("\n".join(lines).encode())


@pytest.mark.parametrize(
    "data",
    [
        b"<html>captive portal</html>",
        b"\x99\x01",
        b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!\n",
        b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxsBN\n=ab!c\n",  # checksum not base64
    ],
)
def test_garbage_is_not_a_key(data: bytes) -> None:
    with pytest.raises(UsageError):
        openpgp.transferable_keys(data + b"-----END PGP PUBLIC KEY BLOCK-----\n")


def test_truncated_packet_length_is_not_a_key() -> None:
    with pytest.raises(UsageError, match="truncated"):
        openpgp.parse_packets(b"\xc6\xc0")  # a two-octet length cut after its first octet


@pytest.fixture
def layout(tmp_path: Path) -> StateLayout:
    return StateLayout(tmp_path / "state")


def make_plan(
    layout: StateLayout,
    key: GeneratedKey | None = None,
    *,
    dpkg_arch: str = "amd64",
    packer_version: str = "1.11.2",
    packer_bundle: Path | None = None,
    plugin_bundle: Path | None = None,
) -> install.InstallPlan:
    plan = install.plan_install(
        Settings(packer_version=packer_version),
        layout,
        environ={},
        dpkg_arch=dpkg_arch,
        codename="noble",
        packer_bundle=packer_bundle,
        plugin_bundle=plugin_bundle,
    )
    if key is not None:
        plan = dataclasses.replace(plan, key_fingerprint=key.fingerprint)
    return plan


# --- the apt path ---------------------------------------------------------------------------


def test_fresh_install_performs_every_step(
    layout: StateLayout, openpgp_keys: dict[str, GeneratedKey], gnupg_home: Path
) -> None:
    system = RecordingSystem(key=openpgp_keys["rsa"].armored)
    plan = make_plan(layout, openpgp_keys["rsa"])

    result = install.install(plan, system=system)

    # apt packages for amd64, installed in one go.
    packages, version, _ = system.installs[0]
    assert set(packages) >= {"qemu-system-x86", "ovmf", "qemu-utils", "pigz", "rpm"}
    assert "qemu-system-arm" not in packages
    assert version == ""
    # The key comes from HashiCorp, is checked by fingerprint, and the keyring gpg reads back
    # holds exactly that key.
    assert system.downloads == [(install.HASHICORP_KEY_URL, {})]
    keyring, mode = system.files[install.KEYRING_PATH]
    assert mode == 0o644
    assert gpg_fingerprints(gnupg_home, keyring) == [openpgp_keys["rsa"].fingerprint]
    # The repository is pinned to that keyring only.
    sources = system.files[install.SOURCES_PATH][0].decode()
    assert "URIs: https://apt.releases.hashicorp.com\n" in sources
    assert "Suites: noble\n" in sources
    assert "Architectures: amd64\n" in sources
    assert f"Signed-By: {install.KEYRING_PATH}\n" in sources
    # apt-get update after adding the repository, then packer at the exact version, held.
    assert len(system.updates) == 1
    assert (("packer",), "1.11.2-1", {}) in system.installs
    runs = system.argvs()
    assert ("apt-mark", "hold", "packer") in runs
    assert ("/usr/bin/packer", "version") in runs
    # The qemu plugin at the configured version, into the state dir's plugin directory.
    ((argv, env),) = system.plugin_runs()
    assert argv == ("/usr/bin/packer", "plugins", "install", "github.com/hashicorp/qemu", "v1.1.1")
    assert env["PACKER_PLUGIN_PATH"] == str(layout.packer_plugins)
    assert env["CHECKPOINT_DISABLE"] == "1"
    assert result.packer_version == "1.11.2"
    assert result.changed
    assert install.is_current(plan)


def test_second_run_changes_nothing(
    layout: StateLayout, openpgp_keys: dict[str, GeneratedKey]
) -> None:
    system = RecordingSystem(key=openpgp_keys["rsa"].armored)
    plan = make_plan(layout, openpgp_keys["rsa"])
    install.install(plan, system=system)
    system.clear()

    result = install.install(plan, system=system)

    assert not result.changed
    assert system.installs == []
    assert system.updates == []
    assert system.writes == []
    assert system.plugin_runs() == []


def test_wrong_key_fingerprint_stops_before_trusting_anything(
    layout: StateLayout, openpgp_keys: dict[str, GeneratedKey]
) -> None:
    # The real pin (HashiCorp's fingerprint) and a download that is some other key.
    system = RecordingSystem(key=openpgp_keys["ed25519"].armored)
    plan = make_plan(layout)
    assert plan.key_fingerprint == "798AEC654E5C15428C8E42EEAA16FCBCA621E701"

    with pytest.raises(StepFailed, match="fingerprint mismatch") as caught:
        install.install(plan, system=system)

    assert openpgp_keys["ed25519"].fingerprint in str(caught.value)
    assert install.KEYRING_PATH not in system.files
    assert install.SOURCES_PATH not in system.files
    assert system.updates == []
    assert not install.is_current(plan)


def test_packer_version_change_replaces_the_package(
    layout: StateLayout, openpgp_keys: dict[str, GeneratedKey]
) -> None:
    system = RecordingSystem(key=openpgp_keys["rsa"].armored, packer_output="Packer v1.11.1")
    install.install(make_plan(layout, openpgp_keys["rsa"], packer_version="1.11.1"), system=system)
    system.clear()
    system.packer_output = "Packer v1.11.2"

    install.install(make_plan(layout, openpgp_keys["rsa"]), system=system)

    assert system.apt_removes == ["packer"]  # apt-get -y refuses downgrades; remove first
    assert (("packer",), "1.11.2-1", {}) in system.installs
    runs = system.argvs()
    assert runs.index(("apt-mark", "unhold", "packer")) < runs.index(
        ("apt-mark", "hold", "packer")
    )


def test_version_missing_from_repository(
    layout: StateLayout, openpgp_keys: dict[str, GeneratedKey]
) -> None:
    system = RecordingSystem(key=openpgp_keys["rsa"].armored, candidates=["1.11.1-1"])
    with pytest.raises(StepFailed, match=r"offers no packer 1\.11\.2 for noble/amd64"):
        install.install(make_plan(layout, openpgp_keys["rsa"]), system=system)


def test_installed_packer_must_report_the_configured_version(
    layout: StateLayout, openpgp_keys: dict[str, GeneratedKey]
) -> None:
    system = RecordingSystem(key=openpgp_keys["rsa"].armored, packer_output="Packer v1.6.6")
    with pytest.raises(StepFailed, match=r"is Packer 1\.6\.6, not 1\.11\.2"):
        install.install(make_plan(layout, openpgp_keys["rsa"]), system=system)


def test_only_missing_apt_packages_are_installed(
    layout: StateLayout, openpgp_keys: dict[str, GeneratedKey]
) -> None:
    plan = make_plan(layout, openpgp_keys["rsa"])
    installed = {name: "1" for name in plan.apt_packages if name != "pigz"}
    system = RecordingSystem(key=openpgp_keys["rsa"].armored, installed=installed)
    install.install(plan, system=system)
    assert system.installs[0] == (("pigz",), "", {})


def test_arm64_host_gets_the_arm_emulator_and_aavmf() -> None:
    packages = install.apt_packages_for("arm64")
    assert {"qemu-system-arm", "qemu-efi-aarch64"} <= set(packages)
    assert "qemu-system-x86" not in packages
    with pytest.raises(UsageError, match="cannot build on a s390x host"):
        install.apt_packages_for("s390x")


def test_other_plugin_versions_are_removed(
    layout: StateLayout, openpgp_keys: dict[str, GeneratedKey]
) -> None:
    stale = layout.packer_plugins / install.QEMU_PLUGIN_SOURCE
    stale.mkdir(parents=True)
    (stale / "packer-plugin-qemu_v1.1.0_x5.0_linux_amd64").write_bytes(b"old")
    (stale / "packer-plugin-qemu_v1.1.0_x5.0_linux_amd64_SHA256SUM").write_text("x")
    install.install(
        make_plan(layout, openpgp_keys["rsa"]),
        system=RecordingSystem(key=openpgp_keys["rsa"].armored),
    )
    assert sorted(p.name for p in stale.iterdir()) == [
        "packer-plugin-qemu_v1.1.1_x5.0_linux_amd64",
        "packer-plugin-qemu_v1.1.1_x5.0_linux_amd64_SHA256SUM",
    ]


# --- proxies --------------------------------------------------------------------------------


def test_model_proxy_reaches_every_download(
    layout: StateLayout, openpgp_keys: dict[str, GeneratedKey]
) -> None:
    environ = {
        "JUJU_CHARM_HTTP_PROXY": "http://proxy.internal:3128",
        "JUJU_CHARM_HTTPS_PROXY": "http://user:pw@proxy.internal:3129",
        "JUJU_CHARM_NO_PROXY": "10.0.0.0/8,.internal",
        "https_proxy": "http://ignored:1",
    }
    plan = dataclasses.replace(
        install.plan_install(
            Settings(), layout, environ=environ, dpkg_arch="amd64", codename="jammy"
        ),
        key_fingerprint=openpgp_keys["rsa"].fingerprint,
    )
    expected = {
        "http_proxy": "http://proxy.internal:3128",
        "HTTP_PROXY": "http://proxy.internal:3128",
        "https_proxy": "http://user:pw@proxy.internal:3129",
        "HTTPS_PROXY": "http://user:pw@proxy.internal:3129",
        "no_proxy": "10.0.0.0/8,.internal",
        "NO_PROXY": "10.0.0.0/8,.internal",
    }
    system = RecordingSystem(key=openpgp_keys["rsa"].armored)
    install.install(plan, system=system)

    assert system.downloads == [(install.HASHICORP_KEY_URL, expected)]
    assert system.updates == [expected]
    assert all(proxy == expected for _, _, proxy in system.installs)
    ((_, plugin_env),) = system.plugin_runs()
    assert {k: plugin_env[k] for k in expected} == expected
    # The dry-run text never shows proxy credentials.
    described = "\n".join(plan.describe())
    assert "pw" not in described
    assert "https_proxy=http://***@proxy.internal:3129" in described
    assert "pw" not in json.dumps(plan.to_json())


def test_standalone_proxy_variables_are_used_without_juju() -> None:
    assert install.proxy_environment({"HTTPS_PROXY": "http://p:8080"}) == {
        "https_proxy": "http://p:8080",
        "HTTPS_PROXY": "http://p:8080",
    }
    assert install.proxy_environment({}) == {}


def test_environment_context_restores_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://before:1")
    monkeypatch.delenv("https_proxy", raising=False)
    with install._environment({"http_proxy": "http://during:2", "https_proxy": "http://d:3"}):
        assert os.environ["http_proxy"] == "http://during:2"
        assert os.environ["https_proxy"] == "http://d:3"
    assert os.environ["http_proxy"] == "http://before:1"
    assert "https_proxy" not in os.environ


# --- offline bundles ------------------------------------------------------------------------


def _zip_bytes(members: Mapping[str, bytes], *, mode: int = 0o755) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def make_bundle(
    path: Path,
    artifact: install.ReleaseArtifact,
    binary: bytes,
    *,
    sums_for: bytes | None = None,
    include_sums: bool = True,
) -> Path:
    """A bundle as the docs tell operators to make it: release zip + SHA256SUMS."""
    release_zip = _zip_bytes({artifact.binary_in(artifact.zip_name): binary})
    digest = hashlib.sha256(sums_for if sums_for is not None else release_zip).hexdigest()
    members = {artifact.zip_name: release_zip}
    if include_sums:
        members[artifact.sums_name] = (
            f"{'0' * 64}  other_file.zip\n{digest}  {artifact.zip_name}\n".encode()
        )
    path.write_bytes(_zip_bytes(members, mode=0o644))
    return path


PACKER_SCRIPT = b"#!/bin/sh\necho 'Packer v1.11.2'\n"


def test_bundle_is_verified_and_extracted(tmp_path: Path) -> None:
    artifact = install.packer_artifact("1.11.2", "amd64")
    bundle = make_bundle(tmp_path / "bundle.zip", artifact, PACKER_SCRIPT)
    binary = install.extract_verified_binary(bundle, artifact, tmp_path / "out" / "packer")
    assert binary.path.read_bytes() == PACKER_SCRIPT
    assert binary.path.stat().st_mode & 0o777 == 0o755
    assert binary.zip_name == "packer_1.11.2_linux_amd64.zip"
    # The extracted binary really runs (it is what `packer version` will execute).
    output = subprocess.run([binary.path], capture_output=True, text=True, check=True, timeout=10)
    assert install.installed_packer_version(output.stdout) == "1.11.2"


def test_bundle_with_wrong_checksum_is_refused(tmp_path: Path) -> None:
    artifact = install.packer_artifact("1.11.2", "amd64")
    bundle = make_bundle(tmp_path / "b.zip", artifact, PACKER_SCRIPT, sums_for=b"other")
    dest = tmp_path / "out" / "packer"
    with pytest.raises(UsageError, match="corrupt or not HashiCorp's"):
        install.extract_verified_binary(bundle, artifact, dest)
    assert not dest.exists()


def test_bundle_without_sums_or_for_another_version(tmp_path: Path) -> None:
    artifact = install.packer_artifact("1.11.2", "amd64")
    no_sums = make_bundle(tmp_path / "a.zip", artifact, PACKER_SCRIPT, include_sums=False)
    with pytest.raises(UsageError, match=r"holds no packer_1\.11\.2_SHA256SUMS: make it with"):
        install.extract_verified_binary(no_sums, artifact, tmp_path / "x")
    other = make_bundle(tmp_path / "b.zip", install.packer_artifact("1.12.0", "amd64"), b"x")
    with pytest.raises(UsageError, match=r"holds no packer_1\.11\.2_linux_amd64\.zip"):
        install.extract_verified_binary(other, artifact, tmp_path / "x")
    (tmp_path / "c.zip").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="is not a zip bundle"):
        install.extract_verified_binary(tmp_path / "c.zip", artifact, tmp_path / "x")


def test_bundle_with_corrupt_member_fails_crc(tmp_path: Path) -> None:
    artifact = install.packer_artifact("1.11.2", "amd64")
    release_zip = bytearray(_zip_bytes({"packer": PACKER_SCRIPT * 50}))
    # Flip a byte inside the compressed data; SHA256SUMS is made for the damaged zip, so only
    # the CRC can catch it.
    header_end = 30 + len("packer")
    release_zip[header_end + 5] ^= 0xFF
    sums = f"{hashlib.sha256(release_zip).hexdigest()}  {artifact.zip_name}\n".encode()
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(
        _zip_bytes({artifact.zip_name: bytes(release_zip), artifact.sums_name: sums})
    )
    with pytest.raises(UsageError, match=r"(fails its CRC|is damaged)"):
        install.extract_verified_binary(bundle, artifact, tmp_path / "out" / "packer")
    assert not (tmp_path / "out" / "packer").exists()


def test_bundle_with_damaged_release_zip_is_bad_input(tmp_path: Path) -> None:
    artifact = install.packer_artifact("1.11.2", "amd64")
    bundle = bytearray(make_bundle(tmp_path / "b.zip", artifact, PACKER_SCRIPT * 50).read_bytes())
    # Flip a byte inside the bundle's compressed copy of the release zip (its first member).
    bundle[30 + len(artifact.zip_name) + 5] ^= 0xFF
    (tmp_path / "b.zip").write_bytes(bytes(bundle))
    with pytest.raises(UsageError, match=r"packer_1\.11\.2_linux_amd64\.zip in .* is damaged"):
        install.extract_verified_binary(tmp_path / "b.zip", artifact, tmp_path / "out" / "packer")
    assert not (tmp_path / "out" / "packer").exists()


def test_install_from_bundles_uses_no_repository(tmp_path: Path, layout: StateLayout) -> None:
    packer_bundle = make_bundle(
        tmp_path / "packer.zip", install.packer_artifact("1.11.2", "amd64"), PACKER_SCRIPT
    )
    plugin = install.plugin_artifact("1.1.1", "amd64")
    plugin_bundle = make_bundle(tmp_path / "plugin.zip", plugin, b"\x7fELF plugin")
    plan = make_plan(layout, packer_bundle=packer_bundle, plugin_bundle=plugin_bundle)
    system = RecordingSystem()

    result = install.install(plan, system=system)

    assert system.downloads == []
    assert install.SOURCES_PATH not in system.files
    assert system.files[install.BUNDLED_PACKER] == (PACKER_SCRIPT, 0o755)
    assert result.packer_path == install.BUNDLED_PACKER
    ((argv, env),) = system.plugin_runs()
    assert argv[:4] == (str(install.BUNDLED_PACKER), "plugins", "install", "--path")
    assert Path(argv[4]).name == plugin.binary_name
    assert argv[5] == "github.com/hashicorp/qemu"
    assert env["PACKER_PLUGIN_PATH"] == str(layout.packer_plugins)
    # The bundle's checksum is part of the plan's identity: a new resource means a new install.
    assert install.is_current(plan)
    make_bundle(packer_bundle, install.packer_artifact("1.11.2", "amd64"), PACKER_SCRIPT + b"#\n")
    assert not install.is_current(plan)


def test_switching_from_bundle_back_to_apt_removes_the_bundled_packer(
    layout: StateLayout, openpgp_keys: dict[str, GeneratedKey]
) -> None:
    system = RecordingSystem(key=openpgp_keys["rsa"].armored)
    system.files[install.BUNDLED_PACKER] = (PACKER_SCRIPT, 0o755)
    install.install(make_plan(layout, openpgp_keys["rsa"]), system=system)
    assert install.BUNDLED_PACKER not in system.files


# --- KVM ------------------------------------------------------------------------------------


def test_kvm_check(tmp_path: Path) -> None:
    missing = install.check_kvm(tmp_path / "kvm")
    assert not missing.usable
    assert "does not exist" in missing.reason
    (tmp_path / "dir").mkdir()
    unopenable = install.check_kvm(tmp_path / "dir")
    assert not unopenable.usable
    assert "cannot be opened read/write" in unopenable.reason
    device = tmp_path / "device"
    device.write_bytes(b"")
    assert install.check_kvm(device) == install.KvmCheck(True)


# --- the real host layer (harmless operations only) -----------------------------------------


def test_real_system_writes_atomically_and_idempotently(tmp_path: Path) -> None:
    system = install.RealHostSystem()
    target = tmp_path / "etc" / "file"
    assert system.write_file(target, b"one", 0o640)
    assert target.stat().st_mode & 0o777 == 0o640
    assert not system.write_file(target, b"one", 0o640)
    assert system.write_file(target, b"one", 0o644)
    source = tmp_path / "source"
    source.write_bytes(b"two")
    assert system.copy_file(source, target, 0o755)
    assert not system.copy_file(source, target, 0o755)
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file"]  # no temporary left
    assert system.remove_file(target)
    assert not system.remove_file(target)


def test_real_system_run_reports_the_failure() -> None:
    system = install.RealHostSystem()
    assert system.run(["sh", "-c", "echo ok"], env={"PATH": "/usr/bin:/bin"}, timeout=10) == "ok\n"
    with pytest.raises(StepFailed, match="sh -c echo boom >&2; exit 3 failed: boom"):
        system.run(
            ["sh", "-c", "echo boom >&2; exit 3"], env={"PATH": "/usr/bin:/bin"}, timeout=10
        )
    with pytest.raises(StepFailed, match="did not finish in 1s"):
        system.run(["sleep", "5"], env={"PATH": "/usr/bin:/bin"}, timeout=1)


def test_real_system_reads_apt_state() -> None:
    system = install.RealHostSystem()
    assert system.apt_installed_version("dpkg")
    assert system.apt_installed_version("no-such-package-here") is None
    assert system.apt_candidate_versions("no-such-package-here") == []


def test_host_facts(tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text('NAME="Ubuntu"\nVERSION_CODENAME=noble\n')
    assert install.host_codename(os_release) == "noble"
    os_release.write_text('NAME="Something"\n')
    with pytest.raises(StepFailed, match="codename"):
        install.host_codename(os_release)
    assert install.dpkg_architecture() in {"amd64", "arm64"}


# --- setup-host ------------------------------------------------------------------------------


def test_setup_host_dry_run_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENEULER_IMAGE_BUILDER_STATE_DIR", str(tmp_path))
    assert main(["setup-host", "--dry-run", "--json", "--qemu-plugin-version", "1.1.3"]) == 0
    data = json.loads(capsys.readouterr().out)
    plan = data["plan"]
    assert plan["apt_repository"]["key_fingerprint"] == install.HASHICORP_APT_KEY_FINGERPRINT
    assert plan["packer_version"] == "1.11.2"
    assert plan["qemu_plugin_version"] == "1.1.3"
    assert plan["plugin_dir"] == str(tmp_path / "packer-plugins")
    assert "qemu-utils" in plan["apt_packages"]
    assert any(
        "packer plugins install github.com/hashicorp/qemu v1.1.3" in s for s in plan["steps"]
    )
    assert set(data["kvm"]) == {"usable", "reason"}
    assert not (tmp_path / "setup-host.json").exists()  # nothing was done


def test_setup_host_bad_input(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENEULER_IMAGE_BUILDER_STATE_DIR", str(tmp_path))
    assert main(["setup-host", "--dry-run", "--packer-bundle", str(tmp_path / "none.zip")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["setup-host", "--dry-run", "--qemu-plugin-version", "1.1.2"]) == 2
    assert "1.1.2 halts kickstart builds" in capsys.readouterr().err
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["setup-host"]) == 2
    assert "run it as root (sudo)" in capsys.readouterr().err
