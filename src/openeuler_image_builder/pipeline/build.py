"""The whole pipeline for one image, composed from its stages.

``build_image()`` reads as the pipeline: fetch the ISO, render the recipe, install (through a
backend), pack (which verifies the tree before the tarball exists), store the manifest, upload.
The housekeeping around it is one context manager, ``_housekeeping``: the build lock of the
release and architecture, the in-use hold on an image-store directory, leftovers of killed
builds, the work directory, SIGTERM/SIGINT turned into ``Cancelled``, and on any failure the
removal of what the build created. Whatever happens it leaves no Packer or QEMU process, no
work directory, no half-written image under the final name, and never removes the previous
good image. Retention of the image store is the caller's (``unit.retention``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from openeuler_image_builder import __version__, maas
from openeuler_image_builder.backends import Backend, InstallInputs, InstallLogs
from openeuler_image_builder.backends.vm import VmBackend
from openeuler_image_builder.core import cancellation, files
from openeuler_image_builder.core.catalogue import Arch, Release
from openeuler_image_builder.core.errors import Cancelled, StepFailed
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.progress import Reporter, null_reporter
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.host.proxy import proxy_environment
from openeuler_image_builder.pipeline import images, iso, locks, pack, render
from openeuler_image_builder.pipeline.space import (
    ISO_SIZE_ESTIMATE,
    MIB,
    TARBALL_FRACTION,
    SpaceNeed,
    check_disk_space,
)
from openeuler_image_builder.pipeline.upload import connect_maas, upload_to_maas

logger = logging.getLogger(__name__)

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Request and result


@dataclasses.dataclass(frozen=True)
class BuildRequest:
    """What to build, from where, and what to do with it."""

    release: Release
    arch: Arch
    settings: Settings
    output_dir: Path
    iso: Path | None = None
    """``--iso PATH``; else the ISO is fetched from ``settings.mirror_url`` into the cache."""
    iso_sha256: str | None = None
    accelerator: Literal["kvm", "tcg"] = "kvm"
    upload: bool = False
    timeout: float = 3 * 3600
    """Seconds the install (Packer + installer, up to the power-off) may take."""


@dataclasses.dataclass(frozen=True)
class BuildTools:
    """The external programs a build runs, and how patiently it stops them."""

    packer: str = "packer"
    """The ``packer`` executable (a name on PATH or a path)."""
    stop_grace: float = 30.0
    """Seconds between SIGTERM and SIGKILL when stopping Packer and QEMU."""
    watchdog_grace: float = 300.0
    """Seconds past the install timeout before Packer itself is killed: Packer's own shutdown
    timer (equal to the install timeout) starts after boot, and it still converts the disk."""
    packer_version_timeout: float = 30.0

    def backend(self, layout: StateLayout) -> Backend:
        """The install backend these tools make."""
        return VmBackend(
            layout,
            packer_command=self.packer,
            stop_grace=self.stop_grace,
            watchdog_grace=self.watchdog_grace,
            version_timeout=self.packer_version_timeout,
        )


@dataclasses.dataclass(frozen=True)
class BuildLogs:
    """Where a build's logs are kept (under ``<state>/logs/``; they outlive the work dir)."""

    packer: Path
    serial: Path


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """A finished build: the image, its manifest, and the upload (when asked for)."""

    image: Path
    manifest_path: Path
    manifest: dict[str, Any]
    upload: maas.UploadResult | None
    logs: BuildLogs
    durations: dict[str, float]

    @property
    def sha256(self) -> str | None:
        """The tarball's sha256 (from the manifest)."""
        value = self.manifest.get("sha256")
        return value if isinstance(value, str) else None

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form (``build --json``)."""
        return {
            "image": str(self.image),
            "manifest": str(self.manifest_path),
            "release": self.manifest.get("release"),
            "arch": self.manifest.get("arch"),
            "sha256": self.sha256,
            "size": self.manifest.get("size"),
            "durations": self.durations,
            "build_duration": self.manifest.get("build_duration"),
            "upload": self.upload.to_json() if self.upload else None,
            "logs": {"packer": str(self.logs.packer), "serial": str(self.logs.serial)},
        }


def utc_stamp(moment: datetime.datetime | None = None) -> str:
    """``20261127T070512Z``."""
    moment = moment or datetime.datetime.now(datetime.timezone.utc)
    return moment.strftime(images.STAMP_FORMAT)


def installer_proxy(environ: Mapping[str, str] | None = None) -> str | None:
    """The HTTP proxy the installer should use, from the environment (Juju's model proxy first).

    The same proxy the host's downloads use (``proxy.proxy_environment``); one on the host's
    loopback address is rewritten to where the install VM reaches the host (``guest_url``).
    """
    value = proxy_environment(environ).get("http_proxy", "").strip()
    if not value:
        return None
    return render.guest_url(value if "://" in value else f"http://{value}")


# ---------------------------------------------------------------------------------------------
# The pipeline


def build_image(
    request: BuildRequest,
    *,
    layout: StateLayout,
    progress: Reporter = null_reporter,
    job_id: str | None = None,
    maas_client: maas.MaasClient | None = None,
    tools: BuildTools | None = None,
) -> BuildResult:
    """Build one image: ISO, recipe, install, pack (with verify), manifest, upload (when asked).

    Writes ``<output_dir>/openeuler-<release>-<arch>.tar.gz`` and its ``.manifest.json``;
    nothing is left under those names unless the build succeeded, and an image already there
    is only replaced by a verified new one. Logs go to ``<state>/logs/<build id>.*``.

    Raises:
        UsageError: another build of this release x arch holds the lock, not enough disk space,
            Packer or QEMU missing, bad ISO, MAAS not configured for ``upload``.
        StepFailed: a step failed (``fetch-iso``, ``install``, ``pack``, ``verify``, ``upload``).
        Cancelled: SIGTERM or SIGINT; everything temporary was removed.
    """
    backend = (tools or BuildTools()).backend(layout)
    with _housekeeping(request, layout, job_id) as build:
        client = build.maas_client(maas_client) if request.upload else None
        backend.check_host(request.arch)
        check_disk_space(_space_needs(request, layout))
        versions = {"openeuler-image-builder": __version__, **backend.tool_versions(request.arch)}
        iso_info = build.step("fetch-iso", _fetch_iso, request, layout, progress)
        recipe = build.step("render", _render, request, iso_info, versions, build.work, progress)
        inputs = _install_inputs(request, recipe)
        disk = build.step(
            "install",
            backend.install,
            inputs,
            work=build.work,
            logs=build.install_logs,
            progress=progress,
        )
        build.step("pack", _pack, build, disk, recipe.template_hash, versions, progress)
        manifest = _store_manifest(request, build)
        shutil.rmtree(build.work, ignore_errors=True)  # as big as disk-size: free it before upload
        upload = None
        if client is not None:
            upload = build.step("upload", _upload, request, client, layout, progress)
        return build.result(manifest, upload)


# ---------------------------------------------------------------------------------------------
# The stages, as build_image calls them


def _fetch_iso(request: BuildRequest, layout: StateLayout, progress: Reporter) -> iso.IsoInfo:
    if request.iso is not None:
        return iso.use_local_iso(
            request.iso,
            request.release,
            request.arch,
            sha256=request.iso_sha256,
            mirror=request.settings.mirror_url,
            progress=progress,
        )
    return iso.fetch_iso(
        request.release,
        request.arch,
        mirror=request.settings.mirror_url,
        cache_dir=layout.iso_cache,
        progress=progress,
    )


def _render(
    request: BuildRequest,
    iso_info: iso.IsoInfo,
    versions: Mapping[str, str | None],
    work: Path,
    progress: Reporter,
) -> render.RenderedRecipe:
    progress("render", None, "rendering the recipe")
    recipe = render.render_recipe(
        request.release,
        request.arch,
        request.settings,
        work / "recipe",
        iso_path=iso_info.path,
        iso_sha256=iso_info.sha256,
        accelerator=request.accelerator,
        packer_version=versions.get("packer"),
        http_proxy=installer_proxy(),
        shutdown_timeout=f"{max(1, round(request.timeout))}s",
    )
    progress("render", 100, recipe.template_hash[:16])
    return recipe


def _install_inputs(request: BuildRequest, recipe: render.RenderedRecipe) -> InstallInputs:
    return InstallInputs(
        recipe_dir=recipe.directory,
        disk_image=recipe.disk_image,
        serial_log=recipe.serial_log,
        timeout=request.timeout,
    )


def _pack(
    build: _Build,
    disk: Path,
    template_hash: str,
    versions: Mapping[str, str | None],
    progress: Reporter,
) -> None:
    request = build.request
    pack.pack_disk_image(
        disk,
        build.tarball,
        arch=request.arch,
        manifest_extra={
            "release": request.release.name,
            "durations": dict(build.durations),
            "build_duration": build.elapsed(),
            "tools": dict(versions),
            "template_hash": template_hash,
            "settings": images.image_settings(request.settings),
        },
        progress=progress,
    )


def _store_manifest(request: BuildRequest, build: _Build) -> dict[str, Any]:
    # The pack step's own duration is known only now: complete the manifest beside the image.
    path = build.tarball.parent / images.manifest_name(request.release.name, request.arch)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise StepFailed("pack", f"the manifest {path} is not a JSON object")
    data["durations"] = {**data.get("durations", {}), **build.durations}
    data["build_duration"] = build.elapsed()
    files.write_json_atomic(path, data)
    return data


def _upload(
    request: BuildRequest, client: maas.MaasClient, layout: StateLayout, progress: Reporter
) -> maas.UploadResult:
    return upload_to_maas(
        client,
        request.output_dir / images.tarball_name(request.release.name, request.arch),
        layout=layout,
        release=request.release,
        arch=request.arch,
        scheme=request.settings.maas_name_scheme,
        progress=progress,
    )


def _space_needs(request: BuildRequest, layout: StateLayout) -> list[SpaceNeed]:
    disk = request.settings.disk_size * MIB
    needs = [
        SpaceNeed("disk image", layout.work, disk),
        SpaceNeed("tarball", request.output_dir, disk * TARBALL_FRACTION),
    ]
    if request.iso is None:
        cached = layout.iso_cache / request.release.iso_name(request.arch)
        if not cached.is_file():
            partial = cached.with_name(cached.name + iso.PARTIAL_SUFFIX)
            have = partial.stat().st_size if partial.is_file() else 0
            needs.append(SpaceNeed("ISO", layout.iso_cache, max(0.0, ISO_SIZE_ESTIMATE - have)))
    return needs


# ---------------------------------------------------------------------------------------------
# Housekeeping around the pipeline


class _Build:
    """One running build: its work directory, logs, output name, step clock and resources."""

    def __init__(
        self, request: BuildRequest, stack: contextlib.ExitStack, work: Path, logs: BuildLogs
    ) -> None:
        self.request = request
        self.stack = stack
        self.work = work
        self.logs = logs
        self.tarball = request.output_dir / images.tarball_name(request.release.name, request.arch)
        self.durations: dict[str, float] = {}
        self.started = time.monotonic()

    def step(self, name: str, run: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one stage, timing it under ``name``."""
        begin = time.monotonic()
        try:
            return run(*args, **kwargs)
        finally:
            self.durations[name] = round(time.monotonic() - begin, 3)

    def elapsed(self) -> float:
        """Seconds since the build started."""
        return round(time.monotonic() - self.started, 3)

    @property
    def install_logs(self) -> InstallLogs:
        """Where the install stage's logs go."""
        return InstallLogs(tool=self.logs.packer, console=self.logs.serial)

    def maas_client(self, given: maas.MaasClient | None) -> maas.MaasClient:
        """The MAAS client for the upload, checked now rather than after an hour of installing."""
        client = given or self.stack.enter_context(connect_maas(self.request.settings))
        maas.check_credentials(client, step="upload")
        return client

    def result(self, manifest: dict[str, Any], upload: maas.UploadResult | None) -> BuildResult:
        """The finished build."""
        return BuildResult(
            image=self.tarball,
            manifest_path=self.tarball.parent
            / images.manifest_name(self.request.release.name, self.request.arch),
            manifest=manifest,
            upload=upload,
            logs=self.logs,
            durations={**manifest.get("durations", {}), **self.durations},
        )


@contextlib.contextmanager
def _housekeeping(
    request: BuildRequest, layout: StateLayout, job_id: str | None
) -> Iterator[_Build]:
    release, arch, output_dir = request.release, request.arch, request.output_dir
    layout.ensure()
    build_id = job_id or f"build-{release.name}-{arch}-{utc_stamp()}"
    logs = BuildLogs(
        packer=layout.logs / f"{build_id}.packer.log",
        serial=layout.logs / f"{build_id}.serial.log",
    )
    created_output = False
    with cancellation.interrupt_on_signals():
        try:
            if not output_dir.exists():
                output_dir.mkdir(parents=True)
                created_output = True
            with contextlib.ExitStack() as stack:
                stack.enter_context(locks.build_lock(layout, release.name, arch, job_id=job_id))
                if images.is_in_store(layout, output_dir):
                    stack.enter_context(images.hold_image(output_dir))
                _remove_stale_work_dirs(layout, release, arch)
                work = Path(
                    tempfile.mkdtemp(
                        prefix=images.basename(release.name, arch) + "-", dir=layout.work
                    )
                )
                stack.callback(shutil.rmtree, work, ignore_errors=True)
                yield _Build(request, stack, work, logs)
        except cancellation.Interrupted as interrupt:
            logger.warning("build of %s %s stopped by %s", release.name, arch, interrupt)
            _discard_output(output_dir, created_output, release, arch)
            raise Cancelled("build") from None
        except BaseException:
            _discard_output(output_dir, created_output, release, arch)
            raise


def _remove_stale_work_dirs(layout: StateLayout, release: Release, arch: Arch) -> None:
    # Called with the build lock held: no other build of this release x arch runs, so any work
    # directory of it is the leftover of a build that was killed (kill -9, power loss).
    prefix = images.basename(release.name, arch) + "-"
    if not layout.work.is_dir():
        return
    for directory in layout.work.iterdir():
        if directory.name.startswith(prefix) and directory.is_dir():
            logger.warning("removing the work directory of an interrupted build: %s", directory)
            shutil.rmtree(directory, ignore_errors=True)


def _discard_output(output_dir: Path, created: bool, release: Release, arch: Arch) -> None:
    # A directory this build created holds nothing of value unless the image was finished
    # (e.g. the upload failed after packing): then the image stays.
    if created and images.read_stored_image(output_dir, release.name, arch) is None:
        shutil.rmtree(output_dir, ignore_errors=True)
