"""Render the image recipe (the ``render`` stage): Packer template, kickstart, curtin hook.

``render_recipe()`` turns the templates under ``templates/`` into a directory Packer can build
on its own (``packer build .`` in it)::

    openeuler.pkr.hcl          Packer HCL2 template (qemu builder), valid for Packer 1.6.6
    plugins.pkr.hcl            required_plugins block (only for Packer >= 1.7 / production)
    http/ks.cfg                kickstart, served by Packer's HTTP server
    curtin/curtin-hooks        the in-image curtin hook (also embedded in the kickstart)
    efivars.fd                 writable copy of the UEFI variable store for the install VM
    serial.log                 written by QEMU: the installer's serial console
    output/<disk>.raw          written by Packer: the installed disk (raw)

The exact contract between these files and the installer is in ``docs/recipe.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import jinja2

from openeuler_image_builder import __version__
from openeuler_image_builder.backends.vm import QEMU_BINARY
from openeuler_image_builder.core import files
from openeuler_image_builder.core.catalogue import Arch, Release, host_arch
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.paths import templates_dir
from openeuler_image_builder.core.settings import Settings

Accelerator = Literal["kvm", "tcg"]

PACKER_TEMPLATE = "openeuler.pkr.hcl"
PLUGINS_TEMPLATE = "plugins.pkr.hcl"
KICKSTART = Path("http") / "ks.cfg"
CURTIN_HOOK = Path("curtin") / "curtin-hooks"
EFI_VARS = "efivars.fd"
SERIAL_LOG = "serial.log"
PACKER_OUTPUT = "output"

# Template sources, relative to templates/; their hash identifies the recipe version.
_SOURCES = (
    "packer/openeuler.pkr.hcl.j2",
    "packer/plugins.pkr.hcl.j2",
    "kickstart/ks.cfg.j2",
    "curtin/curtin-hooks",
    "cloudinit/05_openeuler-image-builder.cfg.j2",
    "cloudinit/oeib-cloudinit-fix.py",
)

# Heredoc delimiters of the files embedded in the kickstart's %post (docs/recipe.md).
HEREDOC_DELIMITERS = {
    "curtin_hook": "OEIB_CURTIN_HOOKS_EOF",
    "cloud_cfg": "OEIB_CLOUD_CFG_EOF",
    "cloudinit_fix": "OEIB_CLOUDINIT_FIX_EOF",
}

SERIAL_CONSOLE: dict[Arch, str] = {"x86_64": "ttyS0,115200", "aarch64": "ttyAMA0,115200"}
MACHINE_TYPE: dict[Arch, str] = {"x86_64": "q35", "aarch64": "virt"}
BOOT_WAIT: dict[Accelerator, str] = {"kvm": "10s", "tcg": "30s"}
# The host as the install VM sees it through QEMU user networking (packer-and-images.md 6.2).
QEMU_USER_NET_HOST = "10.0.2.2"

# Packages besides @core, kernel, dracut, cloud-init and python3-oauthlib (reference:
# packer-and-images.md section 8, curtin-and-cloud-init.md section 4): boot loaders for BIOS and
# UEFI with shim, and the storage tools curtin's redhat hooks expect for MAAS layouts.
_COMMON_PACKAGES = (
    "efibootmgr",
    "lvm2",
    "mdadm",
    "cryptsetup",
    "e2fsprogs",
    "xfsprogs",
    "dosfstools",
    "rsync",
    "tar",
    "sudo",
    "openssh-server",
    "NetworkManager",
)
ARCH_PACKAGES: dict[Arch, tuple[str, ...]] = {
    "x86_64": (
        "grub2-pc",
        "grub2-pc-modules",
        "grub2-efi-x64",
        "grub2-efi-x64-modules",
        "shim-x64",
    ),
    # curtin installs grub2-efi-aa64-modules itself when it is missing (needs a repository).
    "aarch64": ("grub2-efi-aa64", "grub2-efi-aa64-modules", "shim-aa64"),
}

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_PROXY = re.compile(r"^https?://[^\s\"']+$")
_DURATION = re.compile(r"^\d+[smh]$")


@dataclasses.dataclass(frozen=True)
class FirmwarePaths:
    """UEFI firmware of the install VM: read-only code and the variable-store template.

    The variable store is copied into the rendered directory (``efivars.fd``); the code image is
    used in place.
    """

    code: Path
    vars: Path


# Candidates in order of preference: Ubuntu 24.04 ships only the _4M OVMF build, 22.04 and
# Debian 12 both (packer-and-images.md section 5). Secure Boot variants are not used: openEuler's
# shim is not known to be Microsoft-signed.
_FIRMWARE_CANDIDATES: dict[Arch, tuple[tuple[str, str], ...]] = {
    "x86_64": (
        ("usr/share/OVMF/OVMF_CODE_4M.fd", "usr/share/OVMF/OVMF_VARS_4M.fd"),
        ("usr/share/OVMF/OVMF_CODE.fd", "usr/share/OVMF/OVMF_VARS.fd"),
    ),
    "aarch64": (("usr/share/AAVMF/AAVMF_CODE.fd", "usr/share/AAVMF/AAVMF_VARS.fd"),),
}
_FIRMWARE_PACKAGE: dict[Arch, str] = {"x86_64": "ovmf", "aarch64": "qemu-efi-aarch64"}


def detect_firmware(arch: Arch, *, root: Path = Path("/")) -> FirmwarePaths:
    """Find the UEFI firmware for an ``arch`` guest on this host (``root`` for tests).

    Raises:
        UsageError: no known firmware pair is installed; the message names the package.
    """
    for code, variables in _FIRMWARE_CANDIDATES[arch]:
        if (root / code).is_file() and (root / variables).is_file():
            return FirmwarePaths(code=Path("/") / code, vars=Path("/") / variables)
    tried = ", ".join("/" + code for code, _ in _FIRMWARE_CANDIDATES[arch])
    raise UsageError(
        f"no UEFI firmware for {arch} guests found (looked for {tried}): install the "
        f"{_FIRMWARE_PACKAGE[arch]} package, or pass --firmware-code and --firmware-vars"
    )


def _check_firmware(firmware: FirmwarePaths) -> None:
    for label, path in (("code", firmware.code), ("variable store", firmware.vars)):
        if not path.is_file():
            raise UsageError(
                f"UEFI firmware {label} {path} does not exist: pass an existing file "
                "(e.g. /usr/share/OVMF/OVMF_CODE_4M.fd and OVMF_VARS_4M.fd)"
            )


@dataclasses.dataclass(frozen=True)
class RenderedRecipe:
    """Where the rendered recipe is, and what Packer will produce from it."""

    directory: Path
    """Packer runs here: ``packer build .`` (paths in the template are relative to it)."""
    packer_template: Path
    """``openeuler.pkr.hcl``."""
    kickstart: Path
    """``http/ks.cfg``, served by Packer's HTTP server."""
    curtin_hook: Path
    """``curtin/curtin-hooks`` (also embedded in the kickstart's %post)."""
    template_hash: str
    """sha256 over the rendered text files (relative path and content), for the manifest."""
    disk_image: Path
    """Where Packer leaves the installed disk: a **raw** image (``format = "raw"``), so the
    pack step can loop-mount it without converting it."""
    serial_log: Path
    """The installer's serial console, written by QEMU (anaconda's progress lines)."""


def template_id() -> str:
    """First 16 hex digits of the sha256 over the template sources (the kickstart marker)."""
    digest = hashlib.sha256()
    base = templates_dir()
    for name in _SOURCES:
        digest.update(name.encode() + b"\0" + (base / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _hcl_string(value: object) -> str:
    """Escape text for the inside of an HCL double-quoted string."""
    text = str(value)
    if "\n" in text or "\r" in text:
        raise UsageError(f"{text!r} contains a line break, which cannot go into the template")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "$${").replace("%{", "%%{")


def _qemu_option(value: object) -> str:
    """Escape a value inside a QEMU ``-drive`` option list (commas are doubled)."""
    return str(value).replace(",", ",,")


def _environment() -> jinja2.Environment:
    # The output is HCL, kickstart and Python, never HTML: nothing to escape.
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701
    )
    environment.filters["hcl"] = _hcl_string
    environment.filters["qemu_opt"] = _qemu_option
    return environment


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)
    if not parts:
        raise UsageError(f"{text!r} is not a Packer version: use e.g. 1.6.6 or 1.11.2")
    return tuple(int(part) for part in parts[:3])


def installed_kernel_args(release: Release) -> str:
    """Kernel arguments openEuler's anaconda adds to installed systems.

    From anaconda's product configuration of 22.03 SP2 and later (openeuler-releases.md
    section 7); curtin keeps GRUB_CMDLINE_LINUX and adds its own to the _DEFAULT line.
    """
    if release.line == "24.03" or (release.line == "22.03" and release.service_pack >= 2):
        return "cgroup_disable=files apparmor=0"
    return ""


def kickstart_packages(arch: Arch, settings: Settings) -> tuple[str, ...]:
    """Packages listed after ``@core kernel dracut cloud-init python3-oauthlib``."""
    listed = [*_COMMON_PACKAGES, *ARCH_PACKAGES[arch]]
    extra = [name for name in settings.extra_packages if name not in listed]
    return tuple(listed + extra)


def required_packages(arch: Arch) -> tuple[str, ...]:
    """Packages the kickstart's %post checks with ``rpm -q`` (deployment needs each)."""
    return (
        "kernel",
        "dracut",
        "cloud-init",
        "python3-oauthlib",
        *ARCH_PACKAGES[arch],
        "efibootmgr",
        "lvm2",
        "mdadm",
        "e2fsprogs",
        "xfsprogs",
        "dosfstools",
    )


def _embeddable(name: str, text: str) -> str:
    delimiter = HEREDOC_DELIMITERS[name]
    if any(line.strip() == delimiter for line in text.splitlines()):
        raise ValueError(f"{name} contains its heredoc delimiter {delimiter}")
    return text if text.endswith("\n") else text + "\n"


def _write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    """Write ``path`` through a temporary file in the same directory and rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path, text, mode=mode)


def _copy_vars(source: Path, target: Path, arch: Arch, code: Path) -> None:
    # QEMU's aarch64 "virt" machine needs both pflash images to be 64 MiB; pad the copy to the
    # size of the code image as packer-maas does (`truncate`).
    data = source.read_bytes()
    if arch == "aarch64":
        size = code.stat().st_size
        if len(data) < size:
            data += b"\0" * (size - len(data))
    _write(target, data)


def guest_url(url: str) -> str:
    """``url`` as the install VM reaches it (loopback hosts become 10.0.2.2).

    A mirror or proxy on this machine's loopback is reached by the guest through QEMU user
    networking at 10.0.2.2 (user and password kept); other URLs are unchanged.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.hostname not in ("localhost", "127.0.0.1", "::1"):
        return url
    credentials, at, _host = parsed.netloc.rpartition("@")
    netloc = credentials + at + QEMU_USER_NET_HOST + (f":{parsed.port}" if parsed.port else "")
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


def render_recipe(
    release: Release,
    arch: Arch,
    settings: Settings,
    output_dir: Path,
    *,
    iso_path: Path | None = None,
    iso_sha256: str | None = None,
    accelerator: Accelerator = "kvm",
    packer_version: str | None = None,
    firmware: FirmwarePaths | None = None,
    http_proxy: str | None = None,
    shutdown_timeout: str = "90m",
) -> RenderedRecipe:
    """Render the Packer template, kickstart and curtin hook for one release and arch.

    Args:
        release: the openEuler release.
        arch: the guest architecture.
        settings: build settings (mirror, updates, extra packages, disk, memory, CPUs, plugin).
        output_dir: directory to render into (created; files of an earlier render replaced).
        iso_path: the local DVD ISO; None makes Packer download it from ``settings.mirror_url``
            and check it against the mirror's ``.sha256sum`` file.
        iso_sha256: sha256 of ``iso_path`` for Packer to check (None: not checked again).
        accelerator: ``kvm`` or ``tcg`` (an aarch64 guest on an x86_64 host needs ``tcg``).
        packer_version: the Packer that will run it; None means production (>= 1.11), which
            also gets ``plugins.pkr.hcl``. Below 1.7 that file is left out.
        firmware: UEFI firmware; None detects it on this host.
        http_proxy: proxy for the kickstart's update repository.
        shutdown_timeout: how long Packer waits for the installer to power off.

    Raises:
        UsageError: an argument cannot work; the message says how to fix it.
    """
    if arch not in release.architectures:
        raise UsageError(f"openEuler {release.name} has no {arch} DVD: use x86_64 or aarch64")
    if accelerator not in BOOT_WAIT:
        raise UsageError(f"unknown accelerator {accelerator!r}: use kvm or tcg")
    if accelerator == "kvm" and arch != host_arch():
        raise UsageError(
            f"KVM cannot run an {arch} guest on this {host_arch()} host: use accelerator tcg"
        )
    if iso_path is not None and not iso_path.is_file():
        raise UsageError(f"ISO {iso_path} does not exist: pass the path of the downloaded DVD")
    if iso_sha256 is not None and not _HEX64.match(iso_sha256):
        raise UsageError(f"{iso_sha256!r} is not a sha256: pass 64 hexadecimal digits")
    if http_proxy is not None and not _PROXY.match(http_proxy):
        raise UsageError(f"proxy {http_proxy!r} is not an http(s) URL: use http://host:port")
    if not _DURATION.match(shutdown_timeout):
        raise UsageError(f"shutdown timeout {shutdown_timeout!r}: use e.g. 90m, 2h or 5400s")
    plugins_block = packer_version is None or _version_tuple(packer_version) >= (1, 7)
    firmware = firmware or detect_firmware(arch)
    _check_firmware(firmware)
    output_dir = Path(output_dir)
    if (output_dir / PACKER_OUTPUT).exists():
        raise UsageError(
            f"{output_dir / PACKER_OUTPUT} exists and Packer refuses to overwrite it: remove it "
            "or render into a new directory"
        )

    environment = _environment()
    disk_name = f"{release.image_basename(arch)}.raw"
    common: dict[str, object] = {
        "release": release.name,
        "arch": arch,
        "tool_version": __version__,
    }
    curtin_hook = environment.get_template("curtin/curtin-hooks").render(
        **common, rhel_major=release.rhel_major
    )
    cloud_cfg = environment.get_template("cloudinit/05_openeuler-image-builder.cfg.j2").render(
        **common, default_user=release.default_user
    )
    cloudinit_fix = (templates_dir() / "cloudinit" / "oeib-cloudinit-fix.py").read_text()
    kickstart = environment.get_template("kickstart/ks.cfg.j2").render(
        **common,
        template_id=template_id(),
        kickstart_version=release.kickstart_version,
        update_repo_url=(
            guest_url(release.update_repo_url(arch, settings.mirror_url))
            if settings.include_updates
            else ""
        ),
        http_proxy=http_proxy or "",
        packages=kickstart_packages(arch, settings),
        required_packages=required_packages(arch),
        installed_kernel_args=installed_kernel_args(release),
        curtin_hook=_embeddable("curtin_hook", curtin_hook),
        cloud_cfg=_embeddable("cloud_cfg", cloud_cfg),
        cloudinit_fix=_embeddable("cloudinit_fix", cloudinit_fix),
    )
    if iso_path is not None:
        iso_url = str(iso_path.resolve())
        iso_checksum = f"sha256:{iso_sha256.lower()}" if iso_sha256 else "none"
        iso_target_path = ""
    else:
        iso_url = release.iso_url(arch, settings.mirror_url)
        iso_checksum = f"file:{release.iso_checksum_url(arch, settings.mirror_url)}"
        iso_target_path = release.iso_name(arch)
    packer_template = environment.get_template("packer/openeuler.pkr.hcl.j2").render(
        **common,
        iso_url=iso_url,
        iso_checksum=iso_checksum,
        iso_target_path=iso_target_path,
        iso_path=iso_url,
        disk_name=disk_name,
        disk_size_mib=settings.disk_size,
        memory_mib=settings.build_memory,
        cpus=settings.build_cpus,
        qemu_binary=QEMU_BINARY[arch],
        machine_type=MACHINE_TYPE[arch],
        accelerator=accelerator,
        cpu_model="host" if accelerator == "kvm" else "max",
        shutdown_timeout=shutdown_timeout,
        boot_wait=BOOT_WAIT[accelerator],
        serial_console=SERIAL_CONSOLE[arch],
        firmware_code=firmware.code,
    )
    texts: dict[Path, str] = {
        Path(PACKER_TEMPLATE): packer_template,
        KICKSTART: kickstart,
        CURTIN_HOOK: curtin_hook,
    }
    if plugins_block:
        texts[Path(PLUGINS_TEMPLATE)] = environment.get_template(
            "packer/plugins.pkr.hcl.j2"
        ).render(**common, qemu_plugin_version=settings.qemu_plugin_version)

    output_dir.mkdir(parents=True, exist_ok=True)
    if not plugins_block:
        (output_dir / PLUGINS_TEMPLATE).unlink(missing_ok=True)
    for relative, text in texts.items():
        _write(output_dir / relative, text, 0o755 if relative == CURTIN_HOOK else 0o644)
    _copy_vars(firmware.vars, output_dir / EFI_VARS, arch, firmware.code)
    return RenderedRecipe(
        directory=output_dir,
        packer_template=output_dir / PACKER_TEMPLATE,
        kickstart=output_dir / KICKSTART,
        curtin_hook=output_dir / CURTIN_HOOK,
        template_hash=hash_texts(texts),
        disk_image=output_dir / PACKER_OUTPUT / disk_name,
        serial_log=output_dir / SERIAL_LOG,
    )


def hash_texts(texts: Mapping[Path, str]) -> str:
    """sha256 over ``relative path NUL content NUL`` of each file, in path order."""
    digest = hashlib.sha256()
    for relative in sorted(texts, key=str):
        digest.update(str(relative).encode() + b"\0" + texts[relative].encode() + b"\0")
    return digest.hexdigest()
