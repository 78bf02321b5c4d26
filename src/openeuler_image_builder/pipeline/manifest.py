"""The manifest of a packed image, and the facts ``pack`` reads from the image's root tree.

``Manifest`` is the ``openeuler-<release>-<arch>.manifest.json`` beside a tarball (schema in
docs/architecture.md). The facts come from the mounted root filesystem: the kernel release
(``kernel_version``), the rpm database (``read_rpmdb``: ``rpm -qa`` and cloud-init's version,
read with the host's ``rpm`` from a copy), cloud-init's version from its sources when no rpm
knows it, and whether the tree has an ``os-release`` file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from openeuler_image_builder.core import files
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.pipeline import diskimage
from openeuler_image_builder.pipeline.verify import resolve_in_root

STEP = "pack"
MANIFEST_SCHEMA = 1

# Where an rpm database may live in the image (rpm >= 4.16 moved it to /usr/lib/sysimage/rpm;
# /var/lib/rpm is often a symlink to it).
RPMDB_DIRS = ("usr/lib/sysimage/rpm", "var/lib/rpm")
RPMDB_BACKENDS = (("rpmdb.sqlite", "sqlite"), ("Packages", "bdb_ro"), ("Packages.db", "ndb"))
_VERSION_PY = re.compile(r"""^__VERSION__\s*=\s*["']([^"']+)["']""", re.M)


# -- the manifest ------------------------------------------------------------------------------


@dataclasses.dataclass
class Manifest:
    """What ``pack`` knows about an image (``openeuler-<release>-<arch>.manifest.json``).

    The schema is fixed in docs/architecture.md. ``extra`` holds keys this version does not
    know, kept when a manifest is read and written again.
    """

    image: str
    arch: str
    sha256: str
    size: int
    release: str | None = None
    kernel: str | None = None
    packages: list[str] = dataclasses.field(default_factory=list)
    cloud_init: str | None = None
    built_at: str = ""
    build_duration: float | None = None
    durations: dict[str, float] = dataclasses.field(default_factory=dict)
    tools: dict[str, str] = dataclasses.field(default_factory=dict)
    template_hash: str | None = None
    settings: dict[str, Any] | None = None
    schema: int = MANIFEST_SCHEMA
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON object (``extra`` keys merged in at the top level)."""
        data = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"
        }
        return {**self.extra, **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """Read a manifest object; unknown keys go to ``extra``.

        Raises:
            ValueError: a required key is missing or has the wrong type.
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        required = {"image": str, "arch": str, "sha256": str, "size": int}
        for key, kind in required.items():
            if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
                raise ValueError(f"{key!r} is missing or not a {kind.__name__}")
        if not re.fullmatch(r"[0-9a-f]{64}", data["sha256"]):
            raise ValueError("'sha256' is not 64 lowercase hexadecimal digits")
        if not isinstance(data.get("packages", []), list):
            raise ValueError("'packages' is not a list")
        known = {key: value for key, value in data.items() if key in names}
        extra = {key: value for key, value in data.items() if key not in names}
        return cls(**known, extra=extra)

    @classmethod
    def from_file(cls, path: Path) -> Manifest:
        """Read ``path``.

        Raises:
            UsageError: missing, not JSON, or not a manifest (the message names the file).
        """
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"manifest {path}: no such file") from None
        except (OSError, ValueError) as error:
            raise UsageError(f"manifest {path} is not readable JSON: {error}") from None
        if not isinstance(data, dict):
            raise UsageError(f"manifest {path} is not a JSON object")
        try:
            return cls.from_json(data)
        except (TypeError, ValueError) as error:
            raise UsageError(f"manifest {path} is not a valid manifest: {error}") from None

    def write(self, path: Path) -> None:
        """Write atomically (temporary file in the same directory, then ``os.replace``)."""
        files.write_json_atomic(path, self.to_json())


@contextlib.contextmanager
def temporary_manifest(manifest: Manifest, final: Path) -> Iterator[Path]:
    """The manifest, written and synced to a temporary file beside ``final``.

    The file is removed on exit unless it was renamed into place.
    """
    with files.staged_file(final) as (stream, temporary):
        stream.write(files.json_text(manifest.to_json()).encode())
        files.finish(stream)
        yield temporary


# -- facts about the mounted tree --------------------------------------------------------------


def _version_key(text: str) -> list[tuple[int, int | str]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", text) if p]


def kernel_version(root: Path) -> str | None:
    """The kernel release of the tree (the newest when several).

    From ``/lib/modules/<version>`` holding ``modules.dep``, ``vmlinuz`` or ``kernel/``, else
    from ``/boot/vmlinuz-<version>``.
    """
    found: set[str] = set()
    modules = resolve_in_root(root, "lib/modules") or resolve_in_root(root, "usr/lib/modules")
    if modules and modules.is_dir():
        for entry in modules.iterdir():
            markers = ("modules.dep", "vmlinuz", "kernel")
            if (
                entry.is_dir()
                and not entry.is_symlink()
                and any((entry / name).exists() for name in markers)
            ):
                found.add(entry.name)
    if not found:
        boot = resolve_in_root(root, "boot")
        if boot and boot.is_dir():
            for entry in boot.glob("vmlinuz-*"):
                version = entry.name.removeprefix("vmlinuz-")
                if "rescue" not in version:
                    found.add(version)
    return max(found, key=_version_key) if found else None


@dataclasses.dataclass(frozen=True)
class RpmFacts:
    """What the image's rpm database says."""

    packages: list[str]
    cloud_init: str | None
    rpm_version: str | None


def read_rpmdb(root: Path, workdir: Path) -> RpmFacts:
    """``rpm -qa`` of the tree (sorted ``name-version-release.arch``) and cloud-init's version.

    The database is copied to ``workdir`` first: the tree is mounted read-only and rpm may want
    to write (locks, sqlite shared memory). No database gives an empty list.

    Raises:
        StepFailed: there is a database but the host's ``rpm`` is missing or cannot read it.
    """
    database: Path | None = None
    backend = ""
    for relative in RPMDB_DIRS:
        candidate = resolve_in_root(root, relative)
        if candidate is None or not candidate.is_dir():
            continue
        for file_name, name in RPMDB_BACKENDS:
            if (candidate / file_name).is_file():
                database, backend = candidate, name
                break
        if database:
            break
    if database is None:
        return RpmFacts([], None, None)
    rpm = shutil.which("rpm")
    if rpm is None:
        raise StepFailed(
            STEP,
            "the image has an rpm database but this host has no rpm command to read it: "
            "install it (Debian/Ubuntu package rpm)",
        )
    copy = workdir / "rpmdb"
    copy.mkdir(mode=0o700)
    for entry in database.iterdir():
        # Skip Berkeley DB environment files and locks: rpm recreates what it needs.
        if entry.is_file() and not entry.name.startswith(("__db.", ".")):
            shutil.copyfile(entry, copy / entry.name)
    base = [rpm, "--dbpath", str(copy), "--define", f"_db_backend {backend}"]
    environment = {**os.environ, "LC_ALL": "C", "HOME": str(workdir)}
    result = diskimage.run_command(
        [*base, "-qa", "--qf", "%{nvr}%{archsuffix}\\n"], env=environment
    )
    if result.returncode != 0:
        raise StepFailed(
            STEP,
            f"cannot read the image's rpm database ({backend}) with this host's rpm: "
            f"{diskimage.one_line(result.stderr) or f'rpm exited with {result.returncode}'}",
        )
    packages = sorted({line.strip() for line in result.stdout.splitlines() if line.strip()})
    query = diskimage.run_command(
        [*base, "-q", "--qf", "%{version}\\n", "cloud-init"], env=environment
    )
    cloud_init = (
        query.stdout.split()[0] if query.returncode == 0 and query.stdout.split() else None
    )
    version = diskimage.run_command([rpm, "--version"])
    rpm_version = (
        version.stdout.split()[-1] if version.returncode == 0 and version.stdout else None
    )
    return RpmFacts(packages, cloud_init, rpm_version)


def cloud_init_from_source(root: Path) -> str | None:
    """cloud-init's version from ``cloudinit/version.py`` in the tree's site-packages."""
    for lib in ("usr/lib", "usr/lib64"):
        base = resolve_in_root(root, lib)
        if base is None:
            continue
        for version_py in sorted(base.glob("python3*/site-packages/cloudinit/version.py")):
            with contextlib.suppress(OSError):
                match = _VERSION_PY.search(version_py.read_text(errors="replace"))
                if match:
                    return match.group(1)
    return None


def has_os_release(root: Path) -> bool:
    """Whether the tree has ``/etc/os-release`` (or ``/usr/lib/os-release``)."""
    return any(
        (path := resolve_in_root(root, name)) is not None and path.is_file()
        for name in ("etc/os-release", "usr/lib/os-release")
    )
