"""Builds the stand-in installer ISO used by the end-to-end tests, from Debian packages.

The ISO is a STAND-IN FOR THE openEuler INSTALLER (anaconda), not an openEuler ISO: no openEuler
ISO can be downloaded on our machines. It follows the parts of the real ISO the image build
depends on (openeuler-releases.md sections 3.3 and 6):

- volume label ``openEuler-<REL>-<arch>``; the DVD's file name;
- a GRUB menu with "Install openEuler <REL>" (entry 0) and "Test this media & install
  openEuler <REL>" (entry 1, the default), 60 s timeout, and the Install entry's edit view laid
  out as the recipe's boot keystrokes expect (setparams line, blank line, kernel line with
  ``inst.stage2=hd:LABEL=...``, initrd line); BIOS and UEFI boot (grub-mkrescue);
- ``/images/pxeboot/vmlinuz`` (a Debian kernel) and ``initrd.img``, whose ``/init`` is the
  stand-in installer (``init``, ``installer-lib.sh``, ``write-root.sh`` beside this file).

Inputs: ``linux-image-<version>-amd64``, ``busybox-static`` and ``fdisk`` (for sfdisk) fetched
with ``apt-get download`` and unpacked with ``dpkg-deb -x``; ``mke2fs``/``mkfs.xfs`` and their
libraries copied from this host (e2fsprogs, xfsprogs); ``grub-mkrescue`` with the host's
grub-pc-bin, grub-efi-amd64-bin, xorriso and mtools; an rpm database of the stand-in packages
made with the host's ``rpmbuild`` and ``rpm``. The result is cached under a key hashed
from every input (package versions, host tool versions, the assets' bytes, release, variant and
the kickstart contract), so a second run reuses it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import jinja2

from openeuler_image_builder.core.catalogue import Arch, Release

ASSETS = Path(__file__).parent
Variant = Literal["normal", "slow", "never-poweroff"]
VARIANTS: tuple[Variant, ...] = ("normal", "slow", "never-poweroff")

# Kernel modules the stand-in needs in a QEMU guest (q35 or pc, virtio or emulated devices);
# their dependencies are added from each module's .modinfo.
WANTED_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "e1000",
    "e1000e",
    "ahci",
    "ata_piix",
    "sd_mod",
    "sr_mod",
    "crc32c_generic",
    "ext4",
    "xfs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_iso8859_1",
    "isofs",
)
# Host binaries copied into the initramfs with their libraries (busybox lacks ext4/xfs mkfs).
HOST_BINARIES = ("/usr/sbin/mke2fs", "/usr/sbin/mkfs.xfs")
HOST_PACKAGES = (
    "grub-common",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "xorriso",
    "mtools",
    "e2fsprogs",
    "xfsprogs",
    "libc6",
    "rpm",
)
REQUIRED_TOOLS = (
    "apt-get",
    "apt-cache",
    "dpkg-deb",
    "grub-mkrescue",
    "xorriso",
    "mformat",
    "cpio",
)
COMMAND_TIMEOUT = 600
# cloud-init of releases whose version the catalogue does not record (24.03 SPs).
DEFAULT_CLOUD_INIT = "23.4.1"
# First words of the rendered kickstart's first line (docs/recipe.md; templates/kickstart).
KICKSTART_MARKER = "# openeuler-image-builder kickstart"


class StandinUnavailable(RuntimeError):
    """A prerequisite for building the stand-in ISO is missing (message says which)."""


@dataclasses.dataclass(frozen=True)
class KickstartContract:
    """What the stand-in checks in the kickstart (docs/recipe.md, "Contract with the stand-in").

    Attributes:
        marker: the start of the kickstart's first line; the line must read
            ``<marker> release=<R> arch=<A> template=<16 hex>`` with this ISO's release and arch.
        hook_path: where the kickstart's %post writes the curtin hook in the image.
        hook_delimiter: the heredoc delimiter around the embedded curtin hook.
    """

    marker: str
    hook_path: str
    hook_delimiter: str

    @classmethod
    def from_recipe(cls) -> KickstartContract:
        """The contract as the recipe module defines it (so the two cannot drift apart)."""
        from openeuler_image_builder.pipeline import render

        return cls(
            marker=KICKSTART_MARKER,
            hook_path="/" + render.CURTIN_HOOK.as_posix(),
            hook_delimiter=render.HEREDOC_DELIMITERS["curtin_hook"],
        )


@dataclasses.dataclass(frozen=True)
class StandinIso:
    """A built (or cached) stand-in ISO."""

    path: Path
    sha256: str
    size: int
    volume_label: str
    release: Release
    arch: Arch
    variant: Variant
    key: str


@dataclasses.dataclass(frozen=True)
class DebianPackage:
    """A Debian package pinned to the version apt would install."""

    name: str
    version: str

    @property
    def spec(self) -> str:
        """``name=version`` as apt-get download takes it."""
        return f"{self.name}={self.version}"


def _run(args: Sequence[str], *, cwd: Path | None = None, timeout: float = COMMAND_TIMEOUT) -> str:
    result = subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise StandinUnavailable(f"{' '.join(args)} failed: {' | '.join(tail)}")
    return result.stdout


def check_prerequisites() -> None:
    """Raise StandinUnavailable naming the missing tools (.ci/apt-packages/e2e.txt has them)."""
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    missing += [path for path in HOST_BINARIES if not Path(path).exists()]
    if missing:
        raise StandinUnavailable(
            f"cannot build the stand-in installer ISO: missing {', '.join(missing)} "
            "(apt-get install the packages in .ci/apt-packages/e2e.txt)"
        )


def _candidate_version(package: str) -> str | None:
    output = _run(["apt-cache", "policy", package], timeout=120)
    match = re.search(r"^\s*Candidate:\s*(\S+)", output, re.MULTILINE)
    if not match or match.group(1) == "(none)":
        return None
    return match.group(1)


def resolve_packages() -> list[DebianPackage]:
    """The Debian packages the ISO is made of, at the versions apt would install now.

    Runs ``apt-get update`` once when apt knows no candidate (a fresh machine).
    """
    if _candidate_version("linux-image-amd64") is None:
        _run(["apt-get", "update", "-q"], timeout=COMMAND_TIMEOUT)
    meta = _candidate_version("linux-image-amd64")
    if meta is None:
        raise StandinUnavailable("apt knows no linux-image-amd64: check the apt sources")
    depends = _run(
        ["apt-cache", "depends", "--important", f"linux-image-amd64={meta}"], timeout=120
    )
    match = re.search(r"Depends:\s*(linux-image-\S+-amd64)\b", depends)
    if not match:
        raise StandinUnavailable(f"linux-image-amd64 {meta} names no kernel package: {depends!r}")
    packages = []
    for name in (match.group(1), "busybox-static", "fdisk"):
        version = _candidate_version(name)
        if version is None:
            raise StandinUnavailable(f"apt has no candidate for {name}")
        packages.append(DebianPackage(name, version))
    return packages


def host_package_versions(names: Iterable[str] = HOST_PACKAGES) -> dict[str, str]:
    """Installed versions of host packages whose files go into the ISO ("" when absent)."""
    versions = {}
    for name in names:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", name],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        versions[name] = result.stdout.strip() if result.returncode == 0 else ""
    return versions


def input_key(
    release: Release,
    arch: Arch,
    variant: Variant,
    contract: KickstartContract,
    packages: Sequence[DebianPackage],
    host_versions: dict[str, str],
) -> str:
    """The cache key: a hash of everything that shapes the ISO."""
    digest = hashlib.sha256()
    for part in (
        release.name,
        arch,
        variant,
        contract.marker,
        contract.hook_path,
        contract.hook_delimiter,
        *(package.spec for package in packages),
        *(f"{name}={version}" for name, version in sorted(host_versions.items())),
    ):
        digest.update(part.encode() + b"\0")
    for asset in sorted(ASSETS.iterdir()):
        if asset.is_file() and asset.suffix != ".pyc":
            digest.update(asset.name.encode() + b"\0" + asset.read_bytes() + b"\0")
    return digest.hexdigest()[:24]


def download(packages: Sequence[DebianPackage], directory: Path) -> dict[str, Path]:
    """``apt-get download`` each package into ``directory`` (reusing files already there)."""
    directory.mkdir(parents=True, exist_ok=True)
    found = {}
    for package in packages:
        pattern = f"{package.name}_*.deb"
        existing = [deb for deb in directory.glob(pattern) if _deb_version(deb) == package.version]
        if not existing:
            _run(["apt-get", "download", "-q", package.spec], cwd=directory)
            existing = [
                deb for deb in directory.glob(pattern) if _deb_version(deb) == package.version
            ]
        if not existing:
            raise StandinUnavailable(f"apt-get download {package.spec} left no .deb")
        found[package.name] = existing[0]
    return found


def prune_cache(cache_dir: Path, packages: Sequence[DebianPackage], keep_isos: int = 6) -> None:
    """Drop downloaded .debs of other versions and all but the newest ``keep_isos`` ISOs."""
    debs = cache_dir / "debs"
    for package in packages:
        for deb in debs.glob(f"{package.name}_*.deb"):
            if _deb_version(deb) != package.version:
                deb.unlink(missing_ok=True)
    built = [entry for entry in (cache_dir / "standin-iso").glob("*") if entry.is_dir()]
    built.sort(key=lambda entry: entry.stat().st_mtime, reverse=True)
    for stale in built[keep_isos:]:
        if not stale.name.startswith("."):
            shutil.rmtree(stale, ignore_errors=True)


def _deb_version(deb: Path) -> str:
    return _run(["dpkg-deb", "-f", str(deb), "Version"], timeout=60).strip()


def kernel_module_order(modules_dir: Path, wanted: Iterable[str]) -> list[Path]:
    """The wanted modules and their dependencies, each after what it depends on.

    Dependencies are read from each module's ``.modinfo`` ``depends=`` string (the host has no
    kmod to run modinfo); modules built into the kernel are skipped.
    """
    by_name: dict[str, Path] = {}
    for path in modules_dir.rglob("*.ko"):
        by_name[path.stem.replace("-", "_")] = path
    builtin = set()
    builtin_file = modules_dir / "modules.builtin"
    if builtin_file.exists():
        for line in builtin_file.read_text().splitlines():
            builtin.add(Path(line).stem.replace("-", "_"))
    ordered: list[Path] = []
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in done or name in builtin:
            return
        if name not in by_name:
            raise StandinUnavailable(f"kernel module {name} is not in {modules_dir}")
        if name in visiting:
            raise StandinUnavailable(f"kernel module dependency cycle at {name}")
        visiting.add(name)
        match = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", by_name[name].read_bytes())
        for dependency in match.group(1).decode().split(",") if match else []:
            if dependency:
                visit(dependency)
        visiting.discard(name)
        done.add(name)
        ordered.append(by_name[name])

    for name in wanted:
        visit(name)
    return ordered


def _libraries(binary: str) -> list[Path]:
    output = _run(["ldd", binary], timeout=60)
    libraries = []
    for line in output.splitlines():
        match = re.search(r"(/\S+)\s+\(0x", line)
        if match:
            libraries.append(Path(match.group(1)))
    return libraries


def _copy_into(source: Path, root: Path, target: str | None = None) -> None:
    destination = root / (target or str(source)).lstrip("/")
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source.resolve(), destination)


def kernel_version_for(release: Release, arch: Arch) -> tuple[str, str]:
    """A kernel version string and dist tag shaped like the release's real ones.

    E.g. 24.03-LTS-SP1 -> ("6.6.0-72.0.0.76.oe2403sp1.x86_64", "oe2403sp1").
    """
    dist = "oe1" if release.line == "20.03" else "oe" + release.line.replace(".", "")
    if release.service_pack and release.line != "20.03":
        dist += f"sp{release.service_pack}"
    base = release.kernel if "-" in release.kernel else release.kernel + "-1"
    return f"{base}.0.0.1.{dist}.{arch}", dist


@dataclasses.dataclass(frozen=True)
class StandinPackage:
    """One "package" the stand-in installs: an rpm header in its database, a few files."""

    name: str
    version: str
    release: str


def standin_packages(release: Release, arch: Arch) -> list[StandinPackage]:
    """The stand-in's package set, in installation order (write-root.sh writes their files)."""
    kernel_version, dist = kernel_version_for(release, arch)
    efi = "aa64" if arch == "aarch64" else "x64"
    kernel_base = kernel_version.removesuffix(f".{arch}")
    kernel_upstream, _, kernel_release = kernel_base.partition("-")
    cloud_init = release.cloud_init or DEFAULT_CLOUD_INIT
    table = [
        ("filesystem", "3.16", "6"),
        ("setup", "2.14.5", "1"),
        ("glibc", "2.38", "29"),
        ("bash", "5.2.15", "9"),
        ("openEuler-release", release.line, "1"),
        ("systemd", "255", "26"),
        ("rpm", "4.18.2", "18"),
        ("dnf", "4.16.2", "9"),
        ("openssh-server", "9.3p2", "16"),
        ("python3", "3.11.6", "8"),
        ("dracut", "059", "22"),
        ("grub2-common", "2.12", "24"),
        *(
            [("grub2-pc", "2.12", "24"), ("grub2-pc-modules", "2.12", "24")]
            if efi == "x64"
            else []
        ),
        (f"grub2-efi-{efi}", "2.12", "24"),
        (f"grub2-efi-{efi}-modules", "2.12", "24"),
        (f"shim-{efi}", "15.7", "14"),
        ("efibootmgr", "18", "2"),
        ("cloud-init", cloud_init, "1"),
        ("python3-oauthlib", "3.2.2", "1"),
        ("lvm2", "2.03.21", "7"),
        ("mdadm", "4.2", "14"),
    ]
    packages = [StandinPackage(name, version, f"{rel}.{dist}") for name, version, rel in table]
    packages.insert(-4, StandinPackage("kernel", kernel_upstream, kernel_release))
    return packages


def build_rpmdb(packages: Sequence[StandinPackage], arch: Arch, work: Path) -> Path:
    """An rpm database (sqlite) holding a header for each stand-in package.

    Empty packages are built with ``rpmbuild`` and recorded with ``rpm --justdb``; the image's
    ``rpm -qa`` (read by pack for the manifest) then lists exactly ``packages``.
    """
    top, database = work / "rpmbuild", work / "rpmdb"
    (top / "SPECS").mkdir(parents=True)
    database.mkdir()
    for package in packages:
        spec = top / "SPECS" / f"{package.name}.spec"
        spec.write_text(
            f"Name: {package.name}\nVersion: {package.version}\nRelease: {package.release}\n"
            "Summary: stand-in package of the e2e stand-in installer (empty)\n"
            "License: Apache-2.0\n%description\nEmpty stand-in, not an openEuler package.\n"
            "%files\n"
        )
        _run(
            [
                "rpmbuild",
                "-bb",
                "--quiet",
                "--target",
                arch,
                "--define",
                f"_topdir {top}",
                "--define",
                "__os_install_post %{nil}",
                str(spec),
            ]
        )
    rpms = sorted(str(path) for path in (top / "RPMS").rglob("*.rpm"))
    if len(rpms) != len(packages):
        raise StandinUnavailable(f"rpmbuild made {len(rpms)} packages, not {len(packages)}")
    _run(
        [
            "rpm",
            "--dbpath",
            str(database),
            "--define",
            "_db_backend sqlite",
            "--install",
            "--justdb",
            "--nodeps",
            "--noscripts",
            "--ignorearch",
            "--ignoreos",
            "--nosignature",
            "--nodigest",
            *rpms,
        ]
    )
    sqlite = database / "rpmdb.sqlite"
    # Fold the write-ahead log into the database file: only that one file goes into the image.
    connection = sqlite3.connect(sqlite)
    try:
        connection.execute("PRAGMA journal_mode=DELETE")
    finally:
        connection.close()
    return sqlite


def standin_config(
    release: Release, arch: Arch, variant: Variant, contract: KickstartContract
) -> str:
    """The shell-sourceable /etc/standin/standin.conf of the initramfs."""
    kernel_version, dist = kernel_version_for(release, arch)
    version_id = release.line
    tag = release.name.removeprefix(release.line).lstrip("-")  # "LTS-SP4"
    values = {
        "STANDIN_RELEASE": release.name,
        "STANDIN_PRODUCT": f"openEuler {release.name}",
        "STANDIN_ARCH": arch,
        "STANDIN_VERSION_ID": version_id,
        "STANDIN_OS_VERSION": f"{version_id} ({tag})",
        "STANDIN_OS_VERSION_TAG": tag.replace("-", " "),
        "STANDIN_KERNEL_VERSION": kernel_version,
        "STANDIN_DIST_TAG": dist,
        "STANDIN_CLOUD_INIT_VERSION": release.cloud_init or DEFAULT_CLOUD_INIT,
        "STANDIN_DEFAULT_USER": release.default_user,
        "STANDIN_KS_MARKER": contract.marker,
        "STANDIN_HOOK_PATH": contract.hook_path,
        "STANDIN_HOOK_DELIMITER": contract.hook_delimiter,
        "STANDIN_VARIANT": variant,
        "STANDIN_PACKAGE_DELAY": "3" if variant == "slow" else "0",
    }
    return "".join(f"{name}={_shell_quote(value)}\n" for name, value in values.items())


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def build_initramfs(
    stage: Path,
    output: Path,
    *,
    debs: dict[str, Path],
    kernel_package: str,
    config: str,
    packages: Sequence[StandinPackage],
    rpmdb: Path,
) -> str:
    """Assemble the initramfs in ``stage`` and write it gzip-compressed to ``output``.

    Returns the Debian kernel's version (the directory under /lib/modules).
    """
    unpacked = stage.parent / "unpacked"
    for name, deb in debs.items():
        (unpacked / name).mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(deb), str(unpacked / name)])
    kernel_root = unpacked / kernel_package
    (modules_parent,) = list((kernel_root / "lib" / "modules").iterdir())
    modules = kernel_module_order(modules_parent, WANTED_MODULES)

    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/standin", "lib/standin", "tmp"):
        (stage / directory).mkdir(parents=True, exist_ok=True)
    busybox = unpacked / "busybox-static" / "bin" / "busybox"
    _copy_into(busybox, stage, "/bin/busybox")
    (stage / "bin" / "sh").symlink_to("busybox")
    _copy_into(unpacked / "fdisk" / "sbin" / "sfdisk", stage, "/usr/sbin/sfdisk")
    for binary in HOST_BINARIES:
        _copy_into(Path(binary), stage)
    os.link(stage / "usr/sbin/mke2fs", stage / "usr/sbin/mkfs.ext4")
    os.link(stage / "usr/sbin/mke2fs", stage / "usr/sbin/mkfs.ext2")
    libraries = {
        library
        for binary in (str(unpacked / "fdisk" / "sbin" / "sfdisk"), *HOST_BINARIES)
        for library in _libraries(binary)
    }
    for library in sorted(libraries):
        _copy_into(library, stage)
    if Path("/etc/mke2fs.conf").exists():
        _copy_into(Path("/etc/mke2fs.conf"), stage)

    module_names = []
    for module in modules:
        _copy_into(module, stage, f"/lib/modules/{module.name}")
        module_names.append(module.name)
    (stage / "etc/standin/modules").write_text("\n".join(module_names) + "\n")
    (stage / "etc/standin/standin.conf").write_text(config)
    (stage / "etc/standin/packages").write_text(
        "".join(f"{p.name} {p.version} {p.release}\n" for p in packages)
    )
    shutil.copyfile(rpmdb, stage / "lib/standin/rpmdb.sqlite")
    for asset, target, mode in (
        ("init", "init", 0o755),
        ("installer-lib.sh", "lib/standin/installer-lib.sh", 0o644),
        ("write-root.sh", "lib/standin/write-root.sh", 0o755),
        ("udhcpc.script", "lib/standin/udhcpc.script", 0o755),
    ):
        shutil.copyfile(ASSETS / asset, stage / target)
        (stage / target).chmod(mode)

    names = sorted(str(path.relative_to(stage)) for path in stage.rglob("*") if path != stage)
    archive = _cpio(stage, names)
    with gzip.open(output, "wb", compresslevel=6) as compressed:
        compressed.write(archive)
    return modules_parent.name


def _cpio(stage: Path, names: Sequence[str]) -> bytes:
    result = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "--reproducible"],
        input=("\n".join([".", *names]) + "\n").encode(),
        cwd=stage,
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise StandinUnavailable(f"cpio failed: {result.stderr.decode(errors='replace')[-300:]}")
    return result.stdout


def render_grub_config(release: Release, arch: Arch) -> str:
    """The ISO's /boot/grub/grub.cfg from ``grub.cfg.j2`` (jinja2, StrictUndefined)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ASSETS),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - a GRUB script, not HTML
    )
    return environment.get_template("grub.cfg.j2").render(
        volume_label=release.iso_volume_label(arch), product=f"openEuler {release.name}"
    )


def make_iso(stage: Path, output: Path, volume_label: str) -> None:
    """Write a BIOS + UEFI bootable ISO of ``stage`` with ``grub-mkrescue``."""
    _run(
        [
            "grub-mkrescue",
            "--output",
            str(output),
            "--compress=no",
            str(stage),
            "--",
            "-volid",
            volume_label,
        ]
    )
    info = _run(["xorriso", "-indev", str(output), "-pvd_info"], timeout=120)
    match = re.search(r"^Volume Id\s*:\s*(\S+)", info, re.MULTILINE)
    if not match or match.group(1) != volume_label:
        raise StandinUnavailable(
            f"grub-mkrescue wrote volume id {match.group(1) if match else None!r}, "
            f"not {volume_label!r}"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build_standin_iso(
    release: Release,
    arch: Arch,
    *,
    cache_dir: Path,
    contract: KickstartContract,
    variant: Variant = "normal",
) -> StandinIso:
    """Build the stand-in ISO for ``release``/``arch`` (or reuse the cached one).

    Raises:
        StandinUnavailable: a prerequisite is missing, or a build step failed.
    """
    if arch != "x86_64":
        raise StandinUnavailable(
            "the stand-in installer ISO is x86_64 only (an aarch64 guest under TCG on an "
            "x86_64 host is too slow for CI)"
        )
    check_prerequisites()
    packages = resolve_packages()
    host_versions = host_package_versions()
    key = input_key(release, arch, variant, contract, packages, host_versions)
    label = release.iso_volume_label(arch)
    final_dir = cache_dir / "standin-iso" / key
    iso_path = final_dir / release.iso_name(arch)
    checksum_file = final_dir / (release.iso_name(arch) + ".sha256")
    if iso_path.is_file() and checksum_file.is_file():
        sha256 = checksum_file.read_text().split()[0]
        return StandinIso(
            iso_path, sha256, iso_path.stat().st_size, label, release, arch, variant, key
        )

    debs = download(packages, cache_dir / "debs")
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{key}-", dir=final_dir.parent) as work_text:
        work = Path(work_text)
        initramfs_stage = work / "initramfs"
        iso_stage = work / "iso"
        (iso_stage / "images" / "pxeboot").mkdir(parents=True)
        (iso_stage / "boot" / "grub").mkdir(parents=True)
        config = standin_config(release, arch, variant, contract)
        standin = standin_packages(release, arch)
        build_initramfs(
            initramfs_stage,
            iso_stage / "images" / "pxeboot" / "initrd.img",
            debs=debs,
            kernel_package=packages[0].name,
            config=config,
            packages=standin,
            rpmdb=build_rpmdb(standin, arch, work),
        )
        (vmlinuz,) = list((work / "unpacked" / packages[0].name / "boot").glob("vmlinuz-*"))
        shutil.copyfile(vmlinuz, iso_stage / "images" / "pxeboot" / "vmlinuz")
        (iso_stage / "boot" / "grub" / "grub.cfg").write_text(render_grub_config(release, arch))
        (iso_stage / ".discinfo").write_text(f"0\nopenEuler\n{release.name}\n{arch}\n")
        (iso_stage / "README.stand-in").write_text(
            "Stand-in installer ISO of the openeuler-image-builder end-to-end tests.\n"
            "It is NOT openEuler and NOT anaconda: a Debian kernel and a busybox initramfs\n"
            "that follow anaconda's kickstart contract and write a synthetic root file system.\n"
        )
        built_dir = work / "result"
        built_dir.mkdir()
        built_iso = built_dir / release.iso_name(arch)
        make_iso(iso_stage, built_iso, label)
        sha256 = _sha256(built_iso)
        (built_dir / checksum_file.name).write_text(f"{sha256}  {built_iso.name}\n")
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(built_dir, final_dir)
    prune_cache(cache_dir, packages)
    return StandinIso(
        iso_path, sha256, iso_path.stat().st_size, label, release, arch, variant, key
    )
