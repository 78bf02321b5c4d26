"""Tests of the host set-up (install.py, gpg.py, artifacts.py, system.py, the setup-host command).

The install path runs for real against a recording ``HostSystem``: every package, repository
file, key and Packer command that would be applied is asserted, nothing is applied to this
machine. Keys are real OpenPGP keys generated with GnuPG, read back by gpg in the code under
test; bundles are real zips with real SHA256SUMS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import subprocess
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import pytest
from fixtures.host_setup import GeneratedKey, RecordingSystem, gpg_fingerprints, run_gpg

from openeuler_image_builder.cli import main
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.host import artifacts, gpg, install, kvm, proxy
from openeuler_image_builder.host import system as host_system

ARMOR_END = b"-----END PGP PUBLIC KEY BLOCK-----\n"

# --- gpg ------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["rsa", "ed25519"])
def test_fingerprint_agrees_with_gpg(openpgp_keys: dict[str, GeneratedKey], label: str) -> None:
    key = openpgp_keys[label]
    assert gpg.fingerprints(key.armored) == [key.fingerprint]


def test_subkeys_are_not_primary_keys(tmp_path: Path) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    try:
        unlocked = ("--passphrase", "", "--pinentry-mode", "loopback")
        run_gpg(
            home,
            *unlocked,
            "--quick-gen-key",
            "Sub <s@example.com>",
            "ed25519",
            "default",
            "never",
        )
        primary = gpg_fingerprints(home, run_gpg(home, "--export"))[0]
        run_gpg(home, *unlocked, "--quick-add-key", primary, "cv25519", "encr", "never")
        exported = run_gpg(home, "--armor", "--export", primary)
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, timeout=30
        )
    assert b"-----BEGIN PGP PUBLIC KEY BLOCK-----" in exported
    assert gpg.fingerprints(exported) == [primary]
    assert gpg.select_key(exported, primary).fingerprint == primary


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
    assert len(gpg.fingerprints(both)) == 2
    chosen = gpg.select_key(both, openpgp_keys["ed25519"].fingerprint)
    # gpg reads the keyring we would write as exactly one key: the pinned one.
    assert gpg_fingerprints(gnupg_home, chosen.to_bytes()) == [openpgp_keys["ed25519"].fingerprint]


def test_select_key_accepts_spaced_fingerprint_and_binary_input(
    openpgp_keys: dict[str, GeneratedKey], gnupg_home: Path
) -> None:
    binary = run_gpg(gnupg_home, "--export", openpgp_keys["rsa"].fingerprint)
    spaced = " ".join(openpgp_keys["rsa"].fingerprint[i : i + 4] for i in range(0, 40, 4)).lower()
    chosen = gpg.select_key(binary, spaced)
    assert chosen.fingerprint == openpgp_keys["rsa"].fingerprint
    assert gpg_fingerprints(gnupg_home, chosen.to_bytes()) == [openpgp_keys["rsa"].fingerprint]


def test_select_key_refuses_other_keys(openpgp_keys: dict[str, GeneratedKey]) -> None:
    with pytest.raises(UsageError, match="fingerprint mismatch") as caught:
        gpg.select_key(openpgp_keys["rsa"].armored, install.HASHICORP_APT_KEY_FINGERPRINT)
    assert openpgp_keys["rsa"].fingerprint in str(caught.value)


def test_damaged_armor_is_not_a_key(openpgp_keys: dict[str, GeneratedKey]) -> None:
    lines = openpgp_keys["rsa"].armored.decode().splitlines()
    full = [i for i, line in enumerate(lines) if len(line) == 64]  # whole lines of base64
    dropped = set(full[len(full) // 2 :])
    damaged = "\n".join(line for i, line in enumerate(lines) if i not in dropped)
    with pytest.raises(UsageError, match="not an OpenPGP public key block"):
        gpg.fingerprints(damaged.encode())


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
    with pytest.raises(UsageError, match="not an OpenPGP public key block"):
        gpg.fingerprints(data + ARMOR_END)


@pytest.mark.parametrize("data", [b"", b" \n"])
def test_empty_key_is_refused(data: bytes) -> None:
    with pytest.raises(UsageError, match="the key is empty"):
        gpg.select_key(data, install.HASHICORP_APT_KEY_FINGERPRINT)


def test_truncated_key_is_not_a_key(
    openpgp_keys: dict[str, GeneratedKey], gnupg_home: Path
) -> None:
    with pytest.raises(UsageError, match="not an OpenPGP public key block"):
        gpg.fingerprints(b"\xc6\xc0")  # a two-octet length cut after its first octet
    binary = run_gpg(gnupg_home, "--export", openpgp_keys["rsa"].fingerprint)
    with pytest.raises(UsageError, match="not an OpenPGP public key block"):
        gpg.fingerprints(binary[: len(binary) // 2])
    # Cut after the key packet: no user ID, no self-signature.
    bare = run_gpg(
        gnupg_home,
        "--export-filter",
        "keep-uid=uid =~ no-such-user-id",
        "--export",
        openpgp_keys["rsa"].fingerprint,
    )
    with pytest.raises(UsageError, match="no valid self-signature"):
        gpg.select_key(bare, openpgp_keys["rsa"].fingerprint)


def test_secret_key_is_refused(openpgp_keys: dict[str, GeneratedKey], gnupg_home: Path) -> None:
    secret = run_gpg(
        gnupg_home,
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
        "--armor",
        "--export-secret-keys",
        openpgp_keys["ed25519"].fingerprint,
    )
    with pytest.raises(UsageError, match="holds a secret key"):
        gpg.select_key(secret, openpgp_keys["ed25519"].fingerprint)


def test_oversized_key_is_refused_before_gpg_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpg, "GPG", "/nonexistent/gpg")  # gpg must not even be looked for
    with pytest.raises(UsageError, match="more than an OpenPGP public key block"):
        gpg.fingerprints(b"x" * (gpg.MAX_KEY_BYTES + 1))


def test_missing_gpg_says_to_install_gnupg(
    monkeypatch: pytest.MonkeyPatch, openpgp_keys: dict[str, GeneratedKey], layout: StateLayout
) -> None:
    monkeypatch.setattr(gpg, "GPG", "gpg-is-not-installed-here")
    with pytest.raises(UsageError, match="not found: install the gnupg package"):
        gpg.fingerprints(openpgp_keys["rsa"].armored)
    system = RecordingSystem(key=openpgp_keys["rsa"].armored)
    with pytest.raises(StepFailed, match=r"HashiCorp apt key: .* install the gnupg package"):
        install.install(make_plan(layout, openpgp_keys["rsa"]), system=system)
    assert install.KEYRING_PATH not in system.files


def test_hanging_gpg_is_stopped(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    openpgp_keys: dict[str, GeneratedKey],
    layout: StateLayout,
) -> None:
    hanging = tmp_path / "gpg"
    hanging.write_text("#!/bin/sh\nexec sleep 30\n")
    hanging.chmod(0o755)
    monkeypatch.setattr(gpg, "GPG", str(hanging))
    monkeypatch.setattr(gpg, "GPG_TIMEOUT", 1.0)
    with pytest.raises(
        StepFailed, match=r"setup-host failed: HashiCorp apt key: .* did not finish"
    ):
        install.install(
            make_plan(layout, openpgp_keys["rsa"]),
            system=RecordingSystem(key=openpgp_keys["rsa"].armored),
        )


def test_gpg_message_quoting_the_key_is_printable_and_short(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # gpg's complaints can quote the downloaded key's own text: a hostile key must not put
    # escape sequences or kilobytes into the error (and from there into the unit's status).
    noisy = tmp_path / "gpg"
    noisy.write_text(
        "#!/bin/sh\n"
        "printf 'gpg: key \\033[31m%s\\n' \"$(head -c 5000 /dev/zero | tr '\\0' x)\" >&2\n"
        "exit 2\n"
    )
    noisy.chmod(0o755)
    monkeypatch.setattr(gpg, "GPG", str(noisy))
    with pytest.raises(UsageError) as raised:
        gpg.fingerprints(b"not a key")
    message = str(raised.value)
    assert "\x1b" not in message
    assert len(message) < 400
    assert "gpg: key ?[31mxxx" in message


def test_gpg_uses_a_private_home_it_removes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, openpgp_keys: dict[str, GeneratedKey]
) -> None:
    own_home = tmp_path / "own-gnupg"
    own_home.mkdir(mode=0o700)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("GNUPGHOME", str(own_home))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    key = openpgp_keys["ed25519"]
    assert gpg.select_key(key.armored, key.fingerprint).fingerprint == key.fingerprint
    assert list(scratch.iterdir()) == []  # the temporary home is gone (no agent socket left)
    assert list(own_home.iterdir()) == []  # the user's keyrings were never touched


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
    assert set(packages) >= {"qemu-system-x86", "ovmf", "qemu-utils", "pigz", "rpm", "gnupg"}
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


def test_download_that_is_not_a_key_stops_before_trusting_anything(layout: StateLayout) -> None:
    system = RecordingSystem(key=b"<html>captive portal</html>")
    with pytest.raises(
        StepFailed, match="HashiCorp apt key: the key is not an OpenPGP public key block"
    ):
        install.install(make_plan(layout), system=system)
    assert install.KEYRING_PATH not in system.files
    assert install.SOURCES_PATH not in system.files


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
    assert {"qemu-system-arm", "qemu-efi-aarch64", "gnupg"} <= set(packages)
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
    assert proxy.proxy_environment({"HTTPS_PROXY": "http://p:8080"}) == {
        "https_proxy": "http://p:8080",
        "HTTPS_PROXY": "http://p:8080",
    }
    assert proxy.proxy_environment({}) == {}


def test_environment_context_restores_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://before:1")
    monkeypatch.delenv("https_proxy", raising=False)
    with host_system._environment({"http_proxy": "http://during:2", "https_proxy": "http://d:3"}):
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
    artifact: artifacts.ReleaseArtifact,
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
    artifact = artifacts.packer_artifact("1.11.2", "amd64")
    bundle = make_bundle(tmp_path / "bundle.zip", artifact, PACKER_SCRIPT)
    binary = artifacts.extract_verified_binary(bundle, artifact, tmp_path / "out" / "packer")
    assert binary.path.read_bytes() == PACKER_SCRIPT
    assert binary.path.stat().st_mode & 0o777 == 0o755
    assert binary.zip_name == "packer_1.11.2_linux_amd64.zip"
    # The extracted binary really runs (it is what `packer version` will execute).
    output = subprocess.run([binary.path], capture_output=True, text=True, check=True, timeout=10)
    assert install.installed_packer_version(output.stdout) == "1.11.2"


def test_bundle_with_wrong_checksum_is_refused(tmp_path: Path) -> None:
    artifact = artifacts.packer_artifact("1.11.2", "amd64")
    bundle = make_bundle(tmp_path / "b.zip", artifact, PACKER_SCRIPT, sums_for=b"other")
    dest = tmp_path / "out" / "packer"
    with pytest.raises(UsageError, match="corrupt or not HashiCorp's"):
        artifacts.extract_verified_binary(bundle, artifact, dest)
    assert not dest.exists()


def test_bundle_without_sums_or_for_another_version(tmp_path: Path) -> None:
    artifact = artifacts.packer_artifact("1.11.2", "amd64")
    no_sums = make_bundle(tmp_path / "a.zip", artifact, PACKER_SCRIPT, include_sums=False)
    with pytest.raises(UsageError, match=r"holds no packer_1\.11\.2_SHA256SUMS: make it with"):
        artifacts.extract_verified_binary(no_sums, artifact, tmp_path / "x")
    other = make_bundle(tmp_path / "b.zip", artifacts.packer_artifact("1.12.0", "amd64"), b"x")
    with pytest.raises(UsageError, match=r"holds no packer_1\.11\.2_linux_amd64\.zip"):
        artifacts.extract_verified_binary(other, artifact, tmp_path / "x")
    (tmp_path / "c.zip").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="is not a zip bundle"):
        artifacts.extract_verified_binary(tmp_path / "c.zip", artifact, tmp_path / "x")


def test_bundle_with_corrupt_member_fails_crc(tmp_path: Path) -> None:
    artifact = artifacts.packer_artifact("1.11.2", "amd64")
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
        artifacts.extract_verified_binary(bundle, artifact, tmp_path / "out" / "packer")
    assert not (tmp_path / "out" / "packer").exists()


def test_bundle_with_damaged_release_zip_is_bad_input(tmp_path: Path) -> None:
    artifact = artifacts.packer_artifact("1.11.2", "amd64")
    bundle = bytearray(make_bundle(tmp_path / "b.zip", artifact, PACKER_SCRIPT * 50).read_bytes())
    # Flip a byte inside the bundle's compressed copy of the release zip (its first member).
    bundle[30 + len(artifact.zip_name) + 5] ^= 0xFF
    (tmp_path / "b.zip").write_bytes(bytes(bundle))
    with pytest.raises(UsageError, match=r"packer_1\.11\.2_linux_amd64\.zip in .* is damaged"):
        artifacts.extract_verified_binary(
            tmp_path / "b.zip", artifact, tmp_path / "out" / "packer"
        )
    assert not (tmp_path / "out" / "packer").exists()


def test_install_from_bundles_uses_no_repository(tmp_path: Path, layout: StateLayout) -> None:
    packer_bundle = make_bundle(
        tmp_path / "packer.zip", artifacts.packer_artifact("1.11.2", "amd64"), PACKER_SCRIPT
    )
    plugin = artifacts.plugin_artifact("1.1.1", "amd64")
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
    make_bundle(
        packer_bundle, artifacts.packer_artifact("1.11.2", "amd64"), PACKER_SCRIPT + b"#\n"
    )
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
    missing = kvm.check_kvm(tmp_path / "kvm")
    assert not missing.usable
    assert "does not exist" in missing.reason
    (tmp_path / "dir").mkdir()
    unopenable = kvm.check_kvm(tmp_path / "dir")
    assert not unopenable.usable
    assert "cannot be opened read/write" in unopenable.reason
    device = tmp_path / "device"
    device.write_bytes(b"")
    assert kvm.check_kvm(device) == kvm.KvmCheck(True)


# --- the real host layer (harmless operations only) -----------------------------------------


def test_real_system_writes_atomically_and_idempotently(tmp_path: Path) -> None:
    system = host_system.RealHostSystem()
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
    system = host_system.RealHostSystem()
    assert system.run(["sh", "-c", "echo ok"], env={"PATH": "/usr/bin:/bin"}, timeout=10) == "ok\n"
    with pytest.raises(StepFailed, match="sh -c echo boom >&2; exit 3 failed: boom"):
        system.run(
            ["sh", "-c", "echo boom >&2; exit 3"], env={"PATH": "/usr/bin:/bin"}, timeout=10
        )
    with pytest.raises(StepFailed, match="did not finish in 1s"):
        system.run(["sleep", "5"], env={"PATH": "/usr/bin:/bin"}, timeout=1)


def test_real_system_reads_apt_state() -> None:
    system = host_system.RealHostSystem()
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
