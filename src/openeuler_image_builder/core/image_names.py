"""File names of a packed image: the tarball and the manifest written beside it.

``pipeline.pack`` writes them; ``maas`` and ``unit`` find the manifest of a tarball they are
given. Kept here so that the lower layers need not import the pipeline.
"""

from __future__ import annotations

from pathlib import Path

TARBALL_SUFFIX = ".tar.gz"
MANIFEST_SUFFIX = ".manifest.json"


def manifest_path_for(tarball: Path) -> Path:
    """``openeuler-X-x86_64.tar.gz`` → ``openeuler-X-x86_64.manifest.json`` beside it."""
    name = tarball.name
    for suffix in (TARBALL_SUFFIX, ".tgz"):
        if name.endswith(suffix):
            return tarball.with_name(name[: -len(suffix)] + MANIFEST_SUFFIX)
    return tarball.with_name(name + MANIFEST_SUFFIX)
