"""Uploading a tarball as a MAAS boot resource: create, chunked PUTs with recovery, sync wait.

Sections in brackets refer to ``shared/reference/maas-api.md`` (sections 4, 5, 6), and MAAS's
own source where the reference is silent (named where used).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from openeuler_image_builder.core.catalogue import Arch, NameScheme, Release
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.progress import Reporter, null_reporter
from openeuler_image_builder.core.timestamps import format_utc, utc_now
from openeuler_image_builder.maas.client import MaasClient, json_of, maas_error_text
from openeuler_image_builder.maas.errors import MaasApiError, MaasUnreachable
from openeuler_image_builder.maas.image_facts import ImageFacts, hash_file, read_image_facts
from openeuler_image_builder.maas.naming import matching_resources, newest_set, single_file
from openeuler_image_builder.maas.target import UploadTarget, upload_target

logger = logging.getLogger(__name__)

# The maas CLI's chunk size (section 5); snap installs refuse bodies over 10 MiB (section 7).
CHUNK_SIZE = 4 * 1024 * 1024
MAX_CHUNK_SIZE = 8 * 1024 * 1024

UploadStatus = Literal["uploaded", "already-present"]

# Texts of MAAS's chunk-upload errors (section 5; maasserver/api/boot_resources.py).
_COMPLETE_FILE = "Cannot upload to a complete file."
_TOO_MUCH_DATA = "Too much data received."
_HASH_MISMATCH = "Saved content does not match given SHA256 value."


@dataclasses.dataclass(frozen=True)
class UploadResult:
    """What ``upload_image()`` did."""

    status: UploadStatus
    name: str
    architecture: str
    resource_id: int
    set_version: str
    sha256: str
    size: int
    bytes_sent: int = 0
    bytes_read: int = 0
    attempts: int = 0
    duration: float = 0.0
    facts_source: str = "manifest"

    def to_json(self) -> dict[str, object]:
        """JSON-serialisable form (``upload --json``)."""
        return dataclasses.asdict(self)

    def store_record(self, maas_url: str) -> dict[str, str]:
        """What the image store keeps about this upload (``images.record_upload``)."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "sha256": self.sha256,
            "status": self.status,
            "maas_url": maas_url,
            "uploaded_at": format_utc(utc_now()),
        }

    @property
    def message(self) -> str:
        """One line for a human."""
        if self.status == "already-present":
            return f"{self.name} ({self.architecture}) is already in MAAS with this content"
        return (
            f"uploaded {self.name} ({self.architecture}), set {self.set_version}, "
            f"{self.size / 2**20:.1f} MiB, complete on every region controller"
        )


class _Restart(Exception):
    """The set cannot be continued safely: delete it and start over."""


def _region_count(stored: int, progress: float, size: int) -> int | None:
    """Regions behind ``progress`` when one region holds ``stored`` bytes; None if not whole.

    ``progress`` is 100 x (bytes held by all regions) / (size x regions) (section 6).
    """
    count = stored / (progress * size / 100)
    if count < 0.5 or abs(count - round(count)) > 1e-6:
        return None
    return round(count)


class _Uploader:
    """One upload: POST, chunked PUTs with recovery, sync wait (see ``upload_image``)."""

    def __init__(
        self,
        client: MaasClient,
        facts: ImageFacts,
        target: UploadTarget,
        *,
        progress: Reporter,
        chunk_size: int,
        sync_timeout: float,
        max_attempts: int,
    ) -> None:
        self.client = client
        self.facts = facts
        self.target = target
        self.progress = progress
        self.chunk_size = chunk_size
        self.sync_timeout = sync_timeout
        self.max_attempts = max_attempts
        self.bytes_sent = 0
        self.bytes_read = 0
        self.attempts = 0
        self._last_percent = 0.0
        self._buffer: memoryview | None = None
        self.started = time.monotonic()

    def result(self, status: UploadStatus, resource_id: int, version: str) -> UploadResult:
        return UploadResult(
            status=status,
            name=self.target.name,
            architecture=self.target.architecture,
            resource_id=resource_id,
            set_version=version,
            sha256=self.facts.sha256,
            size=self.facts.size,
            bytes_sent=self.bytes_sent,
            bytes_read=self.bytes_read,
            attempts=self.attempts,
            duration=round(time.monotonic() - self.started, 3),
            facts_source=self.facts.source,
        )

    # -- steps ---------------------------------------------------------------------------

    def find_complete_copy(self) -> UploadResult | None:
        """A complete newest set with our sha256 under our name: nothing to do.

        Checked before POSTing because a POST always adds a new set and (without keep_old)
        drops the files of the older ones (section 4; maasserver/forms BootResourceForm.save).
        """
        listed = self.client.boot_resources("uploaded", step="upload")
        for item in matching_resources(listed, self.target.name, self.target.architecture):
            resource = self.client.boot_resource(int(item["id"]), step="upload")
            found = newest_set(resource) if resource else None
            rfile = single_file(found[1]) if found else None
            if (
                found
                and rfile
                and found[1].get("complete")
                and rfile.get("sha256") == self.facts.sha256
            ):
                return self.result("already-present", int(item["id"]), found[0])
        return None

    def create(self) -> tuple[int, str, dict[str, Any]]:
        """POST the resource; returns its id, the new set's version and its file."""
        response = self.client.request(
            "POST", "boot-resources/", step="upload", fields=self.target.form(self.facts)
        )
        self.client.check_auth(response)
        if response.status_code not in (200, 201):
            text = maas_error_text(response)
            try:
                fields = response.json()
            except ValueError:
                fields = None
            if (
                response.status_code == 400
                and isinstance(fields, dict)
                and "architecture" in fields
            ):
                # The form offers only usable architectures, those with boot images (section 4).
                raise StepFailed(
                    "upload",
                    f"MAAS has no boot images for {self.target.architecture}: import Ubuntu "
                    f"{self.target.architecture.split('/')[0]} images first",
                )
            raise MaasApiError(
                "upload",
                f"creating boot resource {self.target.name} ({self.target.architecture})",
                response.status_code,
                text,
            )
        resource = json_of(response, "upload", f"creating boot resource {self.target.name}")
        found = newest_set(resource)
        rfile = single_file(found[1]) if found else None
        if not found or not rfile:
            note = self.discard(int(resource["id"]))
            raise StepFailed("upload", "MAAS created the boot resource without its file" + note)
        if (
            rfile.get("sha256") != self.facts.sha256
            or int(rfile.get("size", -1)) != self.facts.size
        ):
            note = self.discard(int(resource["id"]))
            raise StepFailed(
                "upload",
                f"MAAS answered with a set for sha256 {rfile.get('sha256')} / size "
                f"{rfile.get('size')}, not the image's {self.facts.sha256} / {self.facts.size}"
                + note,
            )
        return int(resource["id"]), found[0], rfile

    def discard(self, resource_id: int) -> str:
        """Delete an incomplete upload; returns a note for the error message."""
        try:
            self.client.delete_boot_resource(resource_id, step="upload")
        except (StepFailed, UsageError) as error:
            logger.warning("could not remove the incomplete boot resource: %s", error)
            return (
                f"; the incomplete upload (boot resource {resource_id}) could not be removed: "
                f"run maas-delete {self.target.name} or re-run upload"
            )
        logger.info("removed the incomplete boot resource %s", resource_id)
        return "; the incomplete upload was removed from MAAS"

    def report_upload(self, offset: int, force: bool = False) -> None:
        # At most about a hundred reports per attempt: each whole percent, and the end.
        percent = 100 * offset / self.facts.size
        if force or percent - self._last_percent >= 1 or offset >= self.facts.size:
            self._last_percent = percent
            self.progress(
                "upload",
                percent,
                f"{offset / 2**20:.0f}/{self.facts.size / 2**20:.0f} MiB",
            )

    def file_state(self, resource_id: int, version: str) -> dict[str, Any] | None:
        resource = self.client.boot_resource(resource_id, step="upload")
        if resource is None:
            return None
        resource_set = (resource.get("sets") or {}).get(version)
        return single_file(resource_set) if isinstance(resource_set, dict) else None

    def server_offset(
        self, rfile: Mapping[str, Any], offset: int, length: int, regions: int | None
    ) -> tuple[int | None, int | None]:
        """Where MAAS's copy ends after a chunk whose outcome is unknown.

        ``progress`` is 100 x (bytes held by all regions) / (size x regions), not an offset
        (section 6). Before the last byte only the receiving region holds bytes, so with the
        region count known the offset is exact. The count is learnt from the first chunk
        (``regions``); without it only "nothing stored yet" is certain. Returns
        ``(offset or None when unsafe, regions)``.
        """
        size = self.facts.size
        end = offset + length
        if rfile.get("complete"):
            return size, regions
        progress = float(rfile.get("progress") or 0.0)
        if progress == 0.0:
            return (0, regions) if offset == 0 else (None, regions)
        held_per_region = progress * size / 100  # = bytes held by all regions / regions
        if regions is None:
            if offset != 0:
                return None, None
            if end == size:
                # The only chunk: any byte held means MAAS stored it (a PUT appends whole).
                return size, None
            regions = _region_count(length, progress, size)
            if regions is None:
                return None, None
        exact = held_per_region * regions
        if end == size and exact > offset + 0.5:
            # The last chunk was stored; copying to the other regions may have begun.
            return size, regions
        nearest = round(exact)
        if abs(exact - nearest) > 0.01 or nearest not in (offset, end):
            return None, regions
        return nearest, regions

    def calibrate_regions(self, resource_id: int, version: str, offset: int) -> int | None:
        """Region count from the progress after the first chunk (see ``server_offset``)."""
        try:
            rfile = self.file_state(resource_id, version)
        except (StepFailed, UsageError):
            return None
        progress = float((rfile or {}).get("progress") or 0.0)
        return _region_count(offset, progress, self.facts.size) if progress else None

    def send_file(self, handle: Any, resource_id: int, version: str, upload_uri: str) -> None:
        """PUT every chunk in order; returns when MAAS holds the whole file on one region.

        Raises ``_Restart`` when the set cannot be continued safely.
        """
        size = self.facts.size
        offset = 0
        regions: int | None = None
        failures = 0
        handle.seek(0)
        self.report_upload(0, force=True)
        while offset < size:
            length = min(self.chunk_size, size - offset)
            chunk = self.read_chunk(handle, offset, length)
            while True:  # until this chunk is known to be stored
                outcome = self.put_chunk(upload_uri, chunk)
                if outcome == "stored":
                    self.bytes_sent += length
                    failures = 0
                    break
                if outcome == "complete":
                    self.bytes_sent += length
                    return
                failures += 1
                if failures > self.client.retries:
                    raise MaasUnreachable(
                        "upload", self.client.url, f"{outcome} on {failures} tries in a row"
                    )
                self.progress(
                    "upload", 100 * offset / size, f"{outcome}; re-reading the upload state"
                )
                self.client.sleep(self.client.backoff_delay(failures))
                rfile = self.file_state(resource_id, version)
                if rfile is None:
                    raise _Restart("the boot resource disappeared from MAAS during the upload")
                found, regions = self.server_offset(rfile, offset, length, regions)
                logger.info("after %s at byte %d MAAS holds up to byte %s", outcome, offset, found)
                if found is None:
                    raise _Restart(f"after {outcome} MAAS's copy could not be matched to a chunk")
                if found == size:
                    self.bytes_sent += length
                    return
                if found == offset + length:
                    self.bytes_sent += length
                    break
                # found == offset: nothing of this chunk was stored; send it again.
            offset += length
            self.report_upload(offset)
            if regions is None and offset < size and offset == length:
                regions = self.calibrate_regions(resource_id, version, offset)

    def read_chunk(self, handle: Any, offset: int, length: int) -> memoryview:
        """Read ``length`` bytes at ``offset`` into the one reused buffer.

        Reusing one buffer (instead of a new 4 MiB ``bytes`` per chunk) saves the allocation
        and its page faults; the memoryview goes to the socket as it is.
        """
        if self._buffer is None or len(self._buffer) < length:
            self._buffer = memoryview(bytearray(max(length, self.chunk_size)))
        view = self._buffer[:length]
        if handle.tell() != offset:
            handle.seek(offset)
        done = 0
        while done < length:
            count = handle.readinto(view[done:])
            if not count:
                raise StepFailed("upload", f"{self.facts.path} shrank while it was being uploaded")
            done += count
        self.bytes_read += done
        return view

    def put_chunk(self, upload_uri: str, chunk: bytes | memoryview) -> str:
        """PUT one chunk.

        Returns ``stored``, ``complete``, or a short description of a failure whose outcome is
        unknown. Raises for answers that end the attempt or the upload.
        """
        try:
            response = self.client.request(
                "PUT",
                upload_uri,
                step="upload",
                data=chunk,
                headers={"Content-Type": "application/octet-stream"},
                retry=False,
            )
        except MaasUnreachable as error:
            return error.why
        status = response.status_code
        if status == 200:
            return "stored"
        self.client.check_auth(response)
        if status >= 500:
            return f"HTTP {status}"
        text = maas_error_text(response)
        if status == 400 and _COMPLETE_FILE in text:
            return "complete"
        if status == 400 and _TOO_MUCH_DATA in text:
            raise _Restart(f"MAAS answered: {text}")
        if status == 400 and _HASH_MISMATCH in text:
            self.check_file_unchanged(text)
            raise _Restart(f"MAAS answered: {text}")
        if status == 404:
            raise _Restart("the boot resource disappeared from MAAS during the upload")
        if status == 413:
            raise MaasApiError(
                "upload",
                f"uploading a {len(chunk)}-byte chunk (over the MAAS request-body limit)",
                status,
                text,
            )
        raise MaasApiError("upload", "uploading a chunk", status, text)

    def check_file_unchanged(self, maas_text: str) -> None:
        """After MAAS's hash mismatch: a changed file is fatal, transit damage is retried."""
        actual, _ = hash_file(self.facts.path, progress=self.progress)
        self.bytes_read += self.facts.size
        if actual != self.facts.sha256:
            origin = (
                f"its manifest {self.facts.manifest}"
                if self.facts.source == "manifest"
                else "the hash taken before the upload"
            )
            raise StepFailed(
                "upload",
                f"MAAS answered: {maas_text} The tarball's sha256 is now {actual}, but "
                f"{origin} says {self.facts.sha256}: the file changed; rebuild the image"
                + (f" or delete {self.facts.manifest}" if self.facts.manifest else ""),
            )

    def wait_for_sync(self, resource_id: int, version: str) -> None:
        """Poll until the set is complete on every region controller (section 6)."""
        deadline = time.monotonic() + self.sync_timeout
        interval = 0.2
        percent: float | None = None
        while True:
            resource = self.client.boot_resource(resource_id, step="upload")
            resource_set = ((resource or {}).get("sets") or {}).get(version)
            if not isinstance(resource_set, dict):
                raise StepFailed(
                    "upload",
                    f"the uploaded set {version} of {self.target.name} disappeared from MAAS "
                    "while it was being copied to the region controllers",
                )
            if resource_set.get("complete"):
                self.progress("sync", 100, "complete on every region controller")
                return
            percent = float(resource_set.get("progress") or 0.0)
            self.progress("sync", percent, "copying to every region controller")
            if time.monotonic() >= deadline:
                raise StepFailed(
                    "upload",
                    f"MAAS has not copied {self.target.name} to every region controller within "
                    f"{self.sync_timeout:.0f} s ({percent:.0f}% done); it goes on copying in "
                    "the background: check later with maas-list (if it never completes, a load "
                    "balancer may have spread the chunks over several regions; upload to one "
                    "region's URL)",
                )
            self.client.sleep(interval)
            interval = min(interval * 1.5, 5.0)

    def run(self) -> UploadResult:
        present = self.find_complete_copy()
        if present:
            self.progress("upload", 100, "already in MAAS")
            return present
        with self.facts.path.open("rb", buffering=0) as handle:
            last_reason = ""
            while self.attempts < self.max_attempts:
                self.attempts += 1
                resource_id, version, rfile = self.create()
                if rfile.get("complete"):
                    # MAAS already holds this content (section 5, step 3).
                    self.progress("upload", 100, "already in MAAS")
                    return self.result("already-present", resource_id, version)
                try:
                    self.send_file(handle, resource_id, version, str(rfile["upload_uri"]))
                except _Restart as restart:
                    last_reason = str(restart)
                    logger.warning(
                        "upload attempt %d/%d of %s: %s; deleting the set and starting over",
                        self.attempts,
                        self.max_attempts,
                        self.target.name,
                        last_reason,
                    )
                    note = self.discard(resource_id)
                    if "could not" in note:
                        raise StepFailed("upload", last_reason + note) from None
                    self.progress("upload", 0, f"starting over: {last_reason}"[:60])
                    continue
                except BaseException as error:
                    # Never leave a broken set behind: remove it, then report.
                    note = self.discard(resource_id)
                    if isinstance(error, MaasUnreachable):
                        raise MaasUnreachable("upload", error.url, error.why + note) from None
                    if isinstance(error, StepFailed):
                        raise StepFailed("upload", error.reason + note) from None
                    raise
                self.wait_for_sync(resource_id, version)
                return self.result("uploaded", resource_id, version)
        raise StepFailed(
            "upload",
            f"gave up after {self.max_attempts} attempts: {last_reason}; nothing was left in MAAS",
        )


def upload_image(
    client: MaasClient,
    tarball: Path,
    *,
    release: Release,
    arch: Arch,
    scheme: NameScheme = "custom",
    name: str | None = None,
    title: str | None = None,
    progress: Reporter = null_reporter,
    sync_timeout: float = 1800,
    chunk_size: int = CHUNK_SIZE,
    max_attempts: int = 3,
) -> UploadResult:
    """Register a root-filesystem tarball as a MAAS boot resource (section 5), idempotently.

    1. sha256 and size from the manifest beside the tarball (size checked), else hashed.
    2. Our name already holds a complete newest set with that sha256: ``already-present``.
    3. ``POST boot-resources/`` with sha256 + size (never ``content``), name, title,
       architecture, ``filetype=tgz`` and ``base_image`` for ``custom/`` names.
    4. PUT chunks of at most ``chunk_size`` (4 MiB) to ``upload_uri``. After a failed chunk the
       resource is re-read to learn whether MAAS stored it; when that cannot be told, or MAAS
       refuses the data, the set is deleted and the upload starts over (``max_attempts``).
    5. Poll until the set is complete on every region controller (``sync_timeout``).

    Progress phases: ``upload`` (percent of bytes), ``sync`` (MAAS's percentage).

    Raises:
        UsageError: bad input (file, manifest, name), or MaasKeyRejected / MaasNotAdmin.
        StepFailed: step ``upload``: MAAS's error text, unusable architecture, unreachable MAAS,
            sync timeout. No incomplete set is left behind when MAAS can be reached.
    """
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise UsageError(f"chunk size must be 1..{MAX_CHUNK_SIZE} bytes (MAAS body limit)")
    target = upload_target(release, arch, scheme=scheme, name=name, title=title)
    facts = read_image_facts(tarball, progress=progress)
    if facts.arch and facts.arch != arch:
        raise UsageError(
            f"{tarball.name} is an {facts.arch} image (its manifest says so), not {arch}: "
            f"pass --arch {facts.arch} or the right image"
        )
    if facts.source == "manifest" and facts.release and facts.release != release.name:
        raise UsageError(
            f"{tarball.name} is openEuler {facts.release} (its manifest says so), not "
            f"{release.name}: pass --release {facts.release} or the right image"
        )
    uploader = _Uploader(
        client,
        facts,
        target,
        progress=progress,
        chunk_size=chunk_size,
        sync_timeout=sync_timeout,
        max_attempts=max(1, max_attempts),
    )
    result = uploader.run()
    logger.info("%s", result.message)
    return result
