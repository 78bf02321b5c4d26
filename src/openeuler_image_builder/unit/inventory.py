"""The images this unit holds, for status, ``list-images``, the peer inventory and deletes.

The image store is ``images.py``'s (one directory per build under ``<state>/images/``, each
with the tarball, its manifest and, once uploaded, ``maas-upload.json``). The manifest is the
source of truth for release, arch, size, sha256 and build time, so listing images never reads a
tarball. Directories of a build in progress (no manifest yet) are never listed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from openeuler_image_builder.core import catalogue, image_names
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.timestamps import parse_utc_or_none
from openeuler_image_builder.pipeline import images
from openeuler_image_builder.unit.jobs import JobState

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LocalImage:
    """One finished image on this unit, as its manifest describes it."""

    release: str
    arch: str
    size: int
    sha256: str
    built_at: str | None
    uploaded: bool
    path: Path
    manifest_path: Path
    packages_digest: str | None
    directory: Path | None = None

    @property
    def key(self) -> tuple[str, str]:
        """``(release, arch)``."""
        return (self.release, self.arch)

    def to_result(self) -> dict[str, str]:
        """Action-result form (keys lowercase with hyphens, string values)."""
        return {
            "release": self.release,
            "arch": self.arch,
            "size": str(self.size),
            "sha256": self.sha256,
            "built-at": self.built_at or "unknown",
            "uploaded": "true" if self.uploaded else "false",
            "path": str(self.path),
        }

    @classmethod
    def from_stored(
        cls, stored: images.StoredImage, uploaded_sha256s: Collection[str] = ()
    ) -> LocalImage | None:
        """The inventory view of a stored image; None when its manifest has no sha256."""
        if not stored.sha256:
            logger.warning("ignoring %s: its manifest has no sha256", stored.manifest_path)
            return None
        size = stored.size
        if size is None:
            try:
                size = stored.tarball.stat().st_size
            except OSError:
                return None
        return cls(
            release=stored.release,
            arch=stored.arch,
            size=size,
            sha256=stored.sha256,
            built_at=stored.built_at,
            uploaded=stored.upload is not None or stored.sha256 in uploaded_sha256s,
            path=stored.tarball,
            manifest_path=stored.manifest_path,
            packages_digest=package_list_digest(stored.packages) if stored.packages else None,
            directory=stored.directory,
        )


def package_list_digest(packages: Iterable[str]) -> str:
    """A digest of a package list, independent of order and duplicates (sha256 hex)."""
    text = "\n".join(sorted(set(packages)))
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_path_for(image: Path | str) -> Path:
    """``image_names.manifest_path_for`` of a tarball named as a path or as text (by a job)."""
    return image_names.manifest_path_for(Path(image))


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest's JSON object, or None when missing or not a readable JSON object."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning("ignoring unreadable manifest %s: %s", path, error)
        return None
    if not isinstance(data, dict):
        logger.warning("ignoring manifest %s: not a JSON object", path)
        return None
    return data


def manifest_packages_digest(manifest: Mapping[str, Any] | None) -> str | None:
    """:func:`package_list_digest` of the manifest's ``packages``, None when it has none."""
    if not manifest:
        return None
    packages = manifest.get("packages")
    if not isinstance(packages, list) or not packages:
        return None
    return package_list_digest(str(package) for package in packages)


def _newest_first_key(image: LocalImage) -> tuple[float, str]:
    moment = parse_utc_or_none(image.built_at)
    return (moment.timestamp() if moment else 0.0, image.path.name)


def list_local_images(
    layout: StateLayout,
    *,
    uploaded_sha256s: Collection[str] = (),
    release: str | None = None,
    arch: str | None = None,
) -> list[LocalImage]:
    """Every finished image in the store, newest first.

    Args:
        layout: the state layout (a missing images directory means no images).
        uploaded_sha256s: tarball checksums known to be in MAAS (``History.uploaded_sha256s()``),
            besides those the store itself records (``maas-upload.json``).
        release: only this exact release name.
        arch: only this architecture.
    """
    found = []
    for stored in images.list_stored_images(layout, release=release, arch=arch):
        image = LocalImage.from_stored(stored, uploaded_sha256s)
        if image is not None:
            found.append(image)
    found.sort(key=_newest_first_key, reverse=True)
    return found


def newest_images(images: Sequence[LocalImage]) -> dict[tuple[str, str], LocalImage]:
    """The newest image per ``(release, arch)``."""
    newest: dict[tuple[str, str], LocalImage] = {}
    for image in sorted(images, key=_newest_first_key, reverse=True):
        newest.setdefault(image.key, image)
    return newest


def delete_local_image(
    layout: StateLayout,
    release: str,
    arch: str,
    *,
    jobs: Sequence[JobState] = (),
    sha256: str | None = None,
) -> list[LocalImage]:
    """Delete this unit's images of ``release`` x ``arch`` (all kept versions, or one by sha256).

    Each build directory is first renamed out of the store (atomic, under its exclusive
    in-use lock, so no build or upload holding it loses it), then removed: an interrupted delete
    never leaves half an image listed.

    Args:
        layout: the state layout.
        release: exact name or alias.
        arch: architecture.
        jobs: the unit's jobs (``jobs.list_jobs``); an image a running job uses is not deleted.
        sha256: delete only the image with this tarball checksum.

    Returns:
        The deleted images.

    Raises:
        UsageError: unknown release; no such image (the message lists the local images);
            a running job uses the image (the message names the job and how to stop it).
    """
    exact = catalogue.resolve(release).name
    arch = catalogue.resolve_arch(arch)
    everything = list_local_images(layout)
    chosen = [
        image
        for image in everything
        if image.release == exact
        and image.arch == arch
        and (sha256 is None or image.sha256 == sha256)
    ]
    if not chosen:
        held = ", ".join(sorted({f"{i.release} ({i.arch})" for i in everything})) or "none"
        wanted = f"{exact} ({arch})" + (f" with sha256 {sha256}" if sha256 else "")
        raise UsageError(f"no local image of {wanted} on this unit; local images: {held}")
    for job in jobs:
        if job.result != "running" or job.release != exact or job.arch != arch:
            continue
        if job.kind == "upload" or any(job.image and Path(job.image) == i.path for i in chosen):
            raise UsageError(
                f"{exact} ({arch}) is in use by running {job.kind} job {job.id}; "
                f"run cancel-build release={exact} or wait for it to finish"
            )
    deleted = []
    for image in chosen:
        directory = image.directory or image.path.parent
        with images.try_exclusive(directory) as exclusive:
            if not exclusive:
                raise UsageError(
                    f"image {image.path.name} ({image.built_at}) is in use by a build or "
                    f"upload; run cancel-build release={exact} or wait for it to finish"
                )
            # images.build_dirs skips top-level names not starting with "openeuler-", and the
            # rename stays inside the store's file system, so it is atomic.
            doomed = layout.images / (
                f".deleting-{directory.parent.name}-{directory.name}-{os.getpid()}"
            )
            os.rename(directory, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        with contextlib.suppress(OSError):
            directory.parent.rmdir()  # the release's store directory, once empty
        logger.info("deleted local image %s", image.path)
        deleted.append(image)
    return deleted
