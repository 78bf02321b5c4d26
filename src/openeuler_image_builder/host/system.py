"""The side effects of the host set-up: downloads, files, apt and commands.

``install`` makes every change to the host through a ``HostSystem``; ``RealHostSystem`` is the
host itself (charmlibs-apt, requests, subprocess, atomic file writes), tests record instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import requests
from charmlibs import apt

from openeuler_image_builder.core import files
from openeuler_image_builder.core.errors import StepFailed
from openeuler_image_builder.host.artifacts import file_sha256

# The step every error of the host set-up names (`setup-host failed: ...`).
STEP = "setup-host"
COMMAND_TIMEOUT = 120.0


class HostSystem(Protocol):
    """Every change ``install`` makes to the host goes through here (tests record them)."""

    def download(self, url: str, *, proxy: Mapping[str, str], timeout: float) -> bytes:
        """GET ``url`` through the proxy."""
        ...

    def write_file(self, path: Path, data: bytes, mode: int) -> bool:
        """Write atomically; return whether the content or mode changed."""
        ...

    def copy_file(self, source: Path, path: Path, mode: int) -> bool:
        """Copy ``source`` to ``path`` atomically; return whether anything changed."""
        ...

    def remove_file(self, path: Path) -> bool:
        """Remove ``path`` if present; return whether it was there."""
        ...

    def apt_update(self, *, proxy: Mapping[str, str]) -> None:
        """``apt-get update``."""
        ...

    def apt_installed_version(self, package: str) -> str | None:
        """The installed version of ``package``, or None."""
        ...

    def apt_candidate_versions(self, package: str) -> list[str]:
        """Every version of ``package`` the configured repositories offer."""
        ...

    def apt_install(
        self, packages: Sequence[str], *, proxy: Mapping[str, str], version: str = ""
    ) -> None:
        """Install packages (``version`` only with a single package)."""
        ...

    def apt_remove(self, package: str) -> None:
        """Remove a package."""
        ...

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], timeout: float) -> str:
        """Run a command; return its stdout; raise ``StepFailed`` when it fails."""
        ...

    def exists(self, path: Path) -> bool:
        """Whether ``path`` exists."""
        ...


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Temporarily add ``values`` to ``os.environ`` (charmlibs-apt runs apt-get with it)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class RealHostSystem:
    """The host itself: charmlibs-apt, requests, subprocess, atomic file writes."""

    def download(self, url: str, *, proxy: Mapping[str, str], timeout: float) -> bytes:
        """GET ``url`` with the given proxies only (not whatever the process inherited)."""
        proxies = {
            scheme: proxy[f"{scheme}_proxy"]
            for scheme in ("http", "https", "no")
            if proxy.get(f"{scheme}_proxy")
        }
        with requests.Session() as session:
            session.trust_env = False
            try:
                response = session.get(url, proxies=proxies, timeout=timeout)
                response.raise_for_status()
            except requests.RequestException as error:
                raise StepFailed(STEP, f"download of {url} failed ({error})") from None
            return response.content

    def write_file(self, path: Path, data: bytes, mode: int) -> bool:
        """Write via a temporary file in the same directory and rename."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return files.write_if_changed(path, data, mode=mode)

    def copy_file(self, source: Path, path: Path, mode: int) -> bool:
        """Copy via a temporary file in the same directory and rename."""
        with contextlib.suppress(OSError):
            if (path.stat().st_mode & 0o7777) == mode and file_sha256(path) == file_sha256(source):
                return False
        path.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_writer(path, mode=mode) as handle, source.open("rb") as origin:
            shutil.copyfileobj(origin, handle)
        return True

    def remove_file(self, path: Path) -> bool:
        """Remove a file if it exists."""
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def apt_update(self, *, proxy: Mapping[str, str]) -> None:
        """``apt-get update`` through charmlibs-apt."""
        with _environment(proxy):
            try:
                apt.update()
            except subprocess.CalledProcessError as error:
                stderr = (error.stderr or b"").decode(errors="replace").strip().splitlines()
                reason = stderr[-1] if stderr else str(error)
                raise StepFailed(STEP, f"apt-get update failed: {reason}") from None

    def apt_installed_version(self, package: str) -> str | None:
        """The installed version according to dpkg, or None."""
        try:
            installed = apt.DebianPackage.from_installed_package(package)
        except apt.PackageNotFoundError:
            return None
        return str(installed.version)

    def apt_candidate_versions(self, package: str) -> list[str]:
        """Versions offered by the repositories (``apt-cache madison``)."""
        try:
            result = subprocess.run(
                ["apt-cache", "madison", package],
                capture_output=True,
                text=True,
                check=False,
                timeout=COMMAND_TIMEOUT,
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise StepFailed(STEP, f"apt-cache madison {package} failed ({error})") from None
        versions = []
        for line in result.stdout.splitlines():
            fields = [field.strip() for field in line.split("|")]
            if len(fields) >= 2 and fields[0] == package:
                versions.append(fields[1])
        return versions

    def apt_install(
        self, packages: Sequence[str], *, proxy: Mapping[str, str], version: str = ""
    ) -> None:
        """Install through charmlibs-apt (which updates the cache once if a package is missing)."""
        with _environment(proxy):
            try:
                apt.add_package(list(packages), version=version)
            except (apt.PackageError, apt.PackageNotFoundError) as error:
                raise StepFailed(STEP, f"apt could not install: {error.message}") from None

    def apt_remove(self, package: str) -> None:
        """Remove a package through charmlibs-apt."""
        try:
            apt.remove_package(package)
        except apt.PackageError as error:
            raise StepFailed(STEP, f"apt could not remove {package}: {error.message}") from None

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], timeout: float) -> str:
        """Run ``argv``; raise ``StepFailed`` with the last line of stderr when it fails."""
        try:
            result = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                env=dict(env),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(
                STEP, f"{argv[0]} {argv[1]} did not finish in {timeout:.0f}s"
            ) from None
        except OSError as error:
            raise StepFailed(STEP, f"cannot run {argv[0]} ({error.strerror})") from None
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            reason = lines[-1] if lines else f"exit status {result.returncode}"
            raise StepFailed(STEP, f"{' '.join(argv[:3])} failed: {reason}")
        return result.stdout

    def exists(self, path: Path) -> bool:
        """Whether ``path`` exists."""
        return path.exists()
