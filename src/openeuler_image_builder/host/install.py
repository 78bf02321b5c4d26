"""Set up a build host: apt packages, Packer and the Packer qemu plugin.

The charm runs this on install, upgrade-charm and when config that affects it changes; the
``setup-host`` command runs the same code on a standalone machine. Everything is idempotent: a
second run with the same plan changes nothing.

- apt packages for the host architecture, installed with charmlibs-apt;
- Packer at ``packer-version`` from HashiCorp's apt repository, whose signing key is downloaded
  and trusted only if its fingerprint is the published one (``HASHICORP_APT_KEY_FINGERPRINT``,
  read by gpg: ``gpg.py``); or from an offline bundle (the charm's ``packer`` resource) verified
  against HashiCorp's ``SHA256SUMS`` (``artifacts.py``);
- the qemu plugin at ``qemu-plugin-version`` with ``packer plugins install`` into
  ``StateLayout.packer_plugins`` (``PACKER_PLUGIN_PATH``), or from an offline bundle (the
  ``packer-qemu-plugin`` resource);
- every download (key, apt, plugin) goes through the model proxy (``JUJU_CHARM_HTTP_PROXY``,
  ``JUJU_CHARM_HTTPS_PROXY``, ``JUJU_CHARM_NO_PROXY``) or, standalone, the usual proxy variables
  (``proxy.py``).

Side effects go through a ``HostSystem`` (``system.py``) so tests can record what would be done
without doing it. The KVM check is ``kvm.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from openeuler_image_builder.core import files
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.progress import Reporter, null_reporter
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.host import gpg
from openeuler_image_builder.host.artifacts import (
    extract_verified_binary,
    file_sha256,
    packer_artifact,
    plugin_artifact,
)
from openeuler_image_builder.host.proxy import proxy_environment, redact_url
from openeuler_image_builder.host.system import (
    COMMAND_TIMEOUT,
    STEP,
    HostSystem,
    RealHostSystem,
)

logger = logging.getLogger(__name__)

HASHICORP_APT_URL = "https://apt.releases.hashicorp.com"
HASHICORP_KEY_URL = "https://apt.releases.hashicorp.com/gpg"
# HashiCorp's Linux package-signing key, in use since 2023-01-23 (the previous key was
# E8A0 32E0 94D8 EB4E A189 D270 DA41 8C88 A321 9F7B). Published in HashiCorp's install
# instructions ("The fingerprint must match 798A EC65 4E5C 1542 8C8E 42EE AA16 FCBC A621 E701",
# e.g. developer.hashicorp.com/packer/install and /terraform/install), on
# https://www.hashicorp.com/trust/security ("Linux Package Checksum Verification"), and in the
# rotation report hashicorp/terraform#32622 (NO_PUBKEY AA16FCBCA621E701).
HASHICORP_APT_KEY_FINGERPRINT = "798AEC654E5C15428C8E42EEAA16FCBCA621E701"
KEYRING_PATH = Path("/etc/apt/keyrings/hashicorp-archive-keyring.gpg")
SOURCES_PATH = Path("/etc/apt/sources.list.d/hashicorp.sources")
APT_PACKER = Path("/usr/bin/packer")
BUNDLED_PACKER = Path("/usr/local/bin/packer")
QEMU_PLUGIN_SOURCE = "github.com/hashicorp/qemu"
OS_RELEASE = Path("/etc/os-release")

DOWNLOAD_TIMEOUT = 60.0
PLUGIN_INSTALL_TIMEOUT = 600.0

# What a build needs on every host (the tools the pipeline and the vm backend look for):
# qemu-img, tarball compression, the image's package list (rpm -qa --root), reading the disk
# image without root (fuse2fs, fusermount3; qemu-storage-daemon comes with the emulator's
# qemu-system-common), CA certificates for the HTTPS downloads, and gpg to read the
# fingerprint of HashiCorp's apt signing key (gpg.py).
COMMON_PACKAGES: tuple[str, ...] = (
    "qemu-utils",
    "pigz",
    "rpm",
    "fuse3",
    "fuse2fs",
    "e2fsprogs",
    "ca-certificates",
    "gnupg",
)
# The system emulator for the host's own architecture and its UEFI firmware (builds run native:
# aarch64 images are built by units on arm64 machines): OVMF (x86_64) and AAVMF (aarch64), the
# files render.py looks for (docs/recipe.md "Firmware").
ARCH_PACKAGES: dict[str, tuple[str, ...]] = {
    "amd64": ("qemu-system-x86", "ovmf"),
    "arm64": ("qemu-system-arm", "qemu-efi-aarch64"),
}


# --- host facts ----------------------------------------------------------------------------


def host_codename(os_release: Path = OS_RELEASE) -> str:
    """The distribution codename (``jammy``, ``noble``, ``bookworm``) from os-release."""
    values = {}
    with contextlib.suppress(OSError):
        for line in os_release.read_text().splitlines():
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"')
    codename = values.get("VERSION_CODENAME") or values.get("UBUNTU_CODENAME")
    if not codename:
        raise StepFailed(STEP, f"cannot tell the distribution codename from {os_release}")
    return codename


def dpkg_architecture() -> str:
    """The host's dpkg architecture (``amd64``, ``arm64``)."""
    try:
        result = subprocess.run(
            ["dpkg", "--print-architecture"],
            capture_output=True,
            text=True,
            check=True,
            timeout=COMMAND_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise StepFailed(STEP, f"cannot run dpkg --print-architecture ({error})") from None
    return result.stdout.strip()


# --- the plan ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InstallPlan:
    """Everything one set-up run will ensure, decided before anything changes."""

    dpkg_arch: str
    codename: str
    apt_packages: tuple[str, ...]
    packer_version: str
    qemu_plugin_version: str
    plugin_dir: Path
    work_dir: Path
    state_file: Path
    packer_bundle: Path | None = None
    plugin_bundle: Path | None = None
    proxy: Mapping[str, str] = dataclasses.field(default_factory=dict)
    skip_apt: bool = False
    key_fingerprint: str = HASHICORP_APT_KEY_FINGERPRINT

    @property
    def packer_path(self) -> Path:
        """Where the Packer this plan installs lives (with ``skip_apt``: the one on PATH)."""
        if self.packer_bundle:
            return BUNDLED_PACKER
        if self.skip_apt:
            found = shutil.which("packer", path=self.packer_environment()["PATH"])
            return Path(found) if found else APT_PACKER
        return APT_PACKER

    @property
    def plugin_binary_dir(self) -> Path:
        """Where ``packer plugins install`` puts the qemu plugin under ``PACKER_PLUGIN_PATH``."""
        return self.plugin_dir / QEMU_PLUGIN_SOURCE

    def key(self) -> dict[str, object]:
        """What decides whether an earlier run is still good (compared with the state file)."""
        return {
            "dpkg_arch": self.dpkg_arch,
            "apt_packages": sorted(self.apt_packages),
            "packer_version": self.packer_version,
            "packer_bundle": file_sha256(self.packer_bundle) if self.packer_bundle else None,
            "qemu_plugin_version": self.qemu_plugin_version,
            "plugin_bundle": file_sha256(self.plugin_bundle) if self.plugin_bundle else None,
            "plugin_dir": str(self.plugin_dir),
            "skip_apt": self.skip_apt,
        }

    def packer_environment(self) -> dict[str, str]:
        """The environment Packer runs with here (plugin dir, proxy, no phoning home)."""
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.work_dir.parent),
            "PACKER_PLUGIN_PATH": str(self.plugin_dir),
            "CHECKPOINT_DISABLE": "1",
            "TMPDIR": str(self.work_dir),
            **self.proxy,
        }

    def describe(self) -> list[str]:
        """What this plan will ensure, one line per step (``setup-host --dry-run``)."""
        steps = []
        proxies = {
            name: redact_url(value)
            for name, value in self.proxy.items()
            if name.islower() and name != "no_proxy"
        }
        if proxies:
            shown = ", ".join(f"{name}={value}" for name, value in sorted(proxies.items()))
            steps.append(f"download through {shown}")
        if not self.skip_apt:
            steps.append("apt packages: " + " ".join(self.apt_packages))
        if self.packer_bundle:
            artifact = packer_artifact(self.packer_version, self.dpkg_arch)
            steps.append(
                f"Packer {self.packer_version} from {self.packer_bundle} "
                f"({artifact.zip_name} checked against {artifact.sums_name}) "
                f"to {BUNDLED_PACKER}"
            )
        elif not self.skip_apt:
            steps.append(
                f"HashiCorp apt key from {HASHICORP_KEY_URL}, trusted only with fingerprint "
                f"{self.key_fingerprint}, to {KEYRING_PATH}"
            )
            steps.append(
                f"apt repository {HASHICORP_APT_URL} {self.codename} main "
                f"({self.dpkg_arch}, Signed-By {KEYRING_PATH}) in {SOURCES_PATH}"
            )
            steps.append(f"apt package packer={self.packer_version}-* (held)")
        if self.plugin_bundle:
            artifact = plugin_artifact(self.qemu_plugin_version, self.dpkg_arch)
            steps.append(
                f"qemu plugin {self.qemu_plugin_version} from {self.plugin_bundle} "
                f"({artifact.zip_name} checked against {artifact.sums_name}): "
                f"packer plugins install --path <binary> {QEMU_PLUGIN_SOURCE} "
                f"(PACKER_PLUGIN_PATH={self.plugin_dir})"
            )
        else:
            steps.append(
                f"packer plugins install {QEMU_PLUGIN_SOURCE} v{self.qemu_plugin_version} "
                f"(PACKER_PLUGIN_PATH={self.plugin_dir})"
            )
        return steps

    def to_json(self) -> dict[str, object]:
        """A JSON description (``setup-host --dry-run --json``); proxy credentials redacted."""
        return {
            "dpkg_arch": self.dpkg_arch,
            "codename": self.codename,
            "apt_packages": [] if self.skip_apt else list(self.apt_packages),
            "packer_version": self.packer_version,
            "packer_source": str(self.packer_bundle) if self.packer_bundle else "apt",
            "packer_path": str(self.packer_path),
            "apt_repository": None
            if self.packer_bundle or self.skip_apt
            else {
                "uri": HASHICORP_APT_URL,
                "suite": self.codename,
                "key_url": HASHICORP_KEY_URL,
                "key_fingerprint": self.key_fingerprint,
                "keyring": str(KEYRING_PATH),
                "sources": str(SOURCES_PATH),
            },
            "qemu_plugin_version": self.qemu_plugin_version,
            "qemu_plugin_source": str(self.plugin_bundle) if self.plugin_bundle else "github",
            "plugin_dir": str(self.plugin_dir),
            "proxy": {name: redact_url(value) for name, value in self.proxy.items()},
            "steps": self.describe(),
        }


def apt_packages_for(dpkg_arch: str) -> tuple[str, ...]:
    """The apt packages a build host of this architecture needs.

    Raises:
        UsageError: an architecture this tool does not build on.
    """
    if dpkg_arch not in ARCH_PACKAGES:
        raise UsageError(
            f"cannot build on a {dpkg_arch} host: use an amd64 (x86_64 images) or arm64 "
            "(aarch64 images) machine"
        )
    return (*ARCH_PACKAGES[dpkg_arch], *COMMON_PACKAGES)


def plan_install(
    settings: Settings,
    layout: StateLayout,
    *,
    packer_bundle: Path | None = None,
    plugin_bundle: Path | None = None,
    environ: Mapping[str, str] | None = None,
    dpkg_arch: str | None = None,
    codename: str | None = None,
    skip_apt: bool = False,
) -> InstallPlan:
    """Decide what ``install`` will ensure for these settings on this host."""
    dpkg_arch = dpkg_arch or dpkg_architecture()
    return InstallPlan(
        dpkg_arch=dpkg_arch,
        codename=codename or host_codename(),
        apt_packages=apt_packages_for(dpkg_arch),
        packer_version=settings.packer_version,
        qemu_plugin_version=settings.qemu_plugin_version,
        plugin_dir=layout.packer_plugins,
        work_dir=layout.work,
        state_file=layout.root / "setup-host.json",
        packer_bundle=packer_bundle,
        plugin_bundle=plugin_bundle,
        proxy=proxy_environment(environ),
        skip_apt=skip_apt,
        key_fingerprint=HASHICORP_APT_KEY_FINGERPRINT,
    )


def hashicorp_sources(plan: InstallPlan) -> str:
    """The deb822 sources file of HashiCorp's repository, pinned to our keyring only."""
    return (
        "# Written by openeuler-image-builder setup-host: Packer from HashiCorp.\n"
        "Types: deb\n"
        f"URIs: {HASHICORP_APT_URL}\n"
        f"Suites: {plan.codename}\n"
        "Components: main\n"
        f"Architectures: {plan.dpkg_arch}\n"
        f"Signed-By: {KEYRING_PATH}\n"
    )


# --- running the plan ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InstallResult:
    """What the host has after ``install``."""

    packer_version: str
    packer_path: Path
    qemu_plugin_version: str
    plugin_dir: Path
    changed: bool

    def to_json(self) -> dict[str, object]:
        """A JSON description (``setup-host --json``)."""
        return {
            "packer_version": self.packer_version,
            "packer_path": str(self.packer_path),
            "qemu_plugin_version": self.qemu_plugin_version,
            "plugin_dir": str(self.plugin_dir),
            "changed": self.changed,
        }


def read_state(plan: InstallPlan) -> dict[str, Any] | None:
    """What the last successful run recorded, or None."""
    try:
        data = json.loads(plan.state_file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_current(plan: InstallPlan) -> bool:
    """Whether the last successful run installed exactly this plan (nothing to do)."""
    state = read_state(plan)
    return state is not None and state.get("key") == plan.key()


def installed_packer_version(output: str) -> str | None:
    """The version in ``packer version`` output (``Packer v1.11.2``)."""
    match = re.search(r"Packer v(\d+\.\d+\.\d+)", output)
    return match.group(1) if match else None


def _pick_version(candidates: Sequence[str], upstream: str) -> str | None:
    """The candidate with this upstream version and the highest Debian revision."""
    matching = [v for v in candidates if v.split(":")[-1].rsplit("-", 1)[0] == upstream]

    def revision(version: str) -> tuple[int, ...]:
        tail = version.rsplit("-", 1)[-1] if "-" in version else "0"
        return tuple(int(part) for part in re.findall(r"\d+", tail)) or (0,)

    return max(matching, key=revision) if matching else None


def _install_packer_from_apt(plan: InstallPlan, system: HostSystem, progress: Reporter) -> bool:
    progress("packer", None, f"HashiCorp apt key from {HASHICORP_KEY_URL}")
    downloaded = system.download(HASHICORP_KEY_URL, proxy=plan.proxy, timeout=DOWNLOAD_TIMEOUT)
    try:
        key = gpg.select_key(downloaded, plan.key_fingerprint)
    except UsageError as error:
        raise StepFailed(STEP, f"HashiCorp apt key: {error}") from None
    except StepFailed as error:
        raise StepFailed(STEP, f"HashiCorp apt key: {error.reason}") from None
    changed = system.write_file(KEYRING_PATH, key.to_bytes(), 0o644)
    changed |= system.write_file(SOURCES_PATH, hashicorp_sources(plan).encode(), 0o644)
    candidates = [] if changed else system.apt_candidate_versions("packer")
    wanted = _pick_version(candidates, plan.packer_version)
    if wanted is None:
        progress("packer", None, "apt-get update")
        system.apt_update(proxy=plan.proxy)
        wanted = _pick_version(system.apt_candidate_versions("packer"), plan.packer_version)
    if wanted is None:
        raise StepFailed(
            STEP,
            f"HashiCorp's apt repository offers no packer {plan.packer_version} for "
            f"{plan.codename}/{plan.dpkg_arch}: set packer-version to a released version",
        )
    installed = system.apt_installed_version("packer")
    env = plan.packer_environment()
    if installed != wanted:
        progress("packer", None, f"apt install packer={wanted}")
        system.run(["apt-mark", "unhold", "packer"], env=env, timeout=COMMAND_TIMEOUT)
        if installed is not None:
            # apt-get -y refuses a downgrade; removing first makes any version change work.
            system.apt_remove("packer")
        system.apt_install(["packer"], proxy=plan.proxy, version=wanted)
        changed = True
    # Pinned: a routine `apt upgrade` must not move Packer off the configured version.
    system.run(["apt-mark", "hold", "packer"], env=env, timeout=60)
    # A Packer from an earlier offline bundle would shadow the apt one on PATH.
    changed |= system.remove_file(BUNDLED_PACKER)
    return changed


def _install_plugin(plan: InstallPlan, system: HostSystem, progress: Reporter) -> bool:
    artifact = plugin_artifact(plan.qemu_plugin_version, plan.dpkg_arch)
    target = plan.plugin_binary_dir / artifact.binary_name
    changed = False
    if not system.exists(target):
        env = plan.packer_environment()
        packer = str(plan.packer_path)
        if plan.plugin_bundle:
            progress("qemu-plugin", None, f"from {plan.plugin_bundle}")
            with tempfile.TemporaryDirectory(dir=plan.work_dir) as scratch:
                binary = extract_verified_binary(
                    plan.plugin_bundle, artifact, Path(scratch) / artifact.binary_name
                )
                system.run(
                    [packer, "plugins", "install", "--path", str(binary.path), QEMU_PLUGIN_SOURCE],
                    env=env,
                    timeout=PLUGIN_INSTALL_TIMEOUT,
                )
        else:
            progress("qemu-plugin", None, f"packer plugins install v{plan.qemu_plugin_version}")
            system.run(
                [packer, "plugins", "install", QEMU_PLUGIN_SOURCE, f"v{plan.qemu_plugin_version}"],
                env=env,
                timeout=PLUGIN_INSTALL_TIMEOUT,
            )
        if not system.exists(target):
            raise StepFailed(
                STEP, f"packer plugins install left no {artifact.binary_name} in {target.parent}"
            )
        changed = True
    # Only the configured version stays: Packer would pick the newest one it finds.
    if plan.plugin_binary_dir.is_dir():
        for other in plan.plugin_binary_dir.glob("packer-plugin-qemu_v*"):
            if not other.name.startswith(target.name):
                changed |= system.remove_file(other)
    return changed


def install(
    plan: InstallPlan, *, system: HostSystem | None = None, progress: Reporter = null_reporter
) -> InstallResult:
    """Ensure the host matches ``plan``; idempotent.

    Raises:
        StepFailed: a download, apt or Packer step failed (the message says which and why).
        UsageError: an offline bundle is wrong (the message says how to make a right one).
    """
    system = system or RealHostSystem()
    changed = False
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    plan.plugin_dir.mkdir(parents=True, exist_ok=True)
    if not plan.skip_apt:
        missing = [p for p in plan.apt_packages if system.apt_installed_version(p) is None]
        if missing:
            progress("apt", None, "installing " + " ".join(missing))
            system.apt_install(missing, proxy=plan.proxy)
            changed = True
    if plan.packer_bundle:
        progress("packer", None, f"from {plan.packer_bundle}")
        artifact = packer_artifact(plan.packer_version, plan.dpkg_arch)
        with tempfile.TemporaryDirectory(dir=plan.work_dir) as scratch:
            binary = extract_verified_binary(
                plan.packer_bundle, artifact, Path(scratch) / "packer"
            )
            changed |= system.copy_file(binary.path, BUNDLED_PACKER, 0o755)
    elif not plan.skip_apt:
        changed |= _install_packer_from_apt(plan, system, progress)
    output = system.run(
        [str(plan.packer_path), "version"], env=plan.packer_environment(), timeout=60
    )
    version = installed_packer_version(output)
    if version is None or version != plan.packer_version:
        raise StepFailed(
            STEP,
            f"{plan.packer_path} is Packer {version or 'of unknown version'}, "
            f"not {plan.packer_version}",
        )
    changed |= _install_plugin(plan, system, progress)
    system.write_file(
        plan.state_file,
        files.json_text({"key": plan.key(), "packer_version": version}).encode(),
        0o644,
    )
    progress("done", 100, f"Packer {version}, qemu plugin {plan.qemu_plugin_version}")
    return InstallResult(
        packer_version=version,
        packer_path=plan.packer_path,
        qemu_plugin_version=plan.qemu_plugin_version,
        plugin_dir=plan.plugin_dir,
        changed=changed,
    )
