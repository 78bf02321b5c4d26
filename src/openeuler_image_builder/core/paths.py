"""Where things live: the state directory, its layout, and the templates directory."""

from __future__ import annotations

import os
from pathlib import Path

CHARM_STATE_DIR = Path("/var/lib/openeuler-image-builder")
STATE_DIR_ENV = "OPENEULER_IMAGE_BUILDER_STATE_DIR"


def state_dir() -> Path:
    """The state directory for ISOs, images, jobs and logs.

    ``$OPENEULER_IMAGE_BUILDER_STATE_DIR``, else the charm's directory
    ``/var/lib/openeuler-image-builder`` when running as root, else
    ``$XDG_STATE_HOME/openeuler-image-builder`` (``~/.local/state/...``).
    """
    configured = os.environ.get(STATE_DIR_ENV)
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return CHARM_STATE_DIR
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "openeuler-image-builder"


class StateLayout:
    """The layout of a state directory (ISO cache, images, jobs, logs, work, locks)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else state_dir()

    @property
    def iso_cache(self) -> Path:
        """Verified ISOs and their recorded checksums."""
        return self.root / "iso"

    @property
    def images(self) -> Path:
        """Finished images (tarball + manifest)."""
        return self.root / "images"

    @property
    def jobs(self) -> Path:
        """One JSON state file per background job."""
        return self.root / "jobs"

    @property
    def logs(self) -> Path:
        """Build logs (Packer log, installer serial console, job output)."""
        return self.root / "logs"

    @property
    def work(self) -> Path:
        """Temporary build directories (rendered recipe, disk image, Packer temp files)."""
        return self.root / "work"

    @property
    def locks(self) -> Path:
        """Lock files: one build per release and architecture at a time."""
        return self.root / "locks"

    @property
    def packer_plugins(self) -> Path:
        """Packer's plugin directory (``PACKER_PLUGIN_PATH``): the qemu plugin lives here."""
        return self.root / "packer-plugins"

    @property
    def maas_api_key_file(self) -> Path:
        """Root-only (0600) file holding the MAAS API key for background jobs."""
        return self.root / "secrets" / "maas-api-key"

    @property
    def job_settings(self) -> Path:
        """The settings background jobs read (``--settings``; the charm writes it, no secret)."""
        return self.root / "settings.json"

    @property
    def rebuild_settings(self) -> Path:
        """The settings of scheduled rebuilds (``include-updates`` forced on)."""
        return self.root / "settings-rebuild.json"

    def ensure(self) -> None:
        """Create the directories (0755; the secrets directory 0700)."""
        for directory in (
            self.iso_cache,
            self.images,
            self.jobs,
            self.logs,
            self.work,
            self.locks,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        secrets = self.maas_api_key_file.parent
        secrets.mkdir(parents=True, exist_ok=True)
        secrets.chmod(0o700)


def templates_dir() -> Path:
    """The directory of the jinja2 templates.

    Inside the installed package (wheel), else the project or charm root's ``templates/`` beside
    ``src/``.
    """
    package = Path(__file__).resolve().parents[1]  # this file is <package>/core/paths.py
    packaged = package / "templates"
    if packaged.is_dir():
        return packaged
    return package.parents[1] / "templates"  # <root>/src/<package>
