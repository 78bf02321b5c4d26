"""``VmBackend``: the install stage as a Packer-driven anaconda install in a QEMU VM."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from openeuler_image_builder.backends import InstallInputs, InstallLogs
from openeuler_image_builder.backends.vm import packer
from openeuler_image_builder.core.catalogue import Arch
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.progress import Reporter

QEMU_BINARY: dict[Arch, str] = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}
QEMU_PACKAGE: dict[Arch, str] = {"x86_64": "qemu-system-x86", "aarch64": "qemu-system-arm"}


class VmBackend:
    """Installs with anaconda in a QEMU VM that Packer drives from the rendered recipe."""

    name = "vm"

    def __init__(
        self,
        layout: StateLayout,
        *,
        packer_command: str = "packer",
        stop_grace: float = 30.0,
        watchdog_grace: float = 300.0,
        version_timeout: float = 30.0,
    ) -> None:
        self.layout = layout
        self.packer_command = packer_command
        self.stop_grace = stop_grace
        self.watchdog_grace = watchdog_grace
        self.version_timeout = version_timeout

    def check_host(self, arch: Arch) -> None:
        """Refuse without the QEMU system emulator of ``arch``."""
        qemu = QEMU_BINARY[arch]
        if shutil.which(qemu) is None:
            raise UsageError(
                f"{qemu} not found: install the QEMU system emulator ({QEMU_PACKAGE[arch]})"
            )

    def tool_versions(self, arch: Arch) -> dict[str, str | None]:
        """Packer's version (refusing when it is missing) and that of ``arch``'s QEMU."""
        return {
            "packer": packer.detect_packer_version(self.packer_command, self.version_timeout),
            "qemu": packer.tool_version(
                [QEMU_BINARY[arch], "--version"], packer.QEMU_VERSION, self.version_timeout
            ),
        }

    def install(
        self, inputs: InstallInputs, *, work: Path, logs: InstallLogs, progress: Reporter
    ) -> Path:
        """``packer build`` of the recipe, to the installer's power-off; the disk image."""
        progress("install", 0, "starting the installer VM")
        # Packer puts its plugin sockets in TMPDIR; under the state directory their path nears
        # the 107-byte limit of a UNIX socket name ("bind: invalid argument"), so Packer gets a
        # short temporary directory of its own.
        packer_tmp = Path(tempfile.mkdtemp(prefix=f"oeib-packer-{os.getpid()}-"))
        try:
            run = packer.PackerRun(
                [self.packer_command, "build", "-color=false", "."],
                cwd=inputs.recipe_dir,
                env=packer.packer_environment(self.layout, work, logs.tool, temporary=packer_tmp),
                serial=packer.InstallerProgress(inputs.serial_log, progress),
                timeout=inputs.timeout,
                stop_grace=self.stop_grace,
                watchdog_grace=self.watchdog_grace,
                packer_log=logs.tool,
                serial_log_copy=logs.console,
            )
            try:
                run.run()
            finally:
                with contextlib.suppress(OSError):
                    if inputs.serial_log.is_file():
                        shutil.copyfile(inputs.serial_log, logs.console)
        finally:
            shutil.rmtree(packer_tmp, ignore_errors=True)
        disk = inputs.disk_image
        if not disk.is_file() or disk.stat().st_size == 0:
            raise StepFailed(
                "install", f"Packer finished but left no disk image at {disk}", logs.tool
            )
        progress("install", 100, "installer powered off")
        return disk
