"""Build history, the queue of builds this unit owes, and the decision to upload a rebuild.

One JSON file, ``<state>/history.json``, written atomically, holds:

- ``records``: the last builds and uploads (release, arch, result, duration, image sha256,
  uploaded, package-list digest, what started it), newest first. Filled from finished
  ``jobs.JobState``s by :meth:`History.record_jobs`, which is idempotent (a job id is recorded
  once however often it is seen), so the charm can call it from every hook, not only from
  ``build-finished``: a job whose process died never dispatches, and ``jobs.list_jobs`` reports
  it failed later.
- ``recorded_jobs``: the ids of every recorded job whose state file still exists, also once its
  record is among the oldest dropped from ``records``: such a job is never recorded again, and
  ``retention.prune_jobs`` removes only recorded jobs' files.
- ``last_uploads``: per release and arch, the image last put in MAAS and its package-list
  digest. "A rebuild whose package list equals the last uploaded image's is not uploaded again"
  is decided against it (:meth:`History.upload_decision`); the old tarball may be gone by then.
- ``queue``: configured releases this unit must build (``missing``: no image yet;
  ``schedule``: the rebuild timer fired). One build at a time per unit: :meth:`History.next_build`
  returns nothing while any job of the unit runs.
- ``held``: queued builds that failed or were cancelled. They are not retried automatically
  (no retry loop every hook) until the build settings change, the rebuild timer fires, a build
  of that release succeeds, or the user runs ``build-image``.

The charm is the only writer; :meth:`History.locked` also takes a file lock, so two Juju
operations of one unit can never interleave a read-modify-write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from openeuler_image_builder.core import files
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.core.timestamps import (
    format_utc,
    parse_utc_or_none,
    seconds_between,
    utc_now,
)
from openeuler_image_builder.unit.inventory import (
    LocalImage,
    manifest_packages_digest,
    manifest_path_for,
    read_manifest,
)
from openeuler_image_builder.unit.jobs import JobState

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
DEFAULT_KEEP = 20
SCHEMA = 1

Trigger = Literal["user", "missing", "schedule"]
QueueReason = Literal["missing", "schedule"]

# Settings that do not change what a build produces; a change of any other field lifts holds.
_NOT_BUILD_INPUTS = frozenset(
    {
        "releases",
        "maas_url",
        "maas_ca_certificate",
        "maas_name_scheme",
        "auto_upload",
        "rebuild_schedule",
        "keep_images",
    }
)


def settings_digest(settings: Settings) -> str:
    """A digest of the settings that shape a build's output (not MAAS or housekeeping ones)."""
    data = settings.model_dump(mode="json", exclude=set(_NOT_BUILD_INPUTS))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def same_package_list(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    """Whether two manifests list the same packages (order and duplicates ignored).

    Manifests without a package list never compare equal: when in doubt, upload.
    """
    digest = manifest_packages_digest(first)
    return digest is not None and digest == manifest_packages_digest(second)


def _key(release: str, arch: str) -> str:
    return f"{release}/{arch}"


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclasses.dataclass(frozen=True)
class BuildRecord:
    """One finished job (build or upload) in the history."""

    job_id: str
    kind: str
    release: str
    arch: str
    result: str
    started: str
    finished: str | None
    duration: float | None
    sha256: str | None
    uploaded: bool
    packages_digest: str | None
    error: str | None
    log_path: str | None
    trigger: Trigger = "user"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BuildRecord:
        """Read a dict written by :meth:`to_dict` (unknown keys ignored)."""
        trigger = data.get("trigger", "user")
        duration = data.get("duration")
        return cls(
            job_id=str(data["job_id"]),
            kind=str(data.get("kind", "build")),
            release=str(data["release"]),
            arch=str(data["arch"]),
            result=str(data["result"]),
            started=str(data.get("started", "")),
            finished=_optional_str(data.get("finished")),
            duration=float(duration) if isinstance(duration, (int, float)) else None,
            sha256=_optional_str(data.get("sha256")),
            uploaded=bool(data.get("uploaded", False)),
            packages_digest=_optional_str(data.get("packages_digest")),
            error=_optional_str(data.get("error")),
            log_path=_optional_str(data.get("log_path")),
            trigger=trigger if trigger in ("user", "missing", "schedule") else "user",
        )


@dataclasses.dataclass(frozen=True)
class UploadRecord:
    """The image last put in MAAS for one release and arch."""

    release: str
    arch: str
    sha256: str
    packages_digest: str | None
    uploaded_at: str
    job_id: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UploadRecord:
        """Read a dict written by :meth:`to_dict`."""
        return cls(
            release=str(data["release"]),
            arch=str(data["arch"]),
            sha256=str(data["sha256"]),
            packages_digest=_optional_str(data.get("packages_digest")),
            uploaded_at=str(data.get("uploaded_at", "")),
            job_id=str(data.get("job_id", "")),
        )


@dataclasses.dataclass(frozen=True)
class QueuedBuild:
    """A build this unit owes: ``job_id`` is set once the charm started it."""

    release: str
    arch: str
    reason: QueueReason
    requested: str
    job_id: str | None = None

    @property
    def key(self) -> str:
        """``release/arch``."""
        return _key(self.release, self.arch)

    @property
    def force(self) -> bool:
        """Pass as ``force`` to ``jobs.start_build_job``: a scheduled rebuild replaces an image."""
        return self.reason == "schedule"

    def job_settings(self, settings: Settings) -> Settings:
        """The settings the job must run with: scheduled rebuilds always include updates."""
        if self.reason == "schedule" and not settings.include_updates:
            return settings.model_copy(update={"include_updates": True})
        return settings

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QueuedBuild:
        """Read a dict written by :meth:`to_dict`."""
        reason = data.get("reason")
        return cls(
            release=str(data["release"]),
            arch=str(data["arch"]),
            reason="schedule" if reason == "schedule" else "missing",
            requested=str(data.get("requested", "")),
            job_id=_optional_str(data.get("job_id")),
        )


@dataclasses.dataclass(frozen=True)
class HeldBuild:
    """A queued build that is not retried automatically, and why."""

    release: str
    arch: str
    reason: str
    held_at: str
    job_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeldBuild:
        """Read a dict written by :meth:`to_dict`."""
        return cls(
            release=str(data["release"]),
            arch=str(data["arch"]),
            reason=str(data.get("reason", "")),
            held_at=str(data.get("held_at", "")),
            job_id=_optional_str(data.get("job_id")),
        )


@dataclasses.dataclass(frozen=True)
class UploadDecision:
    """Whether to upload a finished build, and a one-line reason for the log and status."""

    upload: bool
    reason: str


class History:
    """The history file of one unit; see the module docstring."""

    def __init__(self, path: Path, *, keep: int = DEFAULT_KEEP) -> None:
        self.path = Path(path)
        self.keep = keep
        self.records: list[BuildRecord] = []
        self.last_uploads: dict[str, UploadRecord] = {}
        self.queue: list[QueuedBuild] = []
        self.held: dict[str, HeldBuild] = {}
        self.settings_digest: str | None = None
        self.recorded_jobs: set[str] = set()

    # ---- persistence -----------------------------------------------------------------------

    @classmethod
    def path_in(cls, state_root: Path) -> Path:
        """Where the history lives in a state directory."""
        return Path(state_root) / HISTORY_FILE

    @classmethod
    def load(cls, path: Path, *, keep: int = DEFAULT_KEEP) -> History:
        """Read the file; a missing file is an empty history.

        An unreadable file is moved aside to ``history.json.corrupt`` (kept for inspection) and
        an empty history is returned: losing the history must not stop the unit from working.
        """
        history = cls(path, keep=keep)
        try:
            data = json.loads(history.path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            history.records = [BuildRecord.from_dict(r) for r in data.get("records", [])]
            history.last_uploads = {
                key: UploadRecord.from_dict(value)
                for key, value in dict(data.get("last_uploads", {})).items()
            }
            history.queue = [QueuedBuild.from_dict(q) for q in data.get("queue", [])]
            history.held = {
                key: HeldBuild.from_dict(value)
                for key, value in dict(data.get("held", {})).items()
            }
            digest = data.get("settings_digest")
            history.settings_digest = str(digest) if digest else None
            history.recorded_jobs = {str(i) for i in data.get("recorded_jobs", [])}
            history.recorded_jobs.update(record.job_id for record in history.records)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as error:
            aside = history.path.with_name(history.path.name + ".corrupt")
            logger.warning("history %s unreadable (%s); moved to %s", history.path, error, aside)
            with contextlib.suppress(OSError):
                os.replace(history.path, aside)
            return cls(path, keep=keep)
        return history

    def to_dict(self) -> dict[str, Any]:
        """The file's content."""
        return {
            "schema": SCHEMA,
            "records": [record.to_dict() for record in self.records[: self.keep]],
            "last_uploads": {k: v.to_dict() for k, v in sorted(self.last_uploads.items())},
            "queue": [item.to_dict() for item in self.queue],
            "held": {k: v.to_dict() for k, v in sorted(self.held.items())},
            "settings_digest": self.settings_digest,
            "recorded_jobs": sorted(self.recorded_jobs),
        }

    def save(self) -> None:
        """Write the file atomically (temporary file in the same directory, then rename)."""
        self.records = self.records[: self.keep]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        files.write_json_atomic(self.path, self.to_dict(), indent=1)

    @classmethod
    @contextlib.contextmanager
    def locked(cls, path: Path, *, keep: int = DEFAULT_KEEP) -> Iterator[History]:
        """Load under an exclusive file lock, yield, and save if the block did not raise."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                history = cls.load(path, keep=keep)
                yield history
                history.save()
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    # ---- records ---------------------------------------------------------------------------

    def is_recorded(self, job_id: str) -> bool:
        """Whether the job was recorded (its record may have been dropped as one of the oldest)."""
        return job_id in self.recorded_jobs or self.find(job_id) is not None

    def find(self, job_id: str) -> BuildRecord | None:
        """The record of a job id, if recorded."""
        return next((r for r in self.records if r.job_id == job_id), None)

    def latest(
        self, release: str | None = None, arch: str | None = None, *, kind: str = "build"
    ) -> BuildRecord | None:
        """The newest record of ``kind`` (optionally of one release and/or arch)."""
        for record in self.records:
            if record.kind != kind:
                continue
            if release is not None and record.release != release:
                continue
            if arch is not None and record.arch != arch:
                continue
            return record
        return None

    def uploaded_sha256s(self) -> set[str]:
        """Checksums of every tarball known to be in MAAS (for ``inventory``)."""
        known = {upload.sha256 for upload in self.last_uploads.values()}
        known.update(r.sha256 for r in self.records if r.uploaded and r.sha256)
        return known

    def record_finished(
        self,
        job: JobState,
        *,
        manifest: Mapping[str, Any] | None = None,
        now: datetime.datetime | None = None,
    ) -> BuildRecord | None:
        """Record one finished job; None if it is still running or was recorded before.

        Args:
            job: the finished job.
            manifest: the image's manifest; read from beside ``job.image`` when not given.
            now: the time to use for holds (tests).
        """
        if job.result == "running" or self.is_recorded(job.id):
            return None
        self.recorded_jobs.add(job.id)
        if manifest is None and job.image:
            manifest = read_manifest(manifest_path_for(job.image))
        digest = manifest_packages_digest(manifest)
        sha256 = job.sha256
        if not sha256 and manifest and isinstance(manifest.get("sha256"), str):
            sha256 = str(manifest["sha256"])
        item = next((q for q in self.queue if q.job_id == job.id), None)
        trigger: Trigger = item.reason if item and job.kind == "build" else "user"
        # An upload job that succeeded put its image in MAAS ("already-present" included).
        uploaded = bool(job.uploaded) or (job.kind == "upload" and job.result == "succeeded")
        record = BuildRecord(
            job_id=job.id,
            kind=job.kind,
            release=job.release,
            arch=job.arch,
            result=job.result,
            started=job.started,
            finished=job.finished,
            duration=seconds_between(job.started, job.finished),
            sha256=sha256,
            uploaded=uploaded,
            packages_digest=digest,
            error=job.error,
            log_path=job.log_path or None,
            trigger=trigger,
        )
        self.records.insert(0, record)
        self.records.sort(key=_record_order, reverse=True)
        if job.result == "succeeded" and uploaded and sha256:
            self._note_upload(
                release=job.release,
                arch=job.arch,
                sha256=sha256,
                digest=digest,
                when=job.finished,
                job_id=job.id,
            )
        self._settle_queue(job, item, now)
        return record

    def _note_upload(
        self,
        *,
        release: str,
        arch: str,
        sha256: str,
        digest: str | None,
        when: str | None,
        job_id: str,
    ) -> None:
        key = _key(release, arch)
        if digest is None:
            previous = next((r for r in self.records if r.sha256 == sha256), None)
            digest = previous.packages_digest if previous else None
        self.last_uploads[key] = UploadRecord(
            release=release,
            arch=arch,
            sha256=sha256,
            packages_digest=digest,
            uploaded_at=when or format_utc(utc_now()),
            job_id=job_id,
        )
        self.records = [
            dataclasses.replace(r, uploaded=True)
            if r.sha256 == sha256 and r.kind == "build" and not r.uploaded
            else r
            for r in self.records
        ]

    def _settle_queue(
        self,
        job: JobState,
        item: QueuedBuild | None,
        now: datetime.datetime | None,
    ) -> None:
        if job.kind != "build":
            return
        key = _key(job.release, job.arch)
        if item is not None:
            self.queue.remove(item)
            if job.result != "succeeded":
                self._hold(item, job.error or f"build {job.result}", now, job_id=job.id)
        if job.result != "succeeded":
            return
        self.held.pop(key, None)
        started = parse_utc_or_none(job.started)
        for queued in list(self.queue):
            if queued.key != key or queued.job_id is not None:
                continue
            requested = parse_utc_or_none(queued.requested)
            # A build (by the user, say) that started after the request satisfies it.
            if started is not None and (requested is None or started >= requested):
                self.queue.remove(queued)

    def record_jobs(
        self,
        jobs: Iterable[JobState],
        *,
        manifest_reader: Callable[[JobState], Mapping[str, Any] | None] | None = None,
        now: datetime.datetime | None = None,
    ) -> list[BuildRecord]:
        """Record every finished job not recorded yet (oldest first); return the new records.

        Also drops queue entries whose started job is not among ``jobs`` any more (its state
        file was removed): such an entry would otherwise block the queue forever.
        """
        listed = list(jobs)
        new = []
        for job in sorted(listed, key=lambda j: j.started):
            manifest = manifest_reader(job) if manifest_reader else None
            record = self.record_finished(job, manifest=manifest, now=now)
            if record is not None:
                new.append(record)
        known = {job.id for job in listed}
        self.recorded_jobs &= known  # the others' files are gone: they cannot come back
        for item in list(self.queue):
            if item.job_id is not None and item.job_id not in known:
                self.queue.remove(item)
                reason = f"job {item.job_id} vanished (its state file is gone)"
                self._hold(item, reason, now, job_id=item.job_id)
        return new

    def forget_upload(self, release: str, arch: str) -> None:
        """Forget what is in MAAS for a release (after ``delete-image from-maas=true``)."""
        key = _key(release, arch)
        removed = self.last_uploads.pop(key, None)
        if removed is not None:
            self.records = [
                dataclasses.replace(r, uploaded=False) if r.sha256 == removed.sha256 else r
                for r in self.records
            ]

    # ---- the queue -------------------------------------------------------------------------

    def sync_queue(
        self,
        share: Sequence[str],
        arch: str,
        images: Iterable[LocalImage],
        build_settings_digest: str,
        *,
        now: datetime.datetime | None = None,
    ) -> list[QueuedBuild]:
        """Bring the queue in line with this unit's share; returns the queue.

        - a change of build settings (``settings_digest``) lifts every hold;
        - entries for releases no longer in the share are dropped, unless already started
          (their job is still followed until it finishes);
        - each release of the share with no local image for ``arch``, not queued and not held,
          is appended (config order) as ``missing``.
        """
        if build_settings_digest != self.settings_digest:
            if self.settings_digest is not None and self.held:
                logger.info("build settings changed: retrying held builds")
                self.held.clear()
            self.settings_digest = build_settings_digest
        wanted = set(share)
        self.queue = [
            item
            for item in self.queue
            if item.job_id is not None or (item.release in wanted and item.arch == arch)
        ]
        have = {image.key for image in images}
        queued = {item.key for item in self.queue}
        moment = format_utc(now or utc_now())
        for release in share:
            key = _key(release, arch)
            if (release, arch) in have or key in queued or key in self.held:
                continue
            self.queue.append(QueuedBuild(release, arch, "missing", moment))
            queued.add(key)
        return list(self.queue)

    def request_rebuild(
        self, share: Sequence[str], arch: str, *, now: datetime.datetime | None = None
    ) -> list[QueuedBuild]:
        """Queue a scheduled rebuild of every release in the share; returns the queue.

        A release already queued as ``missing`` and not started becomes a scheduled rebuild;
        holds of these releases are lifted (the schedule is the retry).
        """
        moment = format_utc(now or utc_now())
        for release in share:
            key = _key(release, arch)
            self.held.pop(key, None)
            existing = next((q for q in self.queue if q.key == key and q.job_id is None), None)
            if existing is not None:
                if existing.reason != "schedule":
                    index = self.queue.index(existing)
                    self.queue[index] = dataclasses.replace(existing, reason="schedule")
                continue
            self.queue.append(QueuedBuild(release, arch, "schedule", moment))
        return list(self.queue)

    def next_build(self, jobs: Iterable[JobState]) -> QueuedBuild | None:
        """The next queued build to start, or None while any job of this unit runs."""
        if any(job.result == "running" for job in jobs):
            return None
        return next((item for item in self.queue if item.job_id is None), None)

    def mark_started(self, item: QueuedBuild, job_id: str) -> None:
        """Note that the charm started ``item`` as job ``job_id``."""
        for index, queued in enumerate(self.queue):
            if queued.key == item.key and queued.job_id is None:
                self.queue[index] = dataclasses.replace(queued, job_id=job_id)
                return
        raise KeyError(f"{item.key} is not queued")

    def hold(
        self, item: QueuedBuild, reason: str, *, now: datetime.datetime | None = None
    ) -> None:
        """Take ``item`` out of the queue and hold it (its job could not be started)."""
        self.queue = [q for q in self.queue if not (q.key == item.key and q.job_id is None)]
        self._hold(item, reason, now)

    def _hold(
        self,
        item: QueuedBuild,
        reason: str,
        now: datetime.datetime | None,
        *,
        job_id: str | None = None,
    ) -> None:
        held_at = format_utc(now or utc_now())
        self.held[item.key] = HeldBuild(item.release, item.arch, reason, held_at, job_id)

    def release_hold(self, release: str, arch: str) -> None:
        """Lift the hold of one release (the user asked for a build of it)."""
        self.held.pop(_key(release, arch), None)

    # ---- uploads ---------------------------------------------------------------------------

    def upload_decision(
        self, record: BuildRecord, *, auto_upload: bool, maas_configured: bool
    ) -> UploadDecision:
        """Whether the charm should start an upload job for a finished build.

        Queue builds are started without ``upload`` so this can decide once the package list
        is known. A build the user started (``trigger == "user"``) uploads in the job when the
        user asked for it, and is never re-decided here.
        """
        name = f"{record.release} ({record.arch})"
        if record.kind != "build" or record.result != "succeeded":
            return UploadDecision(False, f"{name}: nothing to upload, the build {record.result}")
        if record.uploaded:
            return UploadDecision(False, f"{name}: already uploaded by its build job")
        if record.trigger == "user":
            return UploadDecision(False, f"{name}: built by build-image; it decided the upload")
        if not auto_upload:
            return UploadDecision(
                False, f"{name}: auto-upload is off; run upload-image release={record.release}"
            )
        if not maas_configured:
            return UploadDecision(False, f"{name}: MAAS is not configured, not uploading")
        last = self.last_uploads.get(_key(record.release, record.arch))
        if last is not None and record.sha256 and last.sha256 == record.sha256:
            return UploadDecision(False, f"{name}: this image is already in MAAS")
        if (
            last is not None
            and record.packages_digest is not None
            and record.packages_digest == last.packages_digest
        ):
            return UploadDecision(
                False,
                f"{name}: package list unchanged since the image uploaded "
                f"{last.uploaded_at[:10]} (sha256 {last.sha256[:12]}), not uploading again",
            )
        return UploadDecision(True, f"{name}: uploading the new image")


def _record_order(record: BuildRecord) -> tuple[float, str]:
    moment = parse_utc_or_none(record.finished) or parse_utc_or_none(record.started)
    return (moment.timestamp() if moment else 0.0, record.job_id)
