"""The local image store under ``<state>/images/``: one directory per build.

Layout::

    <state>/images/openeuler-<release>-<arch>/<UTC stamp>/
        openeuler-<release>-<arch>.tar.gz
        openeuler-<release>-<arch>.manifest.json
        maas-upload.json        # written after a successful upload (name, sha256, time)
        .in-use                 # flock target: held (shared) while a build or upload uses it

Every build gets its own directory, so a new build never overwrites the previous good image
(retention removes old ones later), and ``keep-images`` can keep several per release x arch.
A directory holding a tarball and its manifest is a finished image; anything else is a build in
progress or the leftovers of a failed one.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openeuler_image_builder.core import files
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.timestamps import utc_now
from openeuler_image_builder.pipeline import locks

if TYPE_CHECKING:
    from openeuler_image_builder.core.settings import Settings

IN_USE_FILE = ".in-use"
UPLOAD_RECORD = "maas-upload.json"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


def basename(release: str, arch: str) -> str:
    """``openeuler-<release>-<arch>`` (the file names' stem, fixed by the design)."""
    return f"openeuler-{release}-{arch}"


def tarball_name(release: str, arch: str) -> str:
    """``openeuler-<release>-<arch>.tar.gz``."""
    return basename(release, arch) + ".tar.gz"


def manifest_name(release: str, arch: str) -> str:
    """``openeuler-<release>-<arch>.manifest.json``."""
    return basename(release, arch) + ".manifest.json"


def store_dir(layout: StateLayout, release: str, arch: str) -> Path:
    """The directory holding every stored build of ``release`` x ``arch``."""
    return layout.images / basename(release, arch)


def next_image_dir(
    layout: StateLayout, release: str, arch: str, now: datetime.datetime | None = None
) -> Path:
    """A new build directory path named after the UTC time.

    Not created: the build creates it, and removes it again if the build fails.
    """
    now = now or utc_now()
    parent = store_dir(layout, release, arch)
    stamp = now.strftime(STAMP_FORMAT)
    for suffix in range(1000):
        candidate = parent / (stamp if suffix == 0 else f"{stamp}-{suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free image directory name under {parent}")


def image_settings(settings: Settings) -> dict[str, Any]:
    """The settings that change what goes into an image (the manifest's ``settings``)."""
    return {
        "include_updates": settings.include_updates,
        "extra_packages": sorted(settings.extra_packages),
    }


def is_in_store(layout: StateLayout, path: Path) -> bool:
    """Whether ``path`` lies inside the image store."""
    try:
        path.resolve().relative_to(layout.images.resolve())
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class StoredImage:
    """A finished image in the store."""

    release: str
    arch: str
    directory: Path
    tarball: Path
    manifest_path: Path
    built_at: str | None
    sha256: str | None
    size: int | None
    settings: Mapping[str, Any] = field(default_factory=dict)
    packages: tuple[str, ...] = ()
    upload: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable summary (the package list is left out: see the manifest)."""
        return {
            "release": self.release,
            "arch": self.arch,
            "directory": str(self.directory),
            "image": str(self.tarball),
            "manifest": str(self.manifest_path),
            "built_at": self.built_at,
            "sha256": self.sha256,
            "size": self.size,
            "settings": dict(self.settings),
            "uploaded": self.upload is not None,
            "upload": dict(self.upload) if self.upload else None,
        }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_stored_image(directory: Path, release: str, arch: str) -> StoredImage | None:
    """The finished image in ``directory``, or None when it holds no complete image."""
    tarball = directory / tarball_name(release, arch)
    manifest_path = directory / manifest_name(release, arch)
    if not tarball.is_file():
        return None
    manifest = _read_json(manifest_path)
    if manifest is None:
        return None
    size = manifest.get("size")
    settings = manifest.get("settings")
    packages = manifest.get("packages")
    return StoredImage(
        release=release,
        arch=arch,
        directory=directory,
        tarball=tarball,
        manifest_path=manifest_path,
        built_at=manifest.get("built_at") if isinstance(manifest.get("built_at"), str) else None,
        sha256=manifest.get("sha256") if isinstance(manifest.get("sha256"), str) else None,
        size=size if isinstance(size, int) else None,
        settings=settings if isinstance(settings, dict) else {},
        packages=tuple(str(p) for p in packages) if isinstance(packages, list) else (),
        upload=_read_json(directory / UPLOAD_RECORD),
    )


def _split_store_name(name: str) -> tuple[str, str] | None:
    # openeuler-<release>-<arch>; the arch never contains a dash, the release always does.
    if not name.startswith("openeuler-"):
        return None
    release, _, arch = name.removeprefix("openeuler-").rpartition("-")
    if not release or arch not in ("x86_64", "aarch64"):
        return None
    return release, arch


def build_dirs(layout: StateLayout) -> Iterator[tuple[str, str, Path]]:
    """Every build directory in the store as ``(release, arch, directory)``.

    Newest first within each release x arch.
    """
    if not layout.images.is_dir():
        return
    for parent in sorted(layout.images.iterdir()):
        names = _split_store_name(parent.name)
        if names is None or not parent.is_dir():
            continue
        for directory in sorted((d for d in parent.iterdir() if d.is_dir()), reverse=True):
            yield names[0], names[1], directory


def list_stored_images(
    layout: StateLayout, *, release: str | None = None, arch: str | None = None
) -> list[StoredImage]:
    """Finished images in the store (optionally of one release and/or arch).

    Newest first within each release x arch.
    """
    images = []
    for image_release, image_arch, directory in build_dirs(layout):
        if release is not None and image_release != release:
            continue
        if arch is not None and image_arch != arch:
            continue
        image = read_stored_image(directory, image_release, image_arch)
        if image is not None:
            images.append(image)
    return images


def newest_image(layout: StateLayout, release: str, arch: str) -> StoredImage | None:
    """The newest finished image of ``release`` x ``arch``, or None."""
    images = list_stored_images(layout, release=release, arch=arch)
    return images[0] if images else None


@contextlib.contextmanager
def hold_image(directory: Path) -> Iterator[None]:
    """Mark ``directory`` as in use (a shared flock) so that retention leaves it alone."""
    fd = os.open(directory / IN_USE_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def try_exclusive(directory: Path) -> Iterator[bool]:
    """Take ``directory``'s in-use lock exclusively if nobody holds it; yields whether it did.

    Retention removes a directory only while holding this, so a build or upload that holds
    the directory (``hold_image``) is never removed under it.
    """
    try:
        fd = os.open(directory / IN_USE_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        yield False
        return
    try:
        yield locks.try_flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)


def record_upload(directory: Path, record: Mapping[str, Any]) -> None:
    """Remember that the image in ``directory`` was uploaded (``maas-upload.json``)."""
    files.write_json_atomic(directory / UPLOAD_RECORD, record)
