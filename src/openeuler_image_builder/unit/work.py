"""The unit's work, advanced at every hook: what the charm does with jobs, queue and images.

:func:`advance` records finished jobs in the history (idempotent, so any hook may do it: a job
that died never dispatches ``build-finished``), starts the uploads they call for
(``History.upload_decision``), prunes old jobs' files, brings the queue in line with the unit's
share of the configured releases, and starts the next queued build when nothing runs. It takes
plain values only (the charm resolves config, relations and MAAS), so it is tested directly.
:func:`delete_images` is the ``delete-image`` action.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

from openeuler_image_builder import maas
from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.unit import history, inventory, jobs, retention

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkDone:
    """What one :func:`advance` did.

    Attributes:
        recorded: the jobs it recorded in the history (newly finished).
        uploads: the upload jobs it started for them.
        build: the queued build it started, if any.
    """

    recorded: tuple[history.BuildRecord, ...] = ()
    uploads: tuple[jobs.JobState, ...] = ()
    build: jobs.JobState | None = None

    @property
    def maas_changed(self) -> bool:
        """A recorded job put an image in MAAS (our image count there is stale)."""
        return any(record.uploaded for record in self.recorded)


def advance(
    starter: jobs.JobStarter,
    settings: Settings,
    *,
    arch: str,
    share: Sequence[str],
    can_build: bool,
    maas_usable: bool,
    keep_jobs: int = retention.KEEP_JOBS,
) -> WorkDone:
    """Record finished jobs, start the uploads they call for, sync the queue, start a build.

    Args:
        starter: starts and lists the unit's jobs (its layout is the state directory; its
            settings file holds ``settings``, written by the caller).
        settings: the settings jobs run with (the charm's, with the MAAS URL in use).
        arch: this unit's architecture.
        share: the configured releases this unit builds (``fleet.decide_share``).
        can_build: the unit can build (tools installed, KVM usable or TCG configured).
        maas_usable: MAAS is configured and the credential check passed.
        keep_jobs: finished jobs kept per release x arch (``retention.prune_jobs``).
    """
    layout = starter.layout
    uploads: list[jobs.JobState] = []
    with history.History.locked(history.History.path_in(layout.root)) as records:
        listed = starter.list_jobs()
        recorded = records.record_jobs(listed)
        for record in recorded:
            logger.info(
                "%s of %s (%s) %s", record.kind, record.release, record.arch, record.result
            )
            decision = records.upload_decision(
                record, auto_upload=settings.auto_upload, maas_configured=maas_usable
            )
            logger.info("upload decision: %s", decision.reason)
            if decision.upload:
                upload = _start_upload(starter, record)
                if upload is not None:
                    uploads.append(upload)
        retention.prune_jobs(layout, keep_jobs, recorded=records.is_recorded, jobs_listed=listed)
        images = inventory.list_local_images(layout, uploaded_sha256s=records.uploaded_sha256s())
        records.sync_queue(share, arch, images, history.settings_digest(settings))
        build = None
        # The jobs listed above plus the uploads just started: no second listing (and no
        # second liveness query of every running job) in the same hook.
        item = records.next_build([*listed, *uploads])
        if item is not None and can_build:
            build = _start_queued_build(starter, settings, item, records)
    return WorkDone(tuple(recorded), tuple(uploads), build)


def _start_upload(starter: jobs.JobStarter, record: history.BuildRecord) -> jobs.JobState | None:
    try:
        return starter.upload(
            catalogue.resolve(record.release), catalogue.resolve_arch(record.arch)
        )
    except (UsageError, StepFailed) as error:
        logger.warning("upload of %s (%s) not started: %s", record.release, record.arch, error)
        return None


def _start_queued_build(
    starter: jobs.JobStarter,
    settings: Settings,
    item: history.QueuedBuild,
    records: history.History,
) -> jobs.JobState | None:
    layout = starter.layout
    settings_file = layout.rebuild_settings if item.reason == "schedule" else layout.job_settings
    jobs.write_settings_file(settings_file, item.job_settings(settings))
    try:
        job = starter.build(
            catalogue.resolve(item.release),
            catalogue.resolve_arch(item.arch),
            upload=False,  # decided once the package list is known (upload_decision)
            force=item.force,
            settings_file=settings_file,
        )
    except (UsageError, StepFailed) as error:
        logger.warning("queued build of %s not started: %s", item.release, error)
        records.hold(item, str(error))
        return None
    logger.info("started queued build %s (%s)", job.id, item.reason)
    records.mark_started(item, job.id)
    return job


def delete_images(
    layout: StateLayout,
    release: catalogue.Release,
    arch: catalogue.Arch,
    *,
    running: Sequence[jobs.JobState],
    maas_client: Callable[[], maas.MaasClient] | None = None,
    scheme: catalogue.NameScheme = "custom",
) -> dict[str, str]:
    """``delete-image``: this unit's images of ``release`` x ``arch``, and the MAAS image.

    Without ``maas_client`` there must be a local image to delete; with it (``from-maas``),
    the image is also deleted from MAAS and forgotten in the history, whether or not this unit
    holds one. Returns the action result (``deleted-local``, ``deleted-from-maas``).

    Raises:
        UsageError: no local image (without ``maas_client``), a running job uses the image,
            or MAAS refused (the message says what was deleted locally).
    """
    result = {"release": release.name, "arch": arch}
    held = inventory.list_local_images(layout, release=release.name, arch=arch)
    deleted: list[inventory.LocalImage] = []
    if held or maas_client is None:  # without MAAS, "nothing here" is an error
        deleted = inventory.delete_local_image(layout, release.name, arch, jobs=running)
    result["deleted-local"] = ", ".join(str(image.path) for image in deleted) or "none"
    if maas_client is None:
        return result
    name = release.maas_name(scheme)
    try:
        with maas_client() as client:
            removed = maas.delete_image(client, name, arch)
    except (StepFailed, UsageError) as error:
        raise UsageError(
            f"local images deleted ({result['deleted-local']}); MAAS: {error}"
        ) from None
    with history.History.locked(history.History.path_in(layout.root)) as records:
        records.forget_upload(release.name, arch)
    result["deleted-from-maas"] = name if removed else f"none ({name} not in MAAS)"
    return result
