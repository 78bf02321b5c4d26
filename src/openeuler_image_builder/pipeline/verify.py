"""Check a built image before it is published (the ``verify`` stage).

``verify_tree()`` looks at an unpacked root filesystem (the pack step calls it on the mounted
disk image), ``verify_tarball()`` at a packed ``.tar.gz``; both return every problem found, in
a stable order, and ``[]`` for a good image. ``Problem.code`` values are stable identifiers
that tests and the pack stage match on:

==========================  ==================================================================
code                        meaning
==========================  ==================================================================
kernel-missing              no kernel in /boot (curtin's dracut step needs one)
multiple-kernels            more than one kernel version (curtin's dracut step fails)
initramfs-missing           a kernel has no /boot/initramfs-<version>.img
curtin-hook-missing         no /curtin/curtin-hooks (curtin would fail on ID=openEuler)
curtin-hook-not-executable  /curtin/curtin-hooks is not an executable file
cloud-init-missing          no /usr/bin/cloud-init
efi-binaries-missing        no shim/grub EFI binaries for the arch in /boot/efi/EFI/openEuler
bios-grub-missing           x86_64 without grub2-pc modules (/usr/lib/grub/i386-pc)
os-release-not-openeuler    /etc/os-release missing or its ID is not openEuler
dpkg-query-present          dpkg-query exists (curtin would treat the image as Debian)
machine-id-not-empty        /etc/machine-id carries a machine identity
ssh-host-keys-present       /etc/ssh/ssh_host_* keys are in the image
root-password-set           root has a password hash in /etc/shadow
root-password-empty         root has an empty password field (login without password)
shadow-missing              no /etc/shadow, so the root password cannot be checked
fstab-not-empty             /etc/fstab has entries (curtin writes the real one)
resolv-conf-not-empty       /etc/resolv.conf has entries (DNS comes from MAAS)
network-config-present      installer network config (ifcfg-*, NetworkManager connections)
tarball-unreadable          the tarball cannot be read as a gzip-compressed tar
==========================  ==================================================================
"""

from __future__ import annotations

import dataclasses
import posixpath
import stat
import tarfile
import zlib
from pathlib import Path
from typing import Protocol

from openeuler_image_builder.core.catalogue import Arch
from openeuler_image_builder.core.errors import UsageError

EFI_DIRECTORY = "boot/efi/EFI/openEuler"
EFI_BINARIES: dict[Arch, tuple[str, ...]] = {
    "x86_64": ("shimx64.efi", "grubx64.efi"),
    "aarch64": ("shimaa64.efi", "grubaa64.efi"),
}
CURTIN_HOOK = "curtin/curtin-hooks"
_MAX_HOPS = 40
# Files whose content the checks read (tarballs keep only these in memory).
_CONTENT_PATHS = (
    "etc/machine-id",
    "etc/shadow",
    "etc/fstab",
    "etc/resolv.conf",
    "etc/os-release",
    "usr/lib/os-release",
)
_CONTENT_LIMIT = 1024 * 1024
_SMALL_FILE = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with an image."""

    code: str
    """Stable identifier, e.g. ``kernel-missing`` (see the module documentation)."""
    message: str
    """One line for a human."""


class _View(Protocol):
    """Read-only access to a root filesystem by root-relative POSIX path (no leading /)."""

    def kind(self, path: str) -> str | None:
        """``file``, ``dir``, ``link`` or ``other``; None if absent. Does not follow links."""
        ...

    def link_target(self, path: str) -> str: ...

    def mode(self, path: str) -> int: ...

    def size(self, path: str) -> int: ...

    def read(self, path: str) -> bytes: ...

    def children(self, path: str) -> list[str]: ...


def _resolve(view: _View, path: str) -> str | None:
    """Follow symlinks inside the image (absolute targets are relative to its root)."""
    parts = [part for part in path.split("/") if part and part != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = "/".join([*resolved, part])
        kind = view.kind(candidate)
        if kind is None:
            return None
        if kind == "link":
            hops += 1
            if hops > _MAX_HOPS:
                return None
            target = view.link_target(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return "/".join(resolved)


def resolve_in_root(root: Path, relative: str) -> Path | None:
    """``relative`` inside the tree at ``root``, following symlinks as if ``root`` were ``/``.

    Absolute links are taken relative to ``root`` and ``..`` stops at it, so nothing outside the
    image is ever reached. None when a component does not exist or links loop.
    """
    resolved = _resolve(_DirectoryView(root), relative)
    if resolved is None:
        return None
    return root / resolved if resolved else root


class _DirectoryView:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, path: str) -> Path:
        return self.root / path if path else self.root

    def kind(self, path: str) -> str | None:
        try:
            mode = self._path(path).lstat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(mode):
            return "link"
        if stat.S_ISDIR(mode):
            return "dir"
        return "file" if stat.S_ISREG(mode) else "other"

    def link_target(self, path: str) -> str:
        return str(Path.readlink(self._path(path)))

    def mode(self, path: str) -> int:
        return self._path(path).lstat().st_mode

    def size(self, path: str) -> int:
        return self._path(path).lstat().st_size

    def read(self, path: str) -> bytes:
        try:
            with self._path(path).open("rb") as stream:
                return stream.read(_CONTENT_LIMIT)
        except PermissionError:
            raise UsageError(
                f"cannot read /{path} of {self.root}: verify an image tree as root"
            ) from None

    def children(self, path: str) -> list[str]:
        try:
            return sorted(entry.name for entry in self._path(path).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []


class _TarView:
    """An index of a tarball's members; content is kept for ``_CONTENT_PATHS`` only."""

    def __init__(self, archive: tarfile.TarFile) -> None:
        self.members: dict[str, tarfile.TarInfo] = {}
        self.contents: dict[str, bytes] = {}
        self.directories: dict[str, set[str]] = {"": set()}
        hardlinks: dict[str, str] = {}
        for member in archive:
            name = posixpath.normpath(member.name.lstrip("/")).removeprefix("./")
            if name in (".", ""):
                continue
            self.members[name] = member
            parent, _, base = name.rpartition("/")
            self.directories.setdefault(parent, set()).add(base)
            while parent:
                parent, _, base = parent.rpartition("/")
                self.directories.setdefault(parent, set()).add(base)
            if member.islnk():
                hardlinks[name] = posixpath.normpath(member.linkname.lstrip("/")).removeprefix(
                    "./"
                )
            elif member.isreg() and self._keep(name, member.size):
                stream = archive.extractfile(member)
                if stream is not None:
                    self.contents[name] = stream.read()
        for name, target in hardlinks.items():
            if target in self.members:
                self.members[name] = self.members[target]
                if target in self.contents:
                    self.contents[name] = self.contents[target]

    @staticmethod
    def _keep(name: str, size: int) -> bool:
        # Small files under etc/ too: a checked file may be stored as a hard link to one that
        # came earlier in the archive (etc/shadow -> etc/shadow-), and tar streams cannot seek.
        if name in _CONTENT_PATHS:
            return size <= _CONTENT_LIMIT
        return name.startswith("etc/") and size <= _SMALL_FILE

    def kind(self, path: str) -> str | None:
        member = self.members.get(path)
        if member is None:
            return "dir" if path in self.directories else None
        if member.issym():
            return "link"
        if member.isdir():
            return "dir"
        return "file" if member.isreg() or member.islnk() else "other"

    def link_target(self, path: str) -> str:
        return self.members[path].linkname

    def mode(self, path: str) -> int:
        member = self.members.get(path)
        return member.mode if member else 0o755

    def size(self, path: str) -> int:
        member = self.members.get(path)
        return member.size if member else 0

    def read(self, path: str) -> bytes:
        return self.contents.get(path, b"")

    def children(self, path: str) -> list[str]:
        return sorted(self.directories.get(path, set()))


def _file(view: _View, path: str) -> str | None:
    """The resolved path of a regular file at ``path``, or None."""
    resolved = _resolve(view, path)
    if resolved is None or view.kind(resolved) != "file":
        return None
    return resolved


def _content_lines(view: _View, path: str) -> list[str]:
    resolved = _file(view, path)
    if resolved is None:
        return []
    text = view.read(resolved).decode("utf-8", "replace")
    return [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def _kernel_versions(view: _View) -> list[str]:
    boot = _resolve(view, "boot")
    versions: set[str] = set()
    if boot is not None:
        for name in view.children(boot):
            if name.startswith("vmlinuz-") and "-rescue-" not in name:
                versions.add(name.removeprefix("vmlinuz-"))
    modules = _resolve(view, "lib/modules") or _resolve(view, "usr/lib/modules")
    if modules is not None:
        for version in view.children(modules):
            if _file(view, f"{modules}/{version}/vmlinuz") is not None:
                versions.add(version)
    return sorted(versions)


def _check_kernel(view: _View) -> list[Problem]:
    versions = _kernel_versions(view)
    if not versions:
        return [Problem("kernel-missing", "no kernel in /boot: install the kernel package")]
    problems = []
    if len(versions) > 1:
        problems.append(
            Problem(
                "multiple-kernels",
                f"{len(versions)} kernels ({', '.join(versions)}): curtin's dracut step needs "
                "exactly one; install only one kernel package",
            )
        )
    for version in versions:
        initramfs = _file(view, f"boot/initramfs-{version}.img")
        if initramfs is None or view.size(initramfs) == 0:
            problems.append(
                Problem(
                    "initramfs-missing",
                    f"no /boot/initramfs-{version}.img for kernel {version}: run dracut "
                    "in the image build",
                )
            )
    return problems


def _check_curtin_hook(view: _View) -> list[Problem]:
    resolved = _resolve(view, CURTIN_HOOK)
    if resolved is None:
        return [
            Problem(
                "curtin-hook-missing",
                "no /curtin/curtin-hooks: curtin cannot install openEuler without it",
            )
        ]
    if view.kind(resolved) != "file" or not view.mode(resolved) & 0o111:
        return [
            Problem(
                "curtin-hook-not-executable",
                "/curtin/curtin-hooks is not an executable file: curtin skips it",
            )
        ]
    return []


def _check_boot_loaders(view: _View, arch: Arch) -> list[Problem]:
    problems = []
    missing = [
        name for name in EFI_BINARIES[arch] if _file(view, f"{EFI_DIRECTORY}/{name}") is None
    ]
    if missing:
        problems.append(
            Problem(
                "efi-binaries-missing",
                f"no {', '.join(missing)} in /{EFI_DIRECTORY}: install the shim and grub2-efi "
                f"packages for {arch}",
            )
        )
    if arch == "x86_64":
        modules = _resolve(view, "usr/lib/grub/i386-pc")
        if modules is None or not any(name.endswith(".mod") for name in view.children(modules)):
            problems.append(
                Problem(
                    "bios-grub-missing",
                    "no GRUB modules in /usr/lib/grub/i386-pc: install grub2-pc and "
                    "grub2-pc-modules for BIOS machines",
                )
            )
    return problems


def _check_distro(view: _View) -> list[Problem]:
    problems = []
    lines = _content_lines(view, "etc/os-release")
    identity = ""
    for line in lines:
        if line.startswith("ID="):
            identity = line[3:].strip().strip("\"'")
    if identity != "openEuler":
        found = f"ID={identity}" if identity else "no ID"
        problems.append(
            Problem(
                "os-release-not-openeuler",
                f"/etc/os-release has {found}: the image must be openEuler, unmodified",
            )
        )
    for path in ("usr/bin/dpkg-query", "bin/dpkg-query", "usr/sbin/dpkg-query"):
        if _resolve(view, path) is not None:
            problems.append(
                Problem(
                    "dpkg-query-present",
                    f"/{path} exists: curtin would treat the image as Debian; remove it",
                )
            )
            break
    if _resolve(view, "usr/bin/cloud-init") is None:
        problems.append(
            Problem("cloud-init-missing", "no /usr/bin/cloud-init: install the cloud-init package")
        )
    return problems


def _check_identity(view: _View) -> list[Problem]:
    problems = []
    machine_id = _file(view, "etc/machine-id")
    if machine_id is not None and view.read(machine_id).strip():
        problems.append(
            Problem(
                "machine-id-not-empty",
                "/etc/machine-id is not empty: every deployed machine would share it; "
                "truncate it to zero bytes",
            )
        )
    ssh = _resolve(view, "etc/ssh")
    keys = [name for name in view.children(ssh) if name.startswith("ssh_host_")] if ssh else []
    if keys:
        problems.append(
            Problem(
                "ssh-host-keys-present",
                f"SSH host keys in the image ({', '.join(keys)}): remove /etc/ssh/ssh_host_*",
            )
        )
    shadow = _file(view, "etc/shadow")
    if shadow is None:
        problems.append(
            Problem("shadow-missing", "no /etc/shadow: cannot check that root has no password")
        )
    else:
        for line in view.read(shadow).decode("utf-8", "replace").splitlines():
            fields = line.split(":")
            if fields[0] != "root" or len(fields) < 2:
                continue
            password = fields[1]
            if password == "":
                problems.append(
                    Problem(
                        "root-password-empty",
                        "root has an empty password in /etc/shadow (login without a "
                        "password): lock it with usermod --password '!' root",
                    )
                )
            elif password.lstrip("!") not in ("", "*"):
                problems.append(
                    Problem(
                        "root-password-set",
                        "root has a password hash in /etc/shadow: remove it with "
                        "usermod --password '!' root",
                    )
                )
    return problems


def _check_host_config(view: _View) -> list[Problem]:
    problems = []
    if _content_lines(view, "etc/fstab"):
        problems.append(
            Problem(
                "fstab-not-empty",
                "/etc/fstab has entries: curtin writes the machine's fstab; truncate it",
            )
        )
    if _content_lines(view, "etc/resolv.conf"):
        problems.append(
            Problem(
                "resolv-conf-not-empty",
                "/etc/resolv.conf has entries of the build VM: empty it",
            )
        )
    leftovers = []
    scripts = _resolve(view, "etc/sysconfig/network-scripts")
    if scripts is not None:
        leftovers += [
            f"/etc/sysconfig/network-scripts/{name}"
            for name in view.children(scripts)
            if name.startswith("ifcfg-") and name != "ifcfg-lo"
        ]
    connections = _resolve(view, "etc/NetworkManager/system-connections")
    if connections is not None:
        leftovers += [
            f"/etc/NetworkManager/system-connections/{name}" for name in view.children(connections)
        ]
    if leftovers:
        problems.append(
            Problem(
                "network-config-present",
                f"installer network config left in the image ({', '.join(leftovers)}): "
                "cloud-init writes MAAS's; remove them",
            )
        )
    return problems


def _verify(view: _View, arch: Arch) -> list[Problem]:
    return [
        *_check_kernel(view),
        *_check_curtin_hook(view),
        *_check_distro(view),
        *_check_boot_loaders(view, arch),
        *_check_identity(view),
        *_check_host_config(view),
    ]


def _view_arch(view: _View) -> Arch | None:
    """The architecture the image's kernel was built for (from its version suffix)."""
    for version in _kernel_versions(view):
        for arch in ("x86_64", "aarch64"):
            if version.endswith("." + arch):
                return arch  # type: ignore[return-value]
    return None


def _open_tarball(path: Path) -> _TarView | Problem:
    if not path.is_file():
        raise UsageError(f"{path} does not exist: pass an image .tar.gz or a root directory")
    try:
        with tarfile.open(path, mode="r|*") as archive:
            return _TarView(archive)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        return Problem("tarball-unreadable", f"{path} is not a readable tar.gz: {error}")


def verify_tree(root: Path, arch: Arch) -> list[Problem]:
    """Every problem of the root filesystem at ``root`` (``[]`` means good).

    Raises:
        UsageError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory: pass an unpacked root filesystem")
    return _verify(_DirectoryView(root), arch)


def verify_tarball(path: Path, arch: Arch) -> list[Problem]:
    """Every problem of the image tarball at ``path`` (``[]`` means good).

    The tarball is read once as a stream; only a few small files are kept in memory.

    Raises:
        UsageError: ``path`` does not exist.
    """
    view = _open_tarball(Path(path))
    if isinstance(view, Problem):
        return [view]
    return _verify(view, arch)


def verify_image(path: Path, arch: Arch | None = None) -> tuple[Arch | None, list[Problem]]:
    """Verify a tarball or root directory; ``arch`` None means the kernel's architecture.

    Returns the architecture checked (None when neither given nor found) and the problems.
    With no architecture, the checks that need one are skipped and ``kernel-missing``
    explains why.

    Raises:
        UsageError: ``path`` does not exist.
    """
    path = Path(path)
    if path.is_dir():
        view: _View | Problem = _DirectoryView(path)
    else:
        view = _open_tarball(path)
    if isinstance(view, Problem):
        return arch, [view]
    arch = arch or _view_arch(view)
    if arch is None:
        return None, _check_kernel(view) or [
            Problem("kernel-missing", "cannot tell the image's architecture: pass --arch")
        ]
    return arch, _verify(view, arch)
