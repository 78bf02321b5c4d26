"""The whole pipeline for one image: ISO, recipe, ``packer build``, pack, manifest, upload.

``build_image()`` holds the build lock of the release and architecture for its whole run,
checks the disk space it will need before it starts, and guarantees that whatever happens
(failure, timeout, SIGTERM/SIGINT) it leaves no Packer or QEMU process, no work directory, no
half-written image under the final name, and never removes the previous good image. Packing
cleans up its own mounts and loop devices; this module makes sure that cleanup gets to run (a
signal becomes an exception that unwinds through it).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from openeuler_image_builder import __version__, maas
from openeuler_image_builder.backends.vm import packer
from openeuler_image_builder.core import cancellation, files
from openeuler_image_builder.core.catalogue import Arch, NameScheme, Release
from openeuler_image_builder.core.errors import Cancelled, StepFailed, UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.progress import Reporter, null_reporter
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.host import install
from openeuler_image_builder.pipeline import images, iso, locks, pack, render
from openeuler_image_builder.unit import retention

logger = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2
# Rule of thumb for a DVD ISO not in the cache yet (openeuler-releases.md 3.4: 3 to 4.5 GiB).
ISO_SIZE_ESTIMATE = 4.5 * GIB
# A MAAS tarball is about 690 MB for a @core image on an 8 GiB disk (packer-and-images.md 7.2);
# half the disk size leaves room for extra packages and poorly compressible content.
TARBALL_FRACTION = 0.5
SPACE_MARGIN_FRACTION = 0.10
SPACE_MARGIN_BYTES = 512 * MIB

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


# ---------------------------------------------------------------------------------------------
# Small helpers


def utc_stamp(moment: datetime.datetime | None = None) -> str:
    """``20261127T070512Z``."""
    moment = moment or datetime.datetime.now(datetime.timezone.utc)
    return moment.strftime(images.STAMP_FORMAT)


def _human_bytes(size: float) -> str:
    return f"{size / GIB:.1f} GiB" if size >= GIB else f"{size / MIB:.0f} MiB"


def installer_proxy(environ: Mapping[str, str] | None = None) -> str | None:
    """The HTTP proxy the installer should use, from the environment (Juju's model proxy first).

    The same proxy the host's downloads use (``install.proxy_environment``); one on the host's
    loopback address is rewritten to where the install VM reaches the host (``guest_url``).
    """
    value = install.proxy_environment(environ).get("http_proxy", "").strip()
    if not value:
        return None
    return render.guest_url(value if "://" in value else f"http://{value}")


# ---------------------------------------------------------------------------------------------
# Disk space


@dataclasses.dataclass(frozen=True)
class SpaceNeed:
    """Bytes one part of the build will need under ``path``."""

    what: str
    path: Path
    size: float


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk_space(
    needs: list[SpaceNeed],
    *,
    free_space: Callable[[Path], int] = lambda path: shutil.disk_usage(path).free,
) -> None:
    """Check that every filesystem has room for what the build will put on it (plus margin).

    Raises:
        UsageError: one line per short filesystem: what needs how much, what is free, how much
            is missing, and where.
    """
    by_device: dict[int, list[SpaceNeed]] = collections.defaultdict(list)
    anchor: dict[int, Path] = {}
    for need in needs:
        existing = _existing_ancestor(need.path)
        device = existing.stat().st_dev
        by_device[device].append(need)
        anchor.setdefault(device, existing)
    problems = []
    for device, device_needs in by_device.items():
        total = sum(need.size for need in device_needs)
        if total <= 0:
            continue
        required = total * (1 + SPACE_MARGIN_FRACTION) + SPACE_MARGIN_BYTES
        free = free_space(anchor[device])
        if free >= required:
            continue
        parts = " + ".join(f"{need.what} {_human_bytes(need.size)}" for need in device_needs)
        places = ", ".join(sorted({str(need.path) for need in device_needs}))
        problems.append(
            f"not enough disk space for {places}: the build needs {_human_bytes(required)} "
            f"({parts}, plus margin) but only {_human_bytes(free)} is free there; free "
            f"{_human_bytes(required - free)} more, or lower disk-size"
        )
    if problems:
        raise UsageError("; ".join(problems))


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
# The pipeline


class _Clock:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.durations: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        begin = time.monotonic()
        try:
            yield
        finally:
            self.durations[name] = round(time.monotonic() - begin, 3)

    def total(self) -> float:
        return round(time.monotonic() - self.started, 3)


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


def connect_maas(
    settings: Settings, *, url: str | None = None, key_file: Path | None = None
) -> maas.MaasClient:
    """The MAAS client for ``--upload``: ``url``/``key_file``, else the environment, else settings.

    Raises:
        UsageError: no MAAS URL or no API key (or an unsafe key file).
    """
    found_url, key = maas.connection_settings(
        url=url, key_file=key_file, default_url=settings.maas_url
    )
    if not found_url:
        raise UsageError(
            f"--upload needs the MAAS URL: pass --maas-url, set {maas.MAAS_URL_ENV}, or set "
            "maas-url"
        )
    if not key:
        raise UsageError(
            f"--upload needs a MAAS API key: set {maas.API_KEY_ENV}, or give a file only you "
            f"can read with --api-key-file or {maas.API_KEY_FILE_ENV}"
        )
    return maas.MaasClient(found_url, key, ca_certificate=settings.maas_ca_certificate or None)


def upload_to_maas(
    client: maas.MaasClient,
    tarball: Path,
    *,
    layout: StateLayout,
    release: Release,
    arch: Arch,
    scheme: NameScheme,
    progress: Reporter = null_reporter,
    name: str | None = None,
    title: str | None = None,
) -> maas.UploadResult:
    """Upload a finished image; one in the image store is held meanwhile and records the upload.

    Raises:
        StepFailed: ("upload") MAAS refused or failed the upload.
    """
    directory = tarball.parent
    in_store = images.is_in_store(layout, directory)
    with images.hold_image(directory) if in_store else contextlib.nullcontext():
        result = maas.upload_image(
            client,
            tarball,
            release=release,
            arch=arch,
            scheme=scheme,
            name=name,
            title=title,
            progress=progress,
        )
        if in_store:
            images.record_upload(directory, result.store_record(client.url))
    return result


def _get_iso(request: BuildRequest, layout: StateLayout, progress: Reporter) -> iso.IsoInfo:
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


def _finish_manifest(path: Path, updates: Mapping[str, Any]) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise StepFailed("pack", f"the manifest {path} is not a JSON object")
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    files.write_json_atomic(path, data)
    return data


def _copy_serial_log(recipe_serial: Path, destination: Path) -> None:
    with contextlib.suppress(OSError):
        if recipe_serial.is_file():
            shutil.copyfile(recipe_serial, destination)


def build_image(
    request: BuildRequest,
    *,
    layout: StateLayout,
    progress: Reporter = null_reporter,
    job_id: str | None = None,
    maas_client: maas.MaasClient | None = None,
    tools: BuildTools | None = None,
) -> BuildResult:
    """Build one image.

    Lock, check space, ISO, render, ``packer build``, pack, manifest, upload (when asked),
    then retention of the image store.

    Writes ``<output_dir>/openeuler-<release>-<arch>.tar.gz`` and its ``.manifest.json``;
    nothing is left under those names unless the build succeeded, and an image already there
    is only replaced by a verified new one. Logs go to ``<state>/logs/<build id>.*``.

    Raises:
        UsageError: another build of this release x arch holds the lock, not enough disk space,
            Packer or QEMU missing, bad ISO, MAAS not configured for ``upload``.
        StepFailed: a step failed (``fetch-iso``, ``install``, ``pack``, ``verify``, ``upload``).
        Cancelled: SIGTERM or SIGINT; everything temporary was removed.
    """
    tools = tools or BuildTools()
    release, arch, settings = request.release, request.arch, request.settings
    layout.ensure()
    build_id = job_id or f"build-{release.name}-{arch}-{utc_stamp()}"
    logs = BuildLogs(
        packer=layout.logs / f"{build_id}.packer.log",
        serial=layout.logs / f"{build_id}.serial.log",
    )
    clock = _Clock()
    output_dir = request.output_dir
    tarball = output_dir / images.tarball_name(release.name, arch)
    created_output = False
    in_store = images.is_in_store(layout, output_dir)
    with cancellation.interrupt_on_signals():
        try:
            if not output_dir.exists():
                output_dir.mkdir(parents=True)
                created_output = True
            with contextlib.ExitStack() as stack:
                stack.enter_context(locks.build_lock(layout, release.name, arch, job_id=job_id))
                if in_store:
                    stack.enter_context(images.hold_image(output_dir))
                _remove_stale_work_dirs(layout, release, arch)
                client = None
                if request.upload:
                    client = maas_client or stack.enter_context(connect_maas(settings))
                    # Fail now, not after an hour of installing, if MAAS or the key is wrong.
                    maas.check_credentials(client, step="upload")
                qemu = render.QEMU_BINARY[arch]
                if shutil.which(qemu) is None:
                    raise UsageError(
                        f"{qemu} not found: install the QEMU system emulator "
                        f"({'qemu-system-x86' if arch == 'x86_64' else 'qemu-system-arm'})"
                    )
                check_disk_space(_space_needs(request, layout))
                packer_version = packer.detect_packer_version(
                    tools.packer, tools.packer_version_timeout
                )

                with clock.step("fetch-iso"):
                    iso_info = _get_iso(request, layout, progress)

                work = Path(
                    tempfile.mkdtemp(
                        prefix=images.basename(release.name, arch) + "-", dir=layout.work
                    )
                )
                stack.callback(shutil.rmtree, work, ignore_errors=True)
                # Packer puts its plugin sockets in TMPDIR; under the state directory their path
                # nears the 107-byte limit of a UNIX socket name ("bind: invalid argument"), so
                # Packer gets a short temporary directory of its own.
                packer_tmp = Path(tempfile.mkdtemp(prefix=f"oeib-packer-{os.getpid()}-"))
                stack.callback(shutil.rmtree, packer_tmp, ignore_errors=True)
                with clock.step("render"):
                    progress("render", None, "rendering the recipe")
                    recipe = render.render_recipe(
                        release,
                        arch,
                        settings,
                        work / "recipe",
                        iso_path=iso_info.path,
                        iso_sha256=iso_info.sha256,
                        accelerator=request.accelerator,
                        packer_version=packer_version,
                        http_proxy=installer_proxy(),
                        shutdown_timeout=f"{max(1, round(request.timeout))}s",
                    )
                    progress("render", 100, recipe.template_hash[:16])

                with clock.step("install"):
                    progress("install", 0, "starting the installer VM")
                    run = packer.PackerRun(
                        [tools.packer, "build", "-color=false", "."],
                        cwd=recipe.directory,
                        env=packer.packer_environment(
                            layout, work, logs.packer, temporary=packer_tmp
                        ),
                        serial=packer.InstallerProgress(recipe.serial_log, progress),
                        timeout=request.timeout,
                        stop_grace=tools.stop_grace,
                        watchdog_grace=tools.watchdog_grace,
                        packer_log=logs.packer,
                        serial_log_copy=logs.serial,
                    )
                    try:
                        run.run()
                    finally:
                        _copy_serial_log(recipe.serial_log, logs.serial)
                    if not recipe.disk_image.is_file() or recipe.disk_image.stat().st_size == 0:
                        raise StepFailed(
                            "install",
                            f"Packer finished but left no disk image at {recipe.disk_image}",
                            logs.packer,
                        )
                    progress("install", 100, "installer powered off")

                tools_versions = {
                    "openeuler-image-builder": __version__,
                    "packer": packer_version,
                    "qemu": packer.tool_version([qemu, "--version"], packer.QEMU_VERSION, 30),
                }
                with clock.step("pack"):
                    pack.pack_disk_image(
                        recipe.disk_image,
                        tarball,
                        arch=arch,
                        manifest_extra={
                            "release": release.name,
                            "durations": dict(clock.durations),
                            "build_duration": clock.total(),
                            "tools": tools_versions,
                            "template_hash": recipe.template_hash,
                            "settings": images.image_settings(settings),
                        },
                        progress=progress,
                    )
                manifest_path = output_dir / images.manifest_name(release.name, arch)
                manifest = _finish_manifest(
                    manifest_path,
                    {"durations": dict(clock.durations), "build_duration": clock.total()},
                )
                # The disk image can be as big as disk-size: free it before a long upload.
                shutil.rmtree(work, ignore_errors=True)

                upload_result = None
                if client is not None:
                    with clock.step("upload"):
                        upload_result = upload_to_maas(
                            client,
                            tarball,
                            layout=layout,
                            release=release,
                            arch=arch,
                            scheme=settings.maas_name_scheme,
                            progress=progress,
                        )
                result = BuildResult(
                    image=tarball,
                    manifest_path=manifest_path,
                    manifest=manifest,
                    upload=upload_result,
                    logs=logs,
                    durations={**manifest.get("durations", {}), **clock.durations},
                )
        except cancellation.Interrupted as interrupt:
            logger.warning("build of %s %s stopped by %s", release.name, arch, interrupt)
            _discard_output(output_dir, created_output, release, arch)
            raise Cancelled("build") from None
        except BaseException:
            _discard_output(output_dir, created_output, release, arch)
            raise
    if in_store:
        try:
            retention.prune_images(layout, settings.keep_images)
        except Exception as error:  # housekeeping must not fail a good build
            logger.warning("retention after the build failed: %s", error)
    return result


def _discard_output(output_dir: Path, created: bool, release: Release, arch: Arch) -> None:
    # A directory this build created holds nothing of value unless the image was finished
    # (e.g. the upload failed after packing): then the image stays.
    if created and images.read_stored_image(output_dir, release.name, arch) is None:
        shutil.rmtree(output_dir, ignore_errors=True)
