"""Starting jobs: the ``JobStarter``, the job's environment, and the settings file jobs read.

A job runs ``python -m openeuler_image_builder <command> --job-state F [--settings S] <options>``
(``build ...`` or ``jobs run-upload``), started by a launcher after its first state file is
written. Secrets never go in its environment values: the MAAS API key reaches a job only as the
path of the root-only key file (``MAAS_API_KEY_FILE``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import openeuler_image_builder
from openeuler_image_builder.core import files
from openeuler_image_builder.core.catalogue import Arch, Release
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.paths import STATE_DIR_ENV, StateLayout
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.core.timestamps import utc_now
from openeuler_image_builder.maas import API_KEY_FILE_ENV
from openeuler_image_builder.pipeline import images, locks
from openeuler_image_builder.unit.jobs import control
from openeuler_image_builder.unit.jobs.launchers import (
    Launcher,
    LaunchSpec,
    check_environment,
    unit_name,
)
from openeuler_image_builder.unit.jobs.state import (
    _START_LOCK,
    DispatchTarget,
    JobAlreadyRunning,
    JobKind,
    JobState,
    _finish_if_running,
    _locked,
    iso_time,
    job_state_path,
    update_job_state,
    write_job_state,
)

# The environment variable naming the packer executable a build job runs.
PACKER_ENV = "OPENEULER_IMAGE_BUILDER_PACKER"


def _package_path() -> str:
    # The directory holding the openeuler_image_builder package (``src`` in a charm).
    return str(Path(openeuler_image_builder.__file__).resolve().parent.parent)


def _job_environment(layout: StateLayout, environment: Mapping[str, str] | None) -> dict[str, str]:
    result = {
        STATE_DIR_ENV: str(layout.root),
        "PYTHONPATH": _package_path(),
        "PYTHONUNBUFFERED": "1",
    }
    if layout.maas_api_key_file.exists():
        result[API_KEY_FILE_ENV] = str(layout.maas_api_key_file)
    result.update(environment or {})
    check_environment(result)
    return result


def _new_job_id(layout: StateLayout, kind: JobKind, release: Release, arch: Arch) -> str:
    # Called under the start lock: the id is unique even for two starts within one second.
    base = f"{kind}-{release.name}-{arch}-{utc_now().strftime(images.STAMP_FORMAT)}"
    job_id, suffix = base, 1
    while job_state_path(layout, job_id).exists():
        job_id, suffix = f"{base}-{suffix}", suffix + 1
    return job_id


def _launch(
    layout: StateLayout,
    state: JobState,
    argv: list[str],
    launcher: Launcher,
    environment: Mapping[str, str],
) -> JobState:
    path = job_state_path(layout, state.id)
    spec = LaunchSpec(
        argv=tuple(argv),
        unit=state.unit or unit_name(state.kind, state.release, state.arch),
        log_path=Path(state.log_path),
        working_directory=layout.root,
        environment=environment,
        description=f"openeuler-image-builder {state.kind} of {state.release} {state.arch}",
        environment_file=path.with_suffix(".env"),
    )
    try:
        launched = launcher.start(spec)
    except BaseException as error:
        _finish_if_running(path, "failed", str(error))
        raise

    def change(current: JobState) -> None:
        # The job may already have written its own pid; never overwrite it.
        if current.pid is None and launched.pid is not None:
            current.pid = launched.pid
            current.pid_start = launched.pid_start
        current.unit = launched.unit or current.unit

    return update_job_state(path, change)


@dataclasses.dataclass(frozen=True)
class JobStarter:
    """Starts and lists one caller's jobs, each with the same launcher, dispatch and environment.

    The charm makes one per hook; ``work.advance`` and the actions start jobs through it. A job
    runs ``python -m openeuler_image_builder <command> --job-state F [--settings S] <options>``.
    """

    layout: StateLayout
    launcher: Launcher
    dispatch: DispatchTarget | None = None
    settings_file: Path | None = None
    environment: Mapping[str, str] = dataclasses.field(default_factory=dict)
    python: str = sys.executable

    def build(
        self,
        release: Release,
        arch: Arch,
        *,
        upload: bool,
        force: bool = False,
        settings_file: Path | None = None,
    ) -> JobState:
        """Start a build of ``release`` x ``arch`` in the background; returns its first state.

        Without ``force``, refuses when the store already holds an image of this release and
        arch built with the same image settings (``include-updates``, ``extra-packages``).
        ``settings_file`` overrides the starter's.

        Raises:
            JobAlreadyRunning: a build of this release and arch is running.
            UsageError: a foreground build holds the lock, an equal image exists (without
                ``force``), upload is asked for without a MAAS URL or key, or the settings file
                is bad.
            StepFailed: the launcher could not start the job (the state file then says failed).
        """
        layout = self.layout

        def check(settings: Settings) -> dict[str, Any]:
            holder = locks.lock_holder(layout, release.name, arch)
            if holder is not None:
                raise UsageError(locks.lock_refusal_message(release.name, arch, holder))
            if not force:
                for image in images.list_stored_images(layout, release=release.name, arch=arch):
                    if dict(image.settings) == images.image_settings(settings):
                        raise UsageError(
                            f"an image of {release.name} {arch} built with the same settings "
                            f"exists ({image.tarball}, built {image.built_at}): "
                            f"use force to build again (for example to pick up updates)"
                        )
            return {}

        return self._start(
            "build",
            release,
            arch,
            upload=upload,
            check=check,
            command=["build", "--release", release.name, "--arch", arch],
            options=["--upload"] if upload else [],
            settings_file=settings_file or self.settings_file,
        )

    def upload(
        self, release: Release, arch: Arch, *, name: str | None = None, title: str | None = None
    ) -> JobState:
        """Start an upload of the newest stored image of ``release`` x ``arch`` to MAAS.

        Raises:
            JobAlreadyRunning: an upload of this release and arch is running.
            UsageError: no image of this release and arch is stored, or MAAS is not configured.
            StepFailed: the launcher could not start the job.
        """
        layout = self.layout

        def check(settings: Settings) -> dict[str, Any]:
            image = images.newest_image(layout, release.name, arch)
            if image is None:
                store = images.store_dir(layout, release.name, arch)
                raise UsageError(f"no image of {release.name} {arch} in {store}: build one first")
            return {"image": str(image.tarball), "sha256": image.sha256}

        options = (["--name", name] if name else []) + (["--title", title] if title else [])
        return self._start(
            "upload",
            release,
            arch,
            upload=True,
            check=check,
            command=["jobs", "run-upload"],
            options=options,
            settings_file=self.settings_file,
        )

    def list_jobs(self) -> list[JobState]:
        """``list_jobs``, liveness checked by this starter's launcher."""
        return control.list_jobs(self.layout, launchers={self.launcher.name: self.launcher})

    def find_job(self, job_id: str) -> JobState:
        """``find_job``, liveness checked by this starter's launcher."""
        return control.find_job(self.layout, job_id, launchers={self.launcher.name: self.launcher})

    def _start(
        self,
        kind: JobKind,
        release: Release,
        arch: Arch,
        *,
        upload: bool,
        check: Callable[[Settings], dict[str, Any]],
        command: list[str],
        options: list[str],
        settings_file: Path | None,
    ) -> JobState:
        # What both kinds share: settings, environment and MAAS checks, the one-job-per-kind
        # rule and the job's own refusals (``check``, returning extra state fields) under the
        # start lock, the first state file, then the launch.
        layout, launcher, dispatch = self.layout, self.launcher, self.dispatch
        layout.ensure()
        settings = _load_settings(settings_file)
        job_environment = _job_environment(layout, self.environment)
        if upload:
            _check_upload_configured(layout, settings, job_environment)
        with _locked(layout.jobs / _START_LOCK):
            running = control.active_job(
                layout, release.name, arch, kind=kind, launchers={launcher.name: launcher}
            )
            if running is not None:
                raise JobAlreadyRunning(running)
            fields = check(settings)
            job_id = _new_job_id(layout, kind, release, arch)
            state = JobState(
                id=job_id,
                kind=kind,
                release=release.name,
                arch=arch,
                started=iso_time(),
                log_path=str(layout.logs / f"{job_id}.log"),
                upload_requested=upload,
                launcher=launcher.name,
                unit=unit_name(kind, release, arch) if launcher.name == "systemd" else None,
                dispatch_unit=dispatch.unit_name if dispatch else None,
                dispatch_charm_dir=str(dispatch.charm_dir) if dispatch else None,
                dispatch_event=dispatch.event if dispatch else None,
                **fields,
            )
            path = job_state_path(layout, job_id)
            write_job_state(path, state)
        argv = [self.python, "-m", "openeuler_image_builder", *command, "--job-state", str(path)]
        if settings_file is not None:
            argv += ["--settings", str(settings_file)]
        return _launch(layout, state, argv + options, launcher, job_environment)


def start_build_job(
    layout: StateLayout,
    release: Release,
    arch: Arch,
    *,
    upload: bool,
    force: bool = False,
    launcher: Launcher,
    dispatch: DispatchTarget | None = None,
    settings_file: Path | None = None,
    environment: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> JobState:
    """:meth:`JobStarter.build` without a starter (its fields given here)."""
    starter = JobStarter(layout, launcher, dispatch, settings_file, environment or {}, python)
    return starter.build(release, arch, upload=upload, force=force)


def start_upload_job(
    layout: StateLayout,
    release: Release,
    arch: Arch,
    *,
    name: str | None = None,
    title: str | None = None,
    launcher: Launcher,
    dispatch: DispatchTarget | None = None,
    settings_file: Path | None = None,
    environment: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> JobState:
    """:meth:`JobStarter.upload` without a starter (its fields given here)."""
    starter = JobStarter(layout, launcher, dispatch, settings_file, environment or {}, python)
    return starter.upload(release, arch, name=name, title=title)


def _load_settings(settings_file: Path | None) -> Settings:
    if settings_file is None:
        return Settings()
    return load_settings_file(settings_file)


def load_settings_file(path: Path) -> Settings:
    """Read a ``Settings`` JSON dump (what the charm passes with ``--settings``).

    Raises:
        UsageError: the file is missing, not JSON, or holds an invalid value.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"settings file {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"settings file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(f"settings file {path} must hold a JSON object of settings")
    return Settings.from_mapping(data)


def write_settings_file(path: Path, settings: Settings) -> bool:
    """Write ``settings`` for jobs to read with ``--settings``; returns whether it changed.

    No secret goes in: the MAAS key reaches jobs by its own root-only file.
    """
    return files.write_if_changed(
        path, files.json_text(settings.model_dump(mode="json"), indent=1)
    )


def _check_upload_configured(
    layout: StateLayout, settings: Settings, environment: Mapping[str, str]
) -> None:
    if not (settings.maas_url or environment.get("MAAS_URL")):
        raise UsageError("upload needs a MAAS URL: set maas-url (or relate to maas-region)")
    key_file = environment.get(API_KEY_FILE_ENV) or str(layout.maas_api_key_file)
    if not Path(key_file).is_file():
        raise UsageError(
            f"upload needs the MAAS API key in {key_file}: set maas-api-key to a Juju secret "
            f"(or write the key to that file, mode 0600)"
        )
