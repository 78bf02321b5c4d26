"""Set up a build host: apt packages, Packer, the Packer qemu plugin, and the KVM check.

The charm runs this on install, upgrade-charm and when config that affects it changes; the
``setup-host`` command runs the same code on a standalone machine. Everything is idempotent: a
second run with the same plan changes nothing.

- apt packages for the host architecture, installed with charmlibs-apt;
- Packer at ``packer-version`` from HashiCorp's apt repository, whose signing key is downloaded
  and trusted only if its fingerprint is the published one (``HASHICORP_APT_KEY_FINGERPRINT``);
  or from an offline bundle (the charm's ``packer`` resource) verified against HashiCorp's
  ``SHA256SUMS``;
- the qemu plugin at ``qemu-plugin-version`` with ``packer plugins install`` into
  ``StateLayout.packer_plugins`` (``PACKER_PLUGIN_PATH``), or from an offline bundle (the
  ``packer-qemu-plugin`` resource);
- every download (key, apt, plugin) goes through the model proxy (``JUJU_CHARM_HTTP_PROXY``,
  ``JUJU_CHARM_HTTPS_PROXY``, ``JUJU_CHARM_NO_PROXY``) or, standalone, the usual proxy variables.

Side effects go through a ``HostSystem`` so tests can record what would be done without doing it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import requests
from charmlibs import apt

from openeuler_image_builder.core import files
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.progress import Reporter, null_reporter
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.host import openpgp

logger = logging.getLogger(__name__)

STEP = "setup-host"

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
KVM_DEVICE = Path("/dev/kvm")
OS_RELEASE = Path("/etc/os-release")

DOWNLOAD_TIMEOUT = 60.0
COMMAND_TIMEOUT = 120.0
PLUGIN_INSTALL_TIMEOUT = 600.0

# What a build needs on every host (the tools build.py, diskimage.py and pack.py look for):
# qemu-img, tarball compression, the image's package list (rpm -qa --root), reading the disk
# image without root (fuse2fs, fusermount3; qemu-storage-daemon comes with the emulator's
# qemu-system-common), and CA certificates for the HTTPS downloads.
COMMON_PACKAGES: tuple[str, ...] = (
    "qemu-utils",
    "pigz",
    "rpm",
    "fuse3",
    "fuse2fs",
    "e2fsprogs",
    "ca-certificates",
)
# The system emulator for the host's own architecture and its UEFI firmware (builds run native:
# aarch64 images are built by units on arm64 machines): OVMF (x86_64) and AAVMF (aarch64), the
# files render.py looks for (docs/recipe.md "Firmware").
ARCH_PACKAGES: dict[str, tuple[str, ...]] = {
    "amd64": ("qemu-system-x86", "ovmf"),
    "arm64": ("qemu-system-arm", "qemu-efi-aarch64"),
}
# dpkg architecture → the Go architecture in HashiCorp's release file names.
RELEASE_ARCH = {"amd64": "amd64", "arm64": "arm64"}


# --- proxies -------------------------------------------------------------------------------


def proxy_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Proxy variables for every download, in both spellings tools look for.

    The Juju model's proxy (``JUJU_CHARM_HTTP_PROXY``, ``..._HTTPS_PROXY``, ``..._NO_PROXY``) wins;
    otherwise the usual ``http_proxy``/``HTTP_PROXY`` etc. of the environment are kept.
    """
    environ = os.environ if environ is None else environ
    result: dict[str, str] = {}
    for name in ("http_proxy", "https_proxy", "no_proxy"):
        value = (
            environ.get(f"JUJU_CHARM_{name.upper()}")
            or environ.get(name)
            or environ.get(name.upper())
        )
        if value:
            result[name] = value
            result[name.upper()] = value
    return result


def redact_url(url: str) -> str:
    """A URL without its user and password (proxy URLs may carry credentials)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))


# --- KVM -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KvmCheck:
    """Whether ``/dev/kvm`` can be used, and if not, why."""

    usable: bool
    reason: str = ""


def check_kvm(device: Path | None = None) -> KvmCheck:
    """Check that the KVM device exists and can be opened read/write (as QEMU does)."""
    device = KVM_DEVICE if device is None else device
    if not device.exists():
        return KvmCheck(False, f"{device} does not exist")
    try:
        descriptor = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        return KvmCheck(False, f"{device} cannot be opened read/write ({error.strerror})")
    os.close(descriptor)
    return KvmCheck(True)


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


# --- offline bundles (the charm's resources) -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReleaseArtifact:
    """A HashiCorp release zip: its file name, its SHA256SUMS file, the binary inside."""

    product: str
    version: str
    zip_name: str
    sums_name: str
    binary_name: str

    def binary_in(self, zip_name: str) -> str:
        """The binary's name inside the release zip called ``zip_name``.

        Packer's zip holds ``packer``; a plugin's zip holds a binary named like the zip.
        """
        return "packer" if self.product == "packer" else zip_name.removesuffix(".zip")

    @property
    def zip_pattern(self) -> re.Pattern[str]:
        """The zip's file name; the plugin's protocol part (``x5.0``) may vary."""
        return re.compile("^" + re.escape(self.zip_name).replace(r"x5\.0", r"x\d+\.\d+") + "$")


def packer_artifact(version: str, dpkg_arch: str) -> ReleaseArtifact:
    """Packer's release zip (releases.hashicorp.com/packer/<v>/)."""
    arch = RELEASE_ARCH.get(dpkg_arch, dpkg_arch)
    return ReleaseArtifact(
        product="packer",
        version=version,
        zip_name=f"packer_{version}_linux_{arch}.zip",
        sums_name=f"packer_{version}_SHA256SUMS",
        binary_name="packer",
    )


def plugin_artifact(version: str, dpkg_arch: str) -> ReleaseArtifact:
    """The qemu plugin's release zip (github.com/hashicorp/packer-plugin-qemu releases)."""
    arch = RELEASE_ARCH.get(dpkg_arch, dpkg_arch)
    binary = f"packer-plugin-qemu_v{version}_x5.0_linux_{arch}"
    return ReleaseArtifact(
        product="packer-plugin-qemu",
        version=version,
        zip_name=f"{binary}.zip",
        sums_name=f"packer-plugin-qemu_v{version}_SHA256SUMS",
        binary_name=binary,
    )


def bundle_help(artifact: ReleaseArtifact) -> str:
    """How to make a bundle for ``artifact`` (used in error messages and docs)."""
    return (
        f"make it with `zip {artifact.product}-bundle.zip {artifact.zip_name} "
        f"{artifact.sums_name}` from the files HashiCorp publishes"
    )


@dataclasses.dataclass(frozen=True)
class VerifiedBinary:
    """A binary extracted from a verified release zip."""

    path: Path
    zip_name: str
    zip_sha256: str


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in blocks."""
    return files.hash_file(path)[0]


def extract_verified_binary(bundle: Path, artifact: ReleaseArtifact, dest: Path) -> VerifiedBinary:
    """Verify an offline bundle and extract the binary to ``dest`` (mode 0755).

    A bundle is a zip holding HashiCorp's release zip and the release's ``SHA256SUMS`` file, as
    published. The release zip must be for this version and architecture, its sha256 must match
    its line in ``SHA256SUMS``, and every member's CRC must be right.

    Raises:
        UsageError: the bundle is not as described (the message says what and how to make one).
    """
    hint = bundle_help(artifact)
    try:
        outer = zipfile.ZipFile(bundle)
    except (OSError, zipfile.BadZipFile) as error:
        raise UsageError(f"{bundle} is not a zip bundle ({error}): {hint}") from None
    with outer:
        members = {Path(name).name: name for name in outer.namelist() if not name.endswith("/")}
        zips = [name for name in members if artifact.zip_pattern.match(name)]
        if not zips:
            found = ", ".join(sorted(members)) or "nothing"
            raise UsageError(
                f"{bundle} holds no {artifact.zip_name} (it holds {found}): {hint}; "
                f"the version must be {artifact.version} and the architecture this host's"
            )
        if artifact.sums_name not in members:
            raise UsageError(f"{bundle} holds no {artifact.sums_name}: {hint}")
        zip_name = zips[0]
        sums = outer.read(members[artifact.sums_name]).decode("utf-8", errors="replace")
        expected = None
        for line in sums.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1].lstrip("*") == zip_name:
                expected = fields[0].lower()
        if expected is None:
            raise UsageError(f"{artifact.sums_name} in {bundle} has no line for {zip_name}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
            inner_path = Path(scratch) / zip_name
            binary_name = artifact.binary_in(zip_name)
            try:
                # Extracted once, then hashed and opened from disk.
                with outer.open(members[zip_name]) as source, inner_path.open("wb") as target:
                    shutil.copyfileobj(source, target)
                actual = file_sha256(inner_path)
                if actual != expected:
                    raise UsageError(
                        f"{zip_name} in {bundle} has sha256 {actual}, but {artifact.sums_name} "
                        f"says {expected}: the file is corrupt or not HashiCorp's; download it "
                        "again"
                    )
                with zipfile.ZipFile(inner_path) as inner:
                    broken = inner.testzip()
                    if broken is not None:
                        raise UsageError(f"{zip_name} in {bundle}: member {broken} fails its CRC")
                    if binary_name not in inner.namelist():
                        raise UsageError(f"{zip_name} in {bundle} holds no {binary_name}")
                    with (
                        inner.open(binary_name) as source,
                        files.atomic_writer(dest, mode=0o755) as target,
                    ):
                        shutil.copyfileobj(source, target)
            except (zipfile.BadZipFile, zlib.error) as error:
                raise UsageError(f"{zip_name} in {bundle} is damaged ({error})") from None
    return VerifiedBinary(dest, zip_name, actual)


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


# --- side effects --------------------------------------------------------------------------


class HostSystem(Protocol):
    """Every change ``install`` makes to the host goes through here (tests record them)."""

    def download(self, url: str, *, proxy: Mapping[str, str], timeout: float) -> bytes:
        """GET ``url`` through the proxy."""
        ...

    def write_file(self, path: Path, data: bytes, mode: int) -> bool:
        """Write atomically; return whether the content or mode changed."""
        ...

    def copy_file(self, source: Path, path: Path, mode: int) -> bool:
        """Copy ``source`` to ``path`` atomically; return whether anything changed."""
        ...

    def remove_file(self, path: Path) -> bool:
        """Remove ``path`` if present; return whether it was there."""
        ...

    def apt_update(self, *, proxy: Mapping[str, str]) -> None:
        """``apt-get update``."""
        ...

    def apt_installed_version(self, package: str) -> str | None:
        """The installed version of ``package``, or None."""
        ...

    def apt_candidate_versions(self, package: str) -> list[str]:
        """Every version of ``package`` the configured repositories offer."""
        ...

    def apt_install(
        self, packages: Sequence[str], *, proxy: Mapping[str, str], version: str = ""
    ) -> None:
        """Install packages (``version`` only with a single package)."""
        ...

    def apt_remove(self, package: str) -> None:
        """Remove a package."""
        ...

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], timeout: float) -> str:
        """Run a command; return its stdout; raise ``StepFailed`` when it fails."""
        ...

    def exists(self, path: Path) -> bool:
        """Whether ``path`` exists."""
        ...


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Temporarily add ``values`` to ``os.environ`` (charmlibs-apt runs apt-get with it)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class RealHostSystem:
    """The host itself: charmlibs-apt, requests, subprocess, atomic file writes."""

    def download(self, url: str, *, proxy: Mapping[str, str], timeout: float) -> bytes:
        """GET ``url`` with the given proxies only (not whatever the process inherited)."""
        proxies = {
            scheme: proxy[f"{scheme}_proxy"]
            for scheme in ("http", "https", "no")
            if proxy.get(f"{scheme}_proxy")
        }
        with requests.Session() as session:
            session.trust_env = False
            try:
                response = session.get(url, proxies=proxies, timeout=timeout)
                response.raise_for_status()
            except requests.RequestException as error:
                raise StepFailed(STEP, f"download of {url} failed ({error})") from None
            return response.content

    def write_file(self, path: Path, data: bytes, mode: int) -> bool:
        """Write via a temporary file in the same directory and rename."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return files.write_if_changed(path, data, mode=mode)

    def copy_file(self, source: Path, path: Path, mode: int) -> bool:
        """Copy via a temporary file in the same directory and rename."""
        with contextlib.suppress(OSError):
            if (path.stat().st_mode & 0o7777) == mode and file_sha256(path) == file_sha256(source):
                return False
        path.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_writer(path, mode=mode) as handle, source.open("rb") as origin:
            shutil.copyfileobj(origin, handle)
        return True

    def remove_file(self, path: Path) -> bool:
        """Remove a file if it exists."""
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def apt_update(self, *, proxy: Mapping[str, str]) -> None:
        """``apt-get update`` through charmlibs-apt."""
        with _environment(proxy):
            try:
                apt.update()
            except subprocess.CalledProcessError as error:
                stderr = (error.stderr or b"").decode(errors="replace").strip().splitlines()
                reason = stderr[-1] if stderr else str(error)
                raise StepFailed(STEP, f"apt-get update failed: {reason}") from None

    def apt_installed_version(self, package: str) -> str | None:
        """The installed version according to dpkg, or None."""
        try:
            installed = apt.DebianPackage.from_installed_package(package)
        except apt.PackageNotFoundError:
            return None
        return str(installed.version)

    def apt_candidate_versions(self, package: str) -> list[str]:
        """Versions offered by the repositories (``apt-cache madison``)."""
        try:
            result = subprocess.run(
                ["apt-cache", "madison", package],
                capture_output=True,
                text=True,
                check=False,
                timeout=COMMAND_TIMEOUT,
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise StepFailed(STEP, f"apt-cache madison {package} failed ({error})") from None
        versions = []
        for line in result.stdout.splitlines():
            fields = [field.strip() for field in line.split("|")]
            if len(fields) >= 2 and fields[0] == package:
                versions.append(fields[1])
        return versions

    def apt_install(
        self, packages: Sequence[str], *, proxy: Mapping[str, str], version: str = ""
    ) -> None:
        """Install through charmlibs-apt (which updates the cache once if a package is missing)."""
        with _environment(proxy):
            try:
                apt.add_package(list(packages), version=version)
            except (apt.PackageError, apt.PackageNotFoundError) as error:
                raise StepFailed(STEP, f"apt could not install: {error.message}") from None

    def apt_remove(self, package: str) -> None:
        """Remove a package through charmlibs-apt."""
        try:
            apt.remove_package(package)
        except apt.PackageError as error:
            raise StepFailed(STEP, f"apt could not remove {package}: {error.message}") from None

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], timeout: float) -> str:
        """Run ``argv``; raise ``StepFailed`` with the last line of stderr when it fails."""
        try:
            result = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                env=dict(env),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(
                STEP, f"{argv[0]} {argv[1]} did not finish in {timeout:.0f}s"
            ) from None
        except OSError as error:
            raise StepFailed(STEP, f"cannot run {argv[0]} ({error.strerror})") from None
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            reason = lines[-1] if lines else f"exit status {result.returncode}"
            raise StepFailed(STEP, f"{' '.join(argv[:3])} failed: {reason}")
        return result.stdout

    def exists(self, path: Path) -> bool:
        """Whether ``path`` exists."""
        return path.exists()


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
        key = openpgp.select_key(downloaded, plan.key_fingerprint)
    except UsageError as error:
        raise StepFailed(STEP, f"HashiCorp apt key: {error}") from None
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
