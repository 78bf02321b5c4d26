"""What an image tarball is: its sha256 and size, and the release and arch it holds.

The facts come from the manifest ``pack`` wrote beside the tarball (its size checked against the
file), or, without a trustworthy manifest, from hashing the tarball.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from openeuler_image_builder.core import files
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.image_names import manifest_path_for
from openeuler_image_builder.core.progress import ByteProgress, Reporter, null_reporter

logger = logging.getLogger(__name__)

# Hashing reads blocks as large as an upload chunk (``upload.CHUNK_SIZE``).
HASH_BLOCK_SIZE = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ImageFacts:
    """Size and sha256 of a tarball, and where they came from."""

    path: Path
    sha256: str
    size: int
    source: Literal["manifest", "hashed"]
    manifest: Path | None = None
    release: str | None = None
    arch: str | None = None


_IMAGE_NAME = re.compile(r"^openeuler-(?P<release>.+)-(?P<arch>x86_64|aarch64)\.(?:tar\.gz|tgz)$")


def identity_from_filename(tarball: Path) -> tuple[str | None, str | None]:
    """Release and arch from ``openeuler-<release>-<arch>.tar.gz``, else ``(None, None)``."""
    match = _IMAGE_NAME.match(tarball.name)
    if not match:
        return None, None
    return match.group("release"), match.group("arch")


def image_identity(tarball: Path) -> tuple[str | None, str | None]:
    """Release and arch of a tarball: from its manifest when it has them, else its name.

    Reads no more than the manifest (never hashes).
    """
    from_name = identity_from_filename(tarball)
    manifest = manifest_path_for(tarball)
    if not manifest.is_file():
        return from_name
    release, arch = _manifest_identity(_read_manifest(manifest))
    return release or from_name[0], arch or from_name[1]


def _manifest_identity(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    release, arch = data.get("release"), data.get("arch")
    return (
        release if isinstance(release, str) else None,
        arch if isinstance(arch, str) else None,
    )


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(
            f"the manifest {path} cannot be read ({error}): re-run pack, or delete the "
            "manifest to upload the tarball without it (it is then hashed)"
        ) from None
    if not isinstance(data, dict):
        raise UsageError(f"the manifest {path} is not a JSON object: re-run pack or delete it")
    return data


def hash_file(path: Path, *, progress: Reporter = null_reporter) -> tuple[str, int]:
    """sha256 and size of a file, read once (reported as ``upload``: computing sha256)."""
    report = ByteProgress(progress, "upload", "computing sha256")
    return files.hash_file(path, block_size=HASH_BLOCK_SIZE, report=report)


def read_image_facts(tarball: Path, *, progress: Reporter = null_reporter) -> ImageFacts:
    """sha256 and size from the manifest (its size checked against the file), else hashed.

    A manifest older than the tarball is not trusted (the tarball changed after packing): the
    file is hashed instead.

    Raises:
        UsageError: the tarball is missing, or the manifest is invalid or disagrees with it.
    """
    try:
        info = tarball.stat()
    except OSError as error:
        raise UsageError(f"cannot read the image {tarball}: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"the image {tarball} is not a regular file")
    if info.st_size == 0:
        raise UsageError(f"the image {tarball} is empty")
    manifest = manifest_path_for(tarball)
    if manifest.is_file():
        data = _read_manifest(manifest)
        sha256 = data.get("sha256")
        size = data.get("size")
        if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise UsageError(
                f"the manifest {manifest} has no valid sha256: re-run pack or delete it"
            )
        if not isinstance(size, int) or isinstance(size, bool):
            raise UsageError(
                f"the manifest {manifest} has no valid size: re-run pack or delete it"
            )
        if size != info.st_size:
            raise UsageError(
                f"{tarball.name} is {info.st_size} bytes but its manifest says {size}: the "
                f"tarball changed after it was packed; rebuild it, or delete {manifest} to "
                "upload it as it is"
            )
        release, arch = _manifest_identity(data)
        if manifest.stat().st_mtime + 1 >= info.st_mtime:
            return ImageFacts(tarball, sha256, size, "manifest", manifest, release, arch)
        logger.warning(
            "%s is newer than its manifest %s: hashing it instead of trusting the manifest",
            tarball,
            manifest,
        )
        sha256, size = hash_file(tarball, progress=progress)
        return ImageFacts(tarball, sha256, size, "hashed", manifest, release, arch)
    sha256, size = hash_file(tarball, progress=progress)
    release, arch = identity_from_filename(tarball)
    return ImageFacts(tarball, sha256, size, "hashed", None, release, arch)
