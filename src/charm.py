#!/usr/bin/env python3
# Copyright 2026 openeuler-image-builder contributors
# Licensed under the Apache License, Version 2.0.
"""The openeuler-image-builder machine charm.

Thin by design: handlers load the typed config, call the workload package
(``openeuler_image_builder``, no ops inside) and set the status in one collect-status handler.
Long work (builds, uploads) runs as background jobs (``unit/jobs/``); a job tells the charm it
ended by dispatching the ``build-finished`` event, the rebuild timer dispatches ``rebuild``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ops
import pydantic
from charms.openeuler_image_builder.v0.maas_controller import MaasControllerRequirer

import charm_state
from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.settings import Settings, describe_validation_error
from openeuler_image_builder.host import install
from openeuler_image_builder.host.kvm import check_kvm
from openeuler_image_builder.host.proxy import proxy_environment
from openeuler_image_builder.host.system import HostSystem, RealHostSystem
from openeuler_image_builder.unit import (
    action_params,
    fleet,
    history,
    inventory,
    jobs,
    retention,
    schedule,
    status_text,
    work,
)

logger = logging.getLogger(__name__)

PEER_RELATION = fleet.PEER_RELATION
MAAS_RELATION = "maas-region"
PACKER_RESOURCE = "packer"
PLUGIN_RESOURCE = "packer-qemu-plugin"
WAIT_POLL_SECONDS = 5.0
TIMER_UNIT_DIR = schedule.SYSTEMD_UNIT_DIR


def make_launcher() -> jobs.Launcher:
    """How this unit runs background jobs: transient systemd units."""
    return jobs.SystemdLauncher()


def host_system() -> HostSystem:
    """The host the install changes (tests record instead)."""
    return RealHostSystem()


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
        # Per dispatch: MAAS access reads the secret, the share reads the peers' databags.
        self._maas_cache: charm_state.MaasState | None = None
        self._share_cache: fleet.Share | None = None

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
        framework.observe(on.build_finished, self._on_refresh)
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
        settings = self._settings()
        if settings is not None:  # prune first: the inventory published below is what stays
            launchers = {self.launcher.name: self.launcher}
            retention.prune_after_config(
                self.layout, settings.releases, settings.keep_images, launchers=launchers
            )
        self._reconcile(install_mode="if-needed", check_maas=True, apply_schedule=True)

    def _on_update_status(self, event: ops.UpdateStatusEvent) -> None:
        # Only what failed is retried here: install, and a MAAS that did not answer.
        self._reconcile(install_mode="retry", check_maas=False, retry_maas=True)

    def _on_maas_changed(self, event: ops.EventBase) -> None:
        self._reconcile(install_mode="never", check_maas=True)

    def _on_refresh(self, event: ops.EventBase) -> None:
        # Also build-finished: the job's end is read from its state file.
        self._reconcile(install_mode="never", check_maas=False)

    def _on_rebuild(self, event: RebuildEvent) -> None:
        settings = self._settings()
        if settings is None:
            logger.warning("rebuild timer fired but the config is invalid: nothing queued")
            return
        share = self._share(settings).releases
        with history.History.locked(self._history_path) as records:
            queue = records.request_rebuild(share, catalogue.host_arch())
        self._reread()
        logger.info("rebuild timer: queued %s", ", ".join(q.release for q in queue) or "nothing")
        self._reconcile(install_mode="never", check_maas=False)

    def _on_remove(self, event: ops.RemoveEvent) -> None:
        jobs.cancel_running(self.layout, self.launcher, timeout=30)
        try:
            self._timer().remove(systemd=systemd_layer())
        except (StepFailed, ValueError) as error:
            logger.warning("could not remove the rebuild timer: %s", error)
        charm_state.remove_key_file(self.layout.maas_api_key_file)

    # --- reconcile ---------------------------------------------------------------------------

    def _reconcile(
        self,
        *,
        install_mode: charm_state.InstallMode,
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
        self._maas(settings).update(force=check_maas, retry=retry_maas)
        job_settings = self._job_settings(settings)
        if apply_schedule:
            self._apply_schedule(settings)
        done = work.advance(
            self._starter,
            job_settings,
            arch=catalogue.host_arch(),
            share=self._share(settings).releases,
            can_build=self._can_build(settings),
            maas_usable=self._maas(settings).usable,
        )
        self._reread()
        self._publish(settings)  # the inventory as the finished jobs left it
        if done.maas_changed:
            self._maas(settings).update(recount=True)

    def _job_settings(self, settings: Settings) -> Settings:
        """Prepare what jobs read: their settings file and the root-only key file.

        The settings carry the MAAS URL in use; the key file is removed when the key or the
        URL went away.
        """
        access = self._maas(settings).access
        self.layout.ensure()
        charm_state.sync_key_file(self.layout.maas_api_key_file, access)
        job_settings = settings.model_copy(update={"maas_url": access.url})
        jobs.write_settings_file(self.layout.job_settings, job_settings)
        return job_settings

    @functools.cached_property
    def _config(self) -> Settings | str:
        """The typed config, or what is wrong with it (loaded once per dispatch)."""
        try:
            return self.load_config(Settings)
        except pydantic.ValidationError as error:
            return describe_validation_error(error) or "invalid config"

    def _settings(self) -> Settings | None:
        return self._config if isinstance(self._config, Settings) else None

    @property
    def _history_path(self) -> Path:
        return history.History.path_in(self.layout.root)

    def _install(self, settings: Settings, mode: charm_state.InstallMode) -> None:
        def plan() -> install.InstallPlan:
            packer, plugin = self._resource(PACKER_RESOURCE), self._resource(PLUGIN_RESOURCE)
            return install.plan_install(
                settings, self.layout, packer_bundle=packer, plugin_bundle=plugin
            )

        charm_state.install_tools(self.unit, self._stored, plan, host_system, mode=mode)

    def _resource(self, name: str) -> Path | None:
        try:
            path = self.model.resources.fetch(name)
        except (ops.ModelError, NameError):
            return None
        return path if path.is_file() and path.stat().st_size > 0 else None

    # --- MAAS --------------------------------------------------------------------------------

    def _maas(self, settings: Settings) -> charm_state.MaasState:
        """MAAS access (config, relation, secret) and its stored credential check."""
        if self._maas_cache is None:
            access = charm_state.resolve_maas_access(
                self.model,
                self.app.name,
                settings,
                secret_id=str(self.config.get("maas-api-key") or ""),
                endpoint=self.maas_region.endpoint,
                relation_problem=self.maas_region.problem,
            )
            self._maas_cache = charm_state.MaasState(access, settings, self._stored)
        return self._maas_cache

    # --- helpers -----------------------------------------------------------------------------

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

    @functools.cached_property
    def _kvm(self) -> bool:
        kvm = check_kvm()
        if not kvm.usable:
            logger.info("KVM unusable: %s", kvm.reason)
        return kvm.usable

    def _kvm_usable(self, settings: Settings) -> bool:
        """KVM is usable, or not needed (``accelerator=tcg``); checked once per hook."""
        return settings.accelerator == "tcg" or self._kvm

    def _can_build(self, settings: Settings) -> bool:
        if self._stored.install_error or not self._stored.packer_version:
            return False
        return self._kvm_usable(settings)

    @functools.cached_property
    def _starter(self) -> jobs.JobStarter:
        return jobs.JobStarter(
            self.layout,
            self.launcher,
            dispatch=jobs.DispatchTarget(unit_name=self.unit.name, charm_dir=self.charm_dir),
            settings_file=self.layout.job_settings,
            environment={
                "PYTHONPATH": charm_state.job_python_path(),
                **proxy_environment(),
            },
        )

    # The unit's history, images and jobs, read once per dispatch; ``_reread`` after the charm
    # changed them (collect-status runs last and must see the changes).

    @functools.cached_property
    def _records(self) -> history.History:
        return history.History.load(self._history_path)

    @functools.cached_property
    def _images(self) -> list[inventory.LocalImage]:
        return inventory.list_local_images(
            self.layout, uploaded_sha256s=self._records.uploaded_sha256s()
        )

    @functools.cached_property
    def _jobs(self) -> list[jobs.JobState]:
        return self._starter.list_jobs()

    def _reread(self) -> None:
        for name in ("_records", "_images", "_jobs"):
            self.__dict__.pop(name, None)

    def _own_report(self, settings: Settings) -> fleet.UnitReport:
        return fleet.UnitReport.from_local(
            catalogue.host_arch(), self._can_build(settings), self._images
        )

    def _share(self, settings: Settings) -> fleet.Share:
        """This unit's releases and how many units share the work (from the peer relation)."""
        if self._share_cache is None:
            self._share_cache = charm_state.fleet_share(
                self.model.get_relation(PEER_RELATION),
                self.unit,
                self.app,
                settings.releases,
                self._own_report(settings),
            )
        return self._share_cache

    def _publish(self, settings: Settings) -> None:
        """Publish this unit's inventory and, on the leader, the plan (peer relation)."""
        charm_state.publish_fleet(
            self.model.get_relation(PEER_RELATION),
            self.unit,
            self.app,
            self._own_report(settings),
            self._share(settings).plan,
        )

    # --- status ------------------------------------------------------------------------------

    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        settings = self._settings()
        if settings is None:
            event.add_status(ops.BlockedStatus(str(self._config)))
            return
        maas_state = self._maas(settings)
        for status in status_text.charm_statuses(
            install_error=self._stored.install_error,
            tools_installed=bool(self._stored.packer_version),
            kvm_usable=self._kvm_usable(settings),
            schedule_error=self._stored.schedule_error,
            maas=maas_state.statuses(),
            work=self._work_status(settings),
            maas_text=maas_state.summary(),
        ):
            event.add_status(ops.StatusBase.from_name(status.level, status.message))

    def _work_status(self, settings: Settings) -> status_text.UnitStatus:
        share = self._share(settings)
        return status_text.unit_status(
            unit_name=self.unit.name,
            arch=catalogue.host_arch(),
            jobs=self._jobs,
            images=self._images,
            history=self._records,
            share=share.releases,
            units=share.units,
            configured=settings.releases,
        )

    # --- actions -----------------------------------------------------------------------------

    def _action_settings(self, event: ops.ActionEvent) -> Settings | None:
        settings = self._settings()
        if settings is None:
            event.fail(f"the charm config is invalid: {self._config}")
        return settings

    def _maas_for(
        self, event: ops.ActionEvent, settings: Settings, need: str
    ) -> charm_state.MaasState | None:
        """MAAS for an action that needs it; without it the action fails with what is missing."""
        maas_state = self._maas(settings)
        missing = maas_state.missing()
        if missing:
            event.fail(f"{need} needs MAAS: {missing}")
            return None
        return maas_state

    def _start_job(
        self, event: ops.ActionEvent, start: Callable[[], jobs.JobState]
    ) -> jobs.JobState | None:
        """Start a job for an action; on a refusal the action fails with its reason."""
        try:
            return start()
        except jobs.JobAlreadyRunning as error:
            event.fail(action_params.already_running_message(error.job))
        except (UsageError, StepFailed) as error:
            event.fail(str(error))
        return None

    def _on_build_image(self, event: ops.ActionEvent) -> None:
        params = event.load_params(action_params.BuildImageParams, errors="fail")
        settings = self._action_settings(event)
        if settings is None:
            return
        release, arch = params.target, catalogue.host_arch()
        refusal = action_params.build_refusal(
            release,
            arch,
            tools_installed=bool(self._stored.packer_version),
            install_error=self._stored.install_error,
            kvm_usable=self._kvm_usable(settings),
        )
        if refusal:
            event.fail(refusal)
            return
        self._job_settings(settings)
        missing = self._maas(settings).missing()
        try:
            choice = action_params.decide_upload(
                params.upload, auto_upload=settings.auto_upload, maas_missing=missing
            )
        except UsageError as error:
            event.fail(str(error))
            return
        job = self._start_job(
            event,
            lambda: self._starter.build(release, arch, upload=choice.upload, force=params.force),
        )
        if job is None:
            return
        with history.History.locked(self._history_path) as records:
            records.release_hold(release.name, arch)
        self._reread()
        results = status_text.build_started_result(
            job, unit_name=self.unit.name, upload_note=choice.note, wait=params.wait
        )
        if params.wait:
            self._follow(event, job, results)
        else:
            event.set_results(results)

    def _follow(self, event: ops.ActionEvent, job: jobs.JobState, results: dict[str, Any]) -> None:
        event.log(results["message"])
        final = status_text.follow_job(
            lambda: self._starter.find_job(job.id), event.log, poll_interval=WAIT_POLL_SECONDS
        )
        lines = jobs.log_tail(final, 10) if final.result == "failed" else []
        results["job"] = status_text.job_result(final, log_lines=lines)
        event.set_results(results)
        if final.result != "succeeded":
            event.fail(status_text.job_outcome(final))

    def _on_build_status(self, event: ops.ActionEvent) -> None:
        params = event.load_params(action_params.BuildStatusParams, errors="fail")
        target = params.target
        settings = self._settings()
        event.set_results(
            status_text.build_status_result(
                self._jobs,
                history=self._records,
                release=target.name if target else None,
                log_tail=lambda job: jobs.log_tail(job, 10),
                status=self._work_status(settings) if settings is not None else None,
            )
        )

    def _on_cancel_build(self, event: ops.ActionEvent) -> None:
        params = event.load_params(action_params.CancelBuildParams, errors="fail")
        release, arch = params.target, catalogue.host_arch()
        try:
            running = action_params.running_job_for(self._jobs, release.name, arch)
            final = jobs.cancel_job(self.layout, running, self.launcher)
        except (UsageError, StepFailed) as error:
            event.fail(str(error))
            return
        finally:
            self._reread()
        event.set_results(status_text.cancel_result(final))

    def _on_upload_image(self, event: ops.ActionEvent) -> None:
        params = event.load_params(action_params.UploadImageParams, errors="fail")
        settings = self._action_settings(event)
        if settings is None:
            return
        maas_state = self._maas_for(event, settings, "upload")
        if maas_state is None:
            return
        release, arch = params.target, catalogue.host_arch()
        self._job_settings(settings)
        job = self._start_job(
            event,
            lambda: self._starter.upload(
                release, arch, name=params.name or None, title=params.title or None
            ),
        )
        if job is not None:
            self._reread()
            note = f"to MAAS at {maas_state.access.host}"
            event.set_results(
                status_text.build_started_result(job, unit_name=self.unit.name, upload_note=note)
            )

    def _on_list_images(self, event: ops.ActionEvent) -> None:
        event.load_params(action_params.ListImagesParams, errors="fail")
        settings = self._action_settings(event)
        if settings is None:
            return
        reports, _ = charm_state.read_peer_reports(
            self.model.get_relation(PEER_RELATION), self.unit.name, self._own_report(settings)
        )
        rows, maas_error = self._maas(settings).list_images()
        event.set_results(
            status_text.list_images_result(
                local=self._images,
                fleet=fleet.merge_inventories(reports),
                maas=rows,
                maas_error=maas_error,
            )
        )

    def _on_delete_image(self, event: ops.ActionEvent) -> None:
        params = event.load_params(action_params.DeleteImageParams, errors="fail")
        settings = self._action_settings(event)
        if settings is None:
            return
        release, arch = params.target, catalogue.host_arch()
        maas_state = None
        if params.from_maas:
            maas_state = self._maas_for(event, settings, "from-maas=true")
            if maas_state is None:
                return
        try:
            results = work.delete_images(
                self.layout,
                release,
                arch,
                running=self._jobs,
                maas_client=maas_state.client if maas_state is not None else None,
                scheme=settings.maas_name_scheme,
            )
        except UsageError as error:  # local images may be gone even so
            event.fail(str(error))
            return
        finally:
            self._reread()
        if maas_state is not None:
            maas_state.update(recount=True)
        self._publish(settings)  # the peers see the inventory change
        event.set_results(results)


if __name__ == "__main__":  # pragma: nocover
    ops.main(OpenEulerImageBuilderCharm)
