"""Build backends: the ways the install stage turns a verified ISO into a root filesystem.

Every backend has the small interface of ``Backend``: it checks the host before anything is
downloaded, reports the versions of the tools it runs (for the manifest), and installs from a
rendered recipe into the work directory. ``pipeline.build`` calls it between render and pack;
everything before (ISO) and after (pack, verify, store, upload) is shared.

- ``vm``: anaconda in a QEMU VM driven by Packer, from the kickstart (``backends/vm/``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol

from openeuler_image_builder.core.catalogue import Arch
from openeuler_image_builder.core.progress import Reporter


@dataclasses.dataclass(frozen=True)
class InstallInputs:
    """What the install stage works from and where it writes."""

    recipe_dir: Path
    """The rendered recipe (``pipeline.render``)."""
    disk_image: Path
    """Where the recipe has the installer write the disk image."""
    serial_log: Path
    """Where the recipe has the installer's console written."""
    timeout: float
    """Seconds the install may take."""


@dataclasses.dataclass(frozen=True)
class InstallLogs:
    """Where the install's logs are kept; they outlive the work directory."""

    tool: Path
    """The backend tool's own log (Packer's for ``vm``)."""
    console: Path
    """A copy of the installer's console."""


class Backend(Protocol):
    """One way of running the install stage."""

    name: str

    def check_host(self, arch: Arch) -> None:
        """Refuse (``UsageError``) at once when this host cannot build ``arch`` this way."""
        ...

    def tool_versions(self, arch: Arch) -> dict[str, str | None]:
        """The versions of the tools this backend runs (``UsageError`` when one is missing)."""
        ...

    def install(
        self, inputs: InstallInputs, *, work: Path, logs: InstallLogs, progress: Reporter
    ) -> Path:
        """Run the install; the disk image it produced (``StepFailed`` on failure)."""
        ...
