#!/usr/bin/env python3
# Copyright 2026 openeuler-image-builder contributors
# Licensed under the Apache License, Version 2.0.
"""The openeuler-image-builder machine charm.

Thin by design: handlers load the typed config, call the workload package
(``openeuler_image_builder``, no ops inside) and set the status in one collect-status handler.
Long work (builds, uploads) runs as background jobs (``jobs.py``); a job tells the charm it
ended by dispatching the ``build-finished`` event, the rebuild timer dispatches ``rebuild``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Literal, cast

import ops
import pydantic
from charms.openeuler_image_builder.v0.maas_controller import MaasControllerRequirer

import charm_state
from openeuler_image_builder import (
    action_params,
    catalogue,
    fleet,
    history,
    install,
    inventory,
    jobs,
    maas,
    retention,
    schedule,
    status_text,
)
from openeuler_image_builder.errors import StepFailed, UsageError
from openeuler_image_builder.paths import StateLayout
from openeuler_image_builder.settings import (
    Settings,
    describe_validation_error,
    resolve_accelerator,
)

logger = logging.getLogger(__name__)

PEER_RELATION = fleet.PEER_RELATION
MAAS_RELATION = "maas-region"
PACKER_RESOURCE = "packer"
PLUGIN_RESOURCE = "packer-qemu-plugin"
SETTINGS_FILE = "settings.json"
REBUILD_SETTINGS_FILE = "settings-rebuild.json"
WAIT_POLL_SECONDS = 5.0
NO_MAAS = "no MAAS configured, images are kept locally"
TIMER_UNIT_DIR = schedule.SYSTEMD_UNIT_DIR

InstallMode = Literal["always", "if-needed", "retry", "never"]


def make_launcher() -> jobs.Launcher:
    """How this unit runs background jobs: transient systemd units."""
    return jobs.SystemdLauncher()


def host_system() -> install.HostSystem:
    """The host the install changes (tests record instead)."""
    return install.RealHostSystem()


def systemd_layer() -> schedule.SystemdLayer:
    """The systemctl calls of the rebuild timer (tests record instead)."""
    return schedule.CharmlibsSystemd()


class BuildFinishedEvent(ops.EventBase):
    """A background job ended (``juju-exec <unit> JUJU_DISPATCH_PATH=hooks/build-finished``)."""


class RebuildEvent(ops.EventBase):
    """The rebuild timer fired (``juju-exec <unit> JUJU_DISPATCH_PATH=hooks/rebuild``)."""


class BuilderCharmEvents(ops.CharmEvents):
    """The charm's events plus the two its background machinery dispatches."""

    build_finished = ops.EventSource(BuildFinishedEvent)
    rebuild = ops.EventSource(RebuildEvent)


class OpenEulerImageBuilderCharm(ops.CharmBase):
    """Builds openEuler images for MAAS on this unit and registers them in MAAS."""

    on = BuilderCharmEvents()  # pyright: ignore[reportAssignmentType]
    _stored = ops.StoredState()

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self._stored.set_default(
            install_error="", packer_version="", maas_check={}, schedule_error=""
        )
        self.layout = StateLayout()
        self.launcher = make_launcher()
        self.maas_region = MaasControllerRequirer(self, MAAS_RELATION)
        self._settings_cache: Settings | None = None
        self._config_error: str | None = None
        self._access_cache: charm_state.MaasAccess | None = None
        self._share_cache: tuple[list[str] | None, int] | None = None

        on = self.on
        framework.observe(on.collect_unit_status, self._on_collect_status)
        framework.observe(on.install, self._on_install)
        framework.observe(on.upgrade_charm, self._on_install)
        framework.observe(on.config_changed, self._on_config_changed)
        framework.observe(on.start, self._on_refresh)
        framework.observe(on.update_status, self._on_update_status)
        framework.observe(on.secret_changed, self._on_maas_changed)
        framework.observe(self.maas_region.on.endpoint_changed, self._on_maas_changed)
        framework.observe(on.leader_elected, self._on_refresh)
        for event in ("relation_joined", "relation_changed", "relation_departed"):
            framework.observe(getattr(on[PEER_RELATION], event), self._on_refresh)
        framework.observe(on.build_finished, self._on_build_finished)
        framework.observe(on.rebuild, self._on_rebuild)
        framework.observe(on.remove, self._on_remove)
        framework.observe(on.build_image_action, self._on_build_image)
        framework.observe(on.build_status_action, self._on_build_status)
        framework.observe(on.cancel_build_action, self._on_cancel_build)
        framework.observe(on.upload_image_action, self._on_upload_image)
        framework.observe(on.list_images_action, self._on_list_images)
        framework.observe(on.delete_image_action, self._on_delete_image)

    # --- events ------------------------------------------------------------------------------

    def _on_install(self, event: ops.EventBase) -> None:
        self._reconcile(install_mode="always", check_maas=True, apply_schedule=True)

    def _on_config_changed(self, event: ops.ConfigChangedEvent) -> None:
        self._reconcile(install_mode="if-needed", check_maas=True, apply_schedule=True)
        settings = self._settings()
        if settings is not None:
            launchers = {self.launcher.name: self.launcher}
            if settings.releases:  # without configured releases, ISOs serve build-image
                retention.prune_iso_cache(self.layout, settings.releases, launchers=launchers)
            retention.prune_images(self.layout, settings.keep_images, launchers=launchers)

    def _on_update_status(self, event: ops.UpdateStatusEvent) -> None:
        # Only what failed is retried here: install, and a MAAS that did not answer.
        self._reconcile(install_mode="retry", check_maas=False, retry_maas=True)

    def _on_maas_changed(self, event: ops.EventBase) -> None:
        self._reconcile(install_mode="never", check_maas=True)

    def _on_refresh(self, event: ops.EventBase) -> None:
        self._reconcile(install_mode="never", check_maas=False)

    def _on_build_finished(self, event: BuildFinishedEvent) -> None:
        self._reconcile(install_mode="never", check_maas=False)

    def _on_rebuild(self, event: RebuildEvent) -> None:
        settings = self._settings()
        if settings is None:
            logger.warning("rebuild timer fired but the config is invalid: nothing queued")
            return
        share, _ = self._share(settings, publish=False)
        with history.History.locked(self._history_path) as records:
            queue = records.request_rebuild(share or [], catalogue.host_arch())
        logger.info("rebuild timer: queued %s", ", ".join(q.release for q in queue) or "nothing")
        self._reconcile(install_mode="never", check_maas=False)

    def _on_remove(self, event: ops.RemoveEvent) -> None:
        for job in self._jobs():
            if job.running:
                try:
                    jobs.cancel_job(self.layout, job, self.launcher, timeout=30)
                except (StepFailed, UsageError) as error:
                    logger.warning("could not stop job %s: %s", job.id, error)
        try:
            self._timer().remove(systemd=systemd_layer())
        except (StepFailed, ValueError) as error:
            logger.warning("could not remove the rebuild timer: %s", error)
        charm_state.remove_key_file(self.layout.maas_api_key_file)

    # --- reconcile ---------------------------------------------------------------------------

    def _reconcile(
        self,
        *,
        install_mode: InstallMode,
        check_maas: bool,
        apply_schedule: bool = False,
        retry_maas: bool = False,
    ) -> None:
        """Bring the unit in line with config, relations and jobs (every handler ends here)."""
        settings = self._settings()
        if settings is None:
            return  # collect-status shows which option is invalid
        self.layout.ensure()
        self._install(settings, install_mode)
        access = self._maas_access(settings)
        self._check_maas(settings, access, force=check_maas, retry=retry_maas)
        job_settings = self._job_settings(settings, access)
        if apply_schedule:
            self._apply_schedule(settings)
        uploaded = self._work(settings, access, job_settings)
        if uploaded:
            self._refresh_image_count(settings, access)

    def _job_settings(self, settings: Settings, access: charm_state.MaasAccess) -> Settings:
        """Prepare what jobs read: their settings file and the root-only key file.

        The settings carry the MAAS URL in use; the key file is removed when the key or the
        URL went away.
        """
        self.layout.ensure()
        if access.configured and access.key:
            charm_state.write_key_file(self.layout.maas_api_key_file, access.key)
        elif charm_state.remove_key_file(self.layout.maas_api_key_file):
            logger.info("MAAS key or URL gone: removed the key file")
        job_settings = settings.model_copy(update={"maas_url": access.url})
        _write_settings(self.layout.root / SETTINGS_FILE, job_settings)
        return job_settings

    def _settings(self) -> Settings | None:
        if self._settings_cache is None and self._config_error is None:
            try:
                self._settings_cache = self.load_config(Settings)
            except pydantic.ValidationError as error:
                self._config_error = describe_validation_error(error)
        return self._settings_cache

    @property
    def _history_path(self) -> Path:
        return history.History.path_in(self.layout.root)

    def _install(self, settings: Settings, mode: InstallMode) -> None:
        if mode == "never" or (mode == "retry" and not self._stored.install_error):
            return
        try:
            plan = install.plan_install(
                settings,
                self.layout,
                packer_bundle=self._resource(PACKER_RESOURCE),
                plugin_bundle=self._resource(PLUGIN_RESOURCE),
            )
            if mode == "if-needed" and install.is_current(plan) and self._stored.packer_version:
                return
            self.unit.status = ops.MaintenanceStatus("installing QEMU, firmware and Packer")

            def progress(phase: str, percent: float | None, detail: str = "") -> None:
                text = f"installing build tools ({phase}): {detail}"
                self.unit.status = ops.MaintenanceStatus(text[:100])

            result = install.install(plan, system=host_system(), progress=progress)
        except (StepFailed, UsageError) as error:
            logger.error("install failed: %s", error)
            self._stored.install_error = str(error)
            return
        self._stored.install_error = ""
        self._stored.packer_version = result.packer_version
        self.unit.set_workload_version(result.packer_version)
        logger.info(
            "installed Packer %s and qemu plugin %s",
            result.packer_version,
            result.qemu_plugin_version,
        )

    def _resource(self, name: str) -> Path | None:
        try:
            path = self.model.resources.fetch(name)
        except (ops.ModelError, NameError):
            return None
        return path if path.is_file() and path.stat().st_size > 0 else None

    def _maas_access(self, settings: Settings) -> charm_state.MaasAccess:
        if self._access_cache is None:
            self._access_cache = charm_state.resolve_maas_access(
                self.model,
                self.app.name,
                settings,
                secret_id=str(self.config.get("maas-api-key") or ""),
                endpoint=self.maas_region.endpoint,
                relation_problem=self.maas_region.problem,
            )
        return self._access_cache

    def _maas_check(
        self, settings: Settings, access: charm_state.MaasAccess
    ) -> charm_state.MaasCheck | None:
        check = charm_state.MaasCheck.from_dict(dict(self._stored.maas_check or {}))
        if check is None or check.fingerprint != access.fingerprint(settings.maas_ca_certificate):
            return None
        return check

    def _check_maas(
        self, settings: Settings, access: charm_state.MaasAccess, *, force: bool, retry: bool
    ) -> None:
        if not access.configured:
            self._stored.maas_check = {}
            return
        current = self._maas_check(settings, access)
        # Config, secret and relation changes check a new key, and re-check a failed one (the
        # operator may have fixed the user in MAAS); update-status only retries a MAAS that did
        # not answer.
        stale = current is None or (force and not current.ok)
        failed_to_connect = current is not None and current.kind == "unreachable"
        if (force and stale) or (retry and (stale or failed_to_connect)):
            check = charm_state.check_maas(access, settings, self.app.name)
            self._stored.maas_check = check.to_dict()

    def _refresh_image_count(self, settings: Settings, access: charm_state.MaasAccess) -> None:
        check = self._maas_check(settings, access)
        if check is None or not check.ok:
            return
        try:
            with access.client(settings) as client:
                count = charm_state.count_our_images(client)
        except (StepFailed, UsageError) as error:
            logger.warning("could not count our images in MAAS: %s", error)
            return
        self._stored.maas_check = check.with_images(count).to_dict()

    def _maas_missing(self, settings: Settings, access: charm_state.MaasAccess) -> str | None:
        """What stops uploads (config to set, or the failed credential check), or None."""
        missing = action_params.missing_maas_config(access.url, access.configured)
        if missing:
            return access.blocked or missing
        check = self._maas_check(settings, access)
        return check.message if check is not None and not check.ok else None

    def _maas_usable(self, settings: Settings, access: charm_state.MaasAccess) -> bool:
        check = self._maas_check(settings, access)
        return access.configured and check is not None and check.ok

    def _timer(self) -> schedule.RebuildTimer:
        return schedule.RebuildTimer(
            unit_name=self.unit.name, charm_dir=self.charm_dir, unit_dir=TIMER_UNIT_DIR
        )

    def _apply_schedule(self, settings: Settings) -> None:
        try:
            change = self._timer().apply(settings.rebuild_schedule, systemd=systemd_layer())
        except (UsageError, StepFailed, ValueError) as error:
            self._stored.schedule_error = f"rebuild-schedule not applied: {error}"
            return
        self._stored.schedule_error = ""
        logger.info(change.describe())

    def _can_build(self, settings: Settings) -> bool:
        if self._stored.install_error or not self._stored.packer_version:
            return False
        return settings.accelerator == "tcg" or install.check_kvm().usable

    def _jobs(self) -> list[jobs.JobState]:
        return jobs.list_jobs(self.layout, launchers={self.launcher.name: self.launcher})

    def _dispatch(self) -> jobs.DispatchTarget:
        return jobs.DispatchTarget(unit_name=self.unit.name, charm_dir=self.charm_dir)

    def _job_environment(self) -> dict[str, str]:
        return {"PYTHONPATH": charm_state.job_python_path(), **install.proxy_environment()}

    def _local_images(self, records: history.History) -> list[inventory.LocalImage]:
        return inventory.list_local_images(
            self.layout, uploaded_sha256s=records.uploaded_sha256s()
        )

    def _share(self, settings: Settings, *, publish: bool) -> tuple[list[str] | None, int]:
        """This unit's releases and how many units share the work (publishes when asked)."""
        if self._share_cache is not None and not publish:
            return self._share_cache
        arch = catalogue.host_arch()
        records = history.History.load(self._history_path)
        report = fleet.UnitReport.from_local(
            arch, self._can_build(settings), self._local_images(records)
        )
        relation = self.model.get_relation(PEER_RELATION)
        if publish and relation is not None:
            charm_state.publish(relation.data[self.unit], fleet.UNIT_REPORT_KEY, report.to_json())
        reports, problems = charm_state.read_peer_reports(relation, self.unit.name, report)
        for unit_name, problem in problems.items():
            logger.warning("ignoring the report of %s: %s", unit_name, problem)
        assignments: fleet.Assignments | None
        if self.unit.is_leader() or relation is None:
            plan = fleet.plan_assignments(settings.releases, reports)
            if publish and relation is not None:
                charm_state.publish(relation.data[self.app], fleet.ASSIGNMENTS_KEY, plan.to_json())
            assignments = plan
        else:
            assignments = charm_state.read_assignments(relation, self.app)
        share = fleet.unit_share(assignments, self.unit.name, arch, settings.releases)
        self._share_cache = (share, len(reports))
        return self._share_cache

    def _work(
        self, settings: Settings, access: charm_state.MaasAccess, job_settings: Settings
    ) -> bool:
        """Record finished jobs, start uploads they call for, share the work, start the next build.

        Returns:
            Whether a finished job put an image in MAAS (the image count is then refreshed).
        """
        arch = catalogue.host_arch()
        uploaded = False
        with history.History.locked(self._history_path) as records:
            for record in records.record_jobs(self._jobs()):
                logger.info(
                    "%s of %s (%s) %s", record.kind, record.release, record.arch, record.result
                )
                uploaded |= record.uploaded
                decision = records.upload_decision(
                    record,
                    auto_upload=settings.auto_upload,
                    maas_configured=self._maas_usable(settings, access),
                )
                logger.info("upload decision: %s", decision.reason)
                if decision.upload:
                    self._start_upload(record.release, record.arch)
        share, _ = self._share(settings, publish=True)
        with history.History.locked(self._history_path) as records:
            records.sync_queue(
                share or [],
                arch,
                self._local_images(records),
                history.settings_digest(settings),
            )
            item = records.next_build(self._jobs())
            if item is None or not self._can_build(settings):
                return uploaded
            settings_file = self.layout.root / (
                REBUILD_SETTINGS_FILE if item.reason == "schedule" else SETTINGS_FILE
            )
            _write_settings(settings_file, item.job_settings(job_settings))
            try:
                job = jobs.start_build_job(
                    self.layout,
                    catalogue.resolve(item.release),
                    catalogue.resolve_arch(item.arch),
                    upload=False,
                    force=item.force,
                    launcher=self.launcher,
                    dispatch=self._dispatch(),
                    settings_file=settings_file,
                    environment=self._job_environment(),
                )
            except (UsageError, StepFailed) as error:
                logger.warning("queued build of %s not started: %s", item.release, error)
                records.hold(item, str(error))
            else:
                logger.info("started queued build %s (%s)", job.id, item.reason)
                records.mark_started(item, job.id)
        return uploaded

    def _start_upload(
        self, release: str, arch: str, *, name: str | None = None, title: str | None = None
    ) -> jobs.JobState | None:
        try:
            return jobs.start_upload_job(
                self.layout,
                catalogue.resolve(release),
                catalogue.resolve_arch(arch),
                name=name,
                title=title,
                launcher=self.launcher,
                dispatch=self._dispatch(),
                settings_file=self.layout.root / SETTINGS_FILE,
                environment=self._job_environment(),
            )
        except (UsageError, StepFailed) as error:
            logger.warning("upload of %s (%s) not started: %s", release, arch, error)
            return None

    # --- status ------------------------------------------------------------------------------

    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        settings = self._settings()
        if settings is None:
            event.add_status(ops.BlockedStatus(self._config_error or "invalid config"))
            return
        if self._stored.install_error:
            event.add_status(
                ops.BlockedStatus(
                    f"installing the build tools failed: {self._stored.install_error}; "
                    f"retrying at each update-status"
                )
            )
        elif not self._stored.packer_version:
            event.add_status(ops.MaintenanceStatus("waiting to install the build tools"))
        if settings.accelerator != "tcg":
            kvm = install.check_kvm()
            if not kvm.usable:
                logger.info("KVM unusable: %s", kvm.reason)
                event.add_status(ops.BlockedStatus(_kvm_message()))
        if self._stored.schedule_error:
            event.add_status(ops.BlockedStatus(self._stored.schedule_error))
        access = self._maas_access(settings)
        if access.blocked:
            event.add_status(ops.BlockedStatus(access.blocked))
        if access.waiting:
            event.add_status(ops.WaitingStatus(access.waiting))
        check = self._maas_check(settings, access) if access.configured else None
        if check is not None and not check.ok:
            status_type = ops.WaitingStatus if check.kind == "unreachable" else ops.BlockedStatus
            event.add_status(status_type(check.message))
        work = self._work_status(settings)
        if work.level == "active":
            if check is not None and check.ok:
                maas_text = check.summary()
            elif not access.wanted:
                maas_text = NO_MAAS
            else:
                maas_text = f"MAAS {access.host}" if access.url else NO_MAAS
            event.add_status(ops.ActiveStatus(_active_message(work.message, maas_text)))
        else:
            event.add_status(ops.StatusBase.from_name(work.level, work.message))

    def _work_status(self, settings: Settings) -> status_text.UnitStatus:
        share, units = self._share(settings, publish=False)
        records = history.History.load(self._history_path)
        return status_text.unit_status(
            unit_name=self.unit.name,
            arch=catalogue.host_arch(),
            jobs=self._jobs(),
            images=self._local_images(records),
            history=records,
            share=share,
            units=units,
            configured=settings.releases,
        )

    # --- actions -----------------------------------------------------------------------------

    def _action_settings(self, event: ops.ActionEvent) -> Settings | None:
        settings = self._settings()
        if settings is None:
            event.fail(f"the charm config is invalid: {self._config_error}")
        return settings

    def _on_build_image(self, event: ops.ActionEvent) -> None:
        params = event.load_params(action_params.BuildImageParams, errors="fail")
        settings = self._action_settings(event)
        if settings is None:
            return
        release, arch = params.target, catalogue.host_arch()
        if arch not in release.architectures:
            event.fail(f"{release.name} has no {arch} ISO: it cannot be built on this unit")
            return
        if not self._stored.packer_version or self._stored.install_error:
            event.fail(
                "the build tools are not installed yet"
                + (f" ({self._stored.install_error})" if self._stored.install_error else "")
                + ": see 'juju status'"
            )
            return
        if settings.accelerator != "tcg" and not install.check_kvm().usable:
            event.fail(_kvm_message())
            return
        access = self._maas_access(settings)
        self._job_settings(settings, access)
        missing = self._maas_missing(settings, access)
        try:
            choice = action_params.decide_upload(
                params.upload, auto_upload=settings.auto_upload, maas_missing=missing
            )
            job = jobs.start_build_job(
                self.layout,
                release,
                arch,
                upload=choice.upload,
                force=params.force,
                launcher=self.launcher,
                dispatch=self._dispatch(),
                settings_file=self.layout.root / SETTINGS_FILE,
                environment=self._job_environment(),
            )
        except jobs.JobAlreadyRunning as error:
            event.fail(action_params.already_running_message(error.job))
            return
        except (UsageError, StepFailed) as error:
            event.fail(str(error))
            return
        with history.History.locked(self._history_path) as records:
            records.release_hold(release.name, arch)
        results = status_text.build_started_result(
            job, unit_name=self.unit.name, upload_note=choice.note, wait=params.wait
        )
        if not params.wait:
            event.set_results(results)
            return
        self._follow(event, job, results)

    def _follow(self, event: ops.ActionEvent, job: jobs.JobState, results: dict[str, Any]) -> None:
        event.log(results["message"])
        status_text.follow_job(
            lambda: jobs.find_job(self.layout, job.id),
            event.log,
            poll_interval=WAIT_POLL_SECONDS,
        )
        final = jobs.find_job(self.layout, job.id)
        lines = jobs.log_tail(final, 10) if final.result == "failed" else []
        results["job"] = status_text.job_result(final, log_lines=lines)
        event.set_results(results)
        if final.result != "succeeded":
            event.fail(
                f"{final.kind} of {final.release} ({final.arch}) {final.result}"
                + (f": {final.error}" if final.error else "")
            )

    def _on_build_status(self, event: ops.ActionEvent) -> None:
        params = event.load_params(action_params.BuildStatusParams, errors="fail")
        target = params.target
        settings = self._settings()
        records = history.History.load(self._history_path)
        status = self._work_status(settings) if settings is not None else None
        event.set_results(
            status_text.build_status_result(
                self._jobs(),
                history=records,
                release=target.name if target else None,
                log_tail=lambda job: jobs.log_tail(cast(jobs.JobState, job), 10),
                status=status,
            )
        )

    def _on_cancel_build(self, event: ops.ActionEvent) -> None:
        params = event.load_params(action_params.CancelBuildParams, errors="fail")
        release, arch = params.target, catalogue.host_arch()
        all_jobs = self._jobs()
        try:
            running = action_params.running_job_for(all_jobs, release.name, arch)
            job = next(job for job in all_jobs if job.id == running.id)
            final = jobs.cancel_job(self.layout, job, self.launcher)
        except (UsageError, StepFailed) as error:
            event.fail(str(error))
            return
        event.set_results(
            {
                "job-id": final.id,
                "result": final.result,
                "message": f"{final.kind} of {final.release} ({final.arch}): {final.result}",
            }
        )

    def _on_upload_image(self, event: ops.ActionEvent) -> None:
        params = event.load_params(action_params.UploadImageParams, errors="fail")
        settings = self._action_settings(event)
        if settings is None:
            return
        access = self._maas_access(settings)
        missing = self._maas_missing(settings, access)
        if missing:
            event.fail(f"upload needs MAAS: {missing}")
            return
        release, arch = params.target, catalogue.host_arch()
        self._job_settings(settings, access)
        try:
            job = jobs.start_upload_job(
                self.layout,
                release,
                arch,
                name=params.name or None,
                title=params.title or None,
                launcher=self.launcher,
                dispatch=self._dispatch(),
                settings_file=self.layout.root / SETTINGS_FILE,
                environment=self._job_environment(),
            )
        except jobs.JobAlreadyRunning as error:
            event.fail(action_params.already_running_message(error.job))
            return
        except (UsageError, StepFailed) as error:
            event.fail(str(error))
            return
        event.set_results(
            status_text.build_started_result(
                job, unit_name=self.unit.name, upload_note=f"to MAAS at {access.host}"
            )
        )

    def _on_list_images(self, event: ops.ActionEvent) -> None:
        event.load_params(action_params.ListImagesParams, errors="fail")
        settings = self._action_settings(event)
        if settings is None:
            return
        records = history.History.load(self._history_path)
        local = self._local_images(records)
        relation = self.model.get_relation(PEER_RELATION)
        own = fleet.UnitReport.from_local(catalogue.host_arch(), self._can_build(settings), local)
        reports, _ = charm_state.read_peer_reports(relation, self.unit.name, own)
        access = self._maas_access(settings)
        maas_rows: list[dict[str, Any]] | None = None
        maas_error = None
        if not access.configured:
            maas_error = access.blocked or access.waiting or NO_MAAS
        else:
            try:
                with access.client(settings) as client:
                    maas_rows = [dataclasses.asdict(image) for image in maas.list_images(client)]
            except (StepFailed, UsageError) as error:
                maas_error = str(error)
        event.set_results(
            status_text.list_images_result(
                local=local,
                fleet=fleet.merge_inventories(reports),
                maas=maas_rows,
                maas_error=maas_error,
            )
        )

    def _on_delete_image(self, event: ops.ActionEvent) -> None:
        params = event.load_params(action_params.DeleteImageParams, errors="fail")
        settings = self._action_settings(event)
        if settings is None:
            return
        release, arch = params.target, catalogue.host_arch()
        access = self._maas_access(settings)
        if params.from_maas:
            missing = self._maas_missing(settings, access)
            if missing:
                event.fail(f"from-maas=true needs MAAS: {missing}")
                return
        results: dict[str, Any] = {"release": release.name, "arch": arch}
        held = inventory.list_local_images(self.layout, release=release.name, arch=arch)
        deleted: list[inventory.LocalImage] = []
        if held or not params.from_maas:  # without from-maas, "nothing here" is an error
            try:
                deleted = inventory.delete_local_image(
                    self.layout, release.name, arch, jobs=self._jobs()
                )
            except UsageError as error:
                event.fail(str(error))
                return
        results["deleted-local"] = ", ".join(str(image.path) for image in deleted) or "none"
        if params.from_maas:
            name = release.maas_name(settings.maas_name_scheme)
            try:
                with access.client(settings) as client:
                    removed = maas.delete_image(client, name, arch)
            except (StepFailed, UsageError) as error:
                event.fail(f"local images deleted ({results['deleted-local']}); MAAS: {error}")
                return
            with history.History.locked(self._history_path) as records:
                records.forget_upload(release.name, arch)
            results["deleted-from-maas"] = name if removed else f"none ({name} not in MAAS)"
            self._refresh_image_count(settings, access)
        self._share(settings, publish=True)  # the peers see the inventory change
        event.set_results(results)


def _write_settings(path: Path, settings: Settings) -> None:
    """Write the settings a job reads (no secret in them: the key goes by its own file)."""
    text = json.dumps(settings.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def _kvm_message() -> str:
    """The Blocked text when KVM is needed but unusable: ``resolve_accelerator``'s own."""
    try:
        resolve_accelerator("kvm", kvm_usable=False)
    except UsageError as error:
        return str(error)
    raise AssertionError("resolve_accelerator accepted kvm without KVM")


def _active_message(work: str, maas_text: str) -> str:
    """The Active status: the unit's work, then what MAAS holds (or that there is no MAAS)."""
    if work.startswith("idle: no images"):
        return f"ready: {maas_text}"
    if work.startswith("build of "):  # a failure summary: already long, keep it whole
        return work
    return f"{work}; {maas_text}"


if __name__ == "__main__":  # pragma: nocover
    ops.main(OpenEulerImageBuilderCharm)
