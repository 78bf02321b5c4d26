"""Typed parameters of the charm's actions, and the few decisions the actions share.

Each class is a dataclass for ``event.load_params(Class, errors="fail")``: Juju has already
checked types, required names and unknown names against ``actions.yaml``; ``__post_init__``
checks what a JSON schema cannot (release names, MAAS names) and raises ``ValueError`` with
one line that names the valid values. ops prefixes it with "Error in action parameters: ".
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.settings import KVM_UNAVAILABLE
from openeuler_image_builder.unit.jobs import JobState

_MAAS_NAME = re.compile(r"^(?:(custom|rhel)/)?[a-z0-9][a-z0-9._-]*$")
MAX_TITLE = 100


def _resolve(text: str) -> catalogue.Release:
    try:
        return catalogue.resolve(text)
    except UsageError as error:
        raise ValueError(str(error)) from None


@dataclasses.dataclass(frozen=True)
class _ReleaseParams:
    """An action on one release (``release``: exact name or alias, checked on load)."""

    release: str

    def __post_init__(self) -> None:
        _resolve(self.release)

    @property
    def target(self) -> catalogue.Release:
        """The catalogue release (aliases resolved)."""
        return _resolve(self.release)


@dataclasses.dataclass(frozen=True)
class BuildImageParams(_ReleaseParams):
    """``build-image``: ``upload`` None means "as the auto-upload config says"."""

    upload: bool | None = None
    force: bool = False
    wait: bool = False


@dataclasses.dataclass(frozen=True)
class BuildStatusParams:
    """``build-status``: empty release means every release."""

    release: str = ""

    def __post_init__(self) -> None:
        if self.release:
            _resolve(self.release)

    @property
    def target(self) -> catalogue.Release | None:
        """The catalogue release, or None for all."""
        return _resolve(self.release) if self.release else None


@dataclasses.dataclass(frozen=True)
class CancelBuildParams(_ReleaseParams):
    """``cancel-build``."""


@dataclasses.dataclass(frozen=True)
class UploadImageParams(_ReleaseParams):
    """``upload-image``: empty name/title mean the defaults of the MAAS naming scheme."""

    name: str = ""
    title: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.name and not _MAAS_NAME.match(self.name):
            raise ValueError(
                f"name {self.name!r} is not a MAAS image name: use custom/<name> or "
                f"rhel/<name> with lowercase letters, digits, '.', '_' and '-', "
                f"e.g. custom/openeuler-24.03-lts-sp2 (or leave it empty for the default)"
            )
        if len(self.title) > MAX_TITLE or any(ord(c) < 32 for c in self.title):
            raise ValueError(
                f"title must be one line of at most {MAX_TITLE} characters "
                f"(or empty for the default, e.g. 'openEuler 24.03 LTS SP2')"
            )


@dataclasses.dataclass(frozen=True)
class ListImagesParams:
    """``list-images`` (no parameters)."""


@dataclasses.dataclass(frozen=True)
class DeleteImageParams(_ReleaseParams):
    """``delete-image``."""

    from_maas: bool = False


def missing_maas_config(maas_url: str, has_api_key: bool) -> str | None:
    """What the operator must set before anything can be uploaded, or None when nothing.

    Args:
        maas_url: the MAAS URL in use (``maas-url`` config, else the maas-region relation).
        has_api_key: whether ``maas-api-key`` names a secret the charm can read.
    """
    missing = []
    if not maas_url:
        missing.append("set maas-url (or integrate with maas-region)")
    if not has_api_key:
        missing.append(
            "set maas-api-key to a Juju secret holding key=<MAAS API key> "
            "(juju add-secret, juju grant-secret, juju config maas-api-key=secret:<id>)"
        )
    return "; ".join(missing) if missing else None


def build_refusal(
    release: catalogue.Release,
    arch: str,
    *,
    tools_installed: bool,
    install_error: str,
    kvm_usable: bool,
) -> str | None:
    """Why ``build-image`` cannot start a build of ``release`` on this unit now, or None.

    Args:
        release: the release asked for.
        arch: the unit's architecture.
        tools_installed: the build tools were installed.
        install_error: why installing them failed ("" when it did not).
        kvm_usable: KVM is usable, or not needed (``accelerator=tcg``).
    """
    if arch not in release.architectures:
        return f"{release.name} has no {arch} ISO: it cannot be built on this unit"
    if not tools_installed or install_error:
        because = f" ({install_error})" if install_error else ""
        return f"the build tools are not installed yet{because}: see 'juju status'"
    if not kvm_usable:
        return KVM_UNAVAILABLE
    return None


@dataclasses.dataclass(frozen=True)
class UploadChoice:
    """Whether a ``build-image`` uploads, and a note for the action result."""

    upload: bool
    note: str


def decide_upload(
    requested: bool | None, *, auto_upload: bool, maas_missing: str | None
) -> UploadChoice:
    """Resolve ``build-image upload=...`` against the ``auto-upload`` config and MAAS.

    An explicit ``upload=true`` without MAAS fails; the default (auto-upload) without MAAS
    builds without uploading and says so.

    Raises:
        UsageError: ``upload=true`` while MAAS is not configured; names the config to set.
    """
    if requested is True:
        if maas_missing:
            raise UsageError(f"upload=true needs MAAS: {maas_missing}")
        return UploadChoice(True, "upload=true: the job uploads the image to MAAS")
    if requested is False:
        return UploadChoice(False, "upload=false: the image stays on this unit")
    if not auto_upload:
        return UploadChoice(False, "auto-upload is off: the image stays on this unit")
    if maas_missing:
        return UploadChoice(
            False, f"auto-upload is on but MAAS is not configured ({maas_missing}): not uploading"
        )
    return UploadChoice(True, "auto-upload is on: the job uploads the image to MAAS")


def already_running_message(job: JobState) -> str:
    """One line for a second ``build-image`` of a release whose job runs (names the job id)."""
    return (
        f"a {job.kind} of {job.release} ({job.arch}) is already running: job {job.id}, "
        f"phase {job.phase}; follow it with build-status release={job.release} "
        f"or stop it with cancel-build release={job.release}"
    )


def running_job_for(jobs: Sequence[JobState], release: str, arch: str) -> JobState:
    """The running job (build or upload) of ``release`` x ``arch``, for ``cancel-build``.

    Raises:
        UsageError: none runs; the message lists what does run.
    """
    for job in jobs:
        if job.result == "running" and job.release == release and job.arch == arch:
            return job
    running = [
        f"{job.release} ({job.arch}, {job.kind})" for job in jobs if job.result == "running"
    ]
    listed = ", ".join(running) if running else "none"
    raise UsageError(f"no build or upload of {release} ({arch}) is running; running: {listed}")
