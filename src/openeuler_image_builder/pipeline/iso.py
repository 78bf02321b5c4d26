"""Fetch and verify the installer ISO (the ``fetch-iso`` stage).

The DVD ISO of a release is streamed from a mirror into a cache directory: HTTP Range resume of
``<iso>.partial``, the sha256 computed in the same pass, the result checked against the
``.sha256sum`` file the mirror publishes beside the ISO, then moved into place with
``os.replace``. A record ``<iso>.sha256`` (JSON: sha256, size, mtime) beside the verified ISO
lets the next run reuse it without reading 4 GiB again. Proxies come from the environment
(``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``; requests reads them).

Files of one ISO in the cache (``cache_files()`` lists them for housekeeping):
``<iso>``, ``<iso>.sha256`` (record), ``<iso>.partial`` (interrupted download).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import requests
import urllib3.exceptions

from openeuler_image_builder import __version__
from openeuler_image_builder.core import files
from openeuler_image_builder.core.catalogue import Arch, Release
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.progress import ByteProgress, Reporter, null_reporter
from openeuler_image_builder.core.timestamps import format_utc, utc_now

logger = logging.getLogger(__name__)

STEP = "fetch-iso"
CHUNK_SIZE = 1024 * 1024
RECORD_SUFFIX = ".sha256"
PARTIAL_SUFFIX = ".partial"
MAX_RETRY_DELAY = 30.0

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
# `sha256sum` output: "<hex>  name" (text mode), "<hex> *name" (binary mode), or the hash alone.
_GNU_LINE = re.compile(r"^(?P<hex>[0-9a-fA-F]{64})(?:\s+\*?(?P<name>\S.*?))?\s*$")
# BSD / `sha256sum --tag` output: "SHA256 (name) = <hex>".
_BSD_LINE = re.compile(r"^SHA-?256\s*\((?P<name>.+)\)\s*=\s*(?P<hex>[0-9a-fA-F]{64})\s*$", re.I)
# ISO 9660 primary volume descriptor: sector 16; volume identifier at byte 40, 32 bytes.
_PVD_OFFSET = 16 * 2048
_RETRYABLE = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    # Raised by urllib3 itself while reading a body with read1 (timeouts, dropped connections).
    urllib3.exceptions.HTTPError,
)


@dataclasses.dataclass(frozen=True)
class IsoInfo:
    """A verified ISO: where it is, its sha256 and its size in bytes."""

    path: Path
    sha256: str
    size: int


class _Retryable(Exception):
    """A transient failure (5xx, connection closed early): retry and resume."""


class _ChecksumUnavailable(Exception):
    """The mirror's checksum could not be obtained (unreachable, 404, not listed)."""

    def __init__(self, reason: str, *, not_found: bool = False) -> None:
        super().__init__(reason)
        self.not_found = not_found


def parse_checksum_file(text: str, file_name: str) -> str | None:
    """The sha256 for ``file_name`` in a checksum file, or None when it is not listed.

    Tolerant of the forms mirrors publish: ``<hex>  name`` (one or two spaces, optional ``*``
    before the name, ``./`` or a directory before it), ``SHA256 (name) = <hex>``, several lines
    (matched by file name), and a lone hash (taken when it is the only entry).
    """
    named: dict[str, str] = {}
    unnamed: list[str] = []
    for raw_line in text.splitlines():
        line = raw_line.strip().lstrip("\ufeff")
        if not line or line.startswith("#"):
            continue
        match = _GNU_LINE.match(line) or _BSD_LINE.match(line)
        if not match:
            continue
        digest = match.group("hex").lower()
        name = match.group("name")
        if name:
            named.setdefault(name.strip().replace("\\", "/").rsplit("/", 1)[-1], digest)
        else:
            unnamed.append(digest)
    if file_name in named:
        return named[file_name]
    if len(unnamed) == 1 and not named:
        return unnamed[0]
    return None


def normalise_sha256(text: str) -> str:
    """Validate a sha256 given by a user (64 hex digits, optional ``sha256:`` prefix).

    Raises:
        UsageError: not 64 hexadecimal digits.
    """
    value = text.strip().lower().removeprefix("sha256:")
    if not _HEX64.match(value):
        raise UsageError(
            f"--sha256 {text!r} is not a sha256: give the 64 hexadecimal digits published in "
            "the ISO's .sha256sum file"
        )
    return value


def hash_file(path: Path, progress: Reporter = null_reporter) -> tuple[str, int]:
    """The sha256 and size of a file, read once in 1 MiB blocks."""
    return files.hash_file(path, block_size=CHUNK_SIZE, report=ByteProgress(progress, STEP))


def cache_files(cache_dir: Path, release: Release, arch: Arch) -> list[Path]:
    """The files of one release's ISO in the cache that exist (ISO, record, partial download)."""
    iso = cache_dir / release.iso_name(arch)
    candidates = [iso, _record_path(iso), _partial_path(iso)]
    return [path for path in candidates if path.exists()]


def _check_arch(release: Release, arch: Arch) -> None:
    """Raises UsageError when ``release`` publishes no ISO for ``arch``."""
    if arch not in release.architectures:
        raise UsageError(
            f"openEuler {release.name} has no {arch} ISO: use one of "
            f"{', '.join(release.architectures)}"
        )


def _record_path(iso: Path) -> Path:
    return iso.with_name(iso.name + RECORD_SUFFIX)


def _partial_path(iso: Path) -> Path:
    return iso.with_name(iso.name + PARTIAL_SUFFIX)


def _read_record(iso: Path) -> IsoInfo | None:
    """The recorded checksum of ``iso`` if the record still describes the file on disk."""
    try:
        record = json.loads(_record_path(iso).read_text())
        stat = iso.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    digest = record.get("sha256")
    if (
        isinstance(digest, str)
        and _HEX64.match(digest)
        and record.get("size") == stat.st_size
        and record.get("mtime_ns") == stat.st_mtime_ns
    ):
        return IsoInfo(iso, digest.lower(), stat.st_size)
    return None


def _write_record(iso: Path, digest: str, source: str) -> None:
    """Record the verified checksum beside ``iso`` (atomically), with its size and mtime."""
    stat = iso.stat()
    record = {
        "sha256": digest,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "source": source,
        "verified_at": format_utc(utc_now()),
    }
    files.write_json_atomic(_record_path(iso), record)


def _session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = f"openeuler-image-builder/{__version__}"
    return session


def _mirror_hint(url: str) -> str:
    return (
        f"{url} was not found (HTTP 404): check that the mirror carries this release, "
        "or point the mirror-url config option (--mirror on the command line) at an "
        "openEuler mirror's tree root, e.g. https://repo.openeuler.org/"
    )


def _fetch_expected_sha256(
    session: requests.Session,
    url: str,
    file_name: str,
    *,
    timeout: float,
    retries: int,
    retry_delay: float,
) -> str:
    """Download and parse the published checksum file.

    Raises:
        _ChecksumUnavailable: unreachable after retries, HTTP error, or the name not listed.
    """
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(retry_delay * 2 ** (attempt - 1), MAX_RETRY_DELAY))
        try:
            response = session.get(url, timeout=(timeout, timeout))
        except requests.exceptions.SSLError as error:
            raise _ChecksumUnavailable(_tls_hint(url, error)) from None
        except _RETRYABLE as error:
            last_error = f"cannot reach {url}: {_short(error)}"
            continue
        except requests.RequestException as error:
            raise _ChecksumUnavailable(f"cannot fetch {url}: {_short(error)}") from None
        with response:
            if response.status_code == 404:
                raise _ChecksumUnavailable(_mirror_hint(url), not_found=True)
            if response.status_code >= 500:
                last_error = f"{url} answered HTTP {response.status_code} {response.reason}"
                continue
            if response.status_code != 200:
                raise _ChecksumUnavailable(
                    f"{url} answered HTTP {response.status_code} {response.reason}"
                )
            if len(response.content) > 1024 * 1024:
                raise _ChecksumUnavailable(f"{url} is not a checksum file (larger than 1 MiB)")
            digest = parse_checksum_file(response.content.decode("utf-8", "replace"), file_name)
            if digest is None:
                raise _ChecksumUnavailable(f"{url} lists no sha256 for {file_name}")
            return digest
    raise _ChecksumUnavailable(last_error)


def _tls_hint(url: str, error: BaseException) -> str:
    return (
        f"TLS error talking to {url}: {_short(error)}; check the mirror's certificate, or the "
        "CA bundle (REQUESTS_CA_BUNDLE) when a proxy re-signs HTTPS"
    )


class _WriteFailed(Exception):
    """Writing the partial download failed (disk full, I/O error)."""


def _short(error: BaseException) -> str:
    """One line for an exception from requests/urllib3 (their messages nest and repeat)."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    match = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if match:
        return match.group(0)
    return text[:200]


@contextlib.contextmanager
def _open_partial(path: Path) -> Iterator[BinaryIO]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+b") as stream:
        yield stream


def _download(
    session: requests.Session,
    url: str,
    partial: Path,
    *,
    timeout: float,
    retries: int,
    retry_delay: float,
    progress: Reporter,
) -> tuple[str, int]:
    """Stream ``url`` into ``partial`` (resuming what is there); returns (sha256, size).

    The sha256 is computed while writing. Bytes already in ``partial`` from an earlier run are
    hashed first (a local read); bytes received before a cut in this run are never fetched again.
    """
    digest = hashlib.sha256()
    offset = 0
    validator: str | None = None
    failures = 0
    report = ByteProgress(progress, STEP)
    with _open_partial(partial) as out:
        if partial.stat().st_size:
            progress(STEP, None, "checking the partial download")
            for block in iter(lambda: out.read(CHUNK_SIZE), b""):
                digest.update(block)
                offset += len(block)
            logger.info("resuming %s at byte %d", url, offset)
        while True:
            headers = {}
            if offset:
                headers["Range"] = f"bytes={offset}-"
                if validator:
                    # Resume only if the file is still the same; else the server sends it whole.
                    headers["If-Range"] = validator
            try:
                with session.get(
                    url, headers=headers, stream=True, timeout=(timeout, timeout)
                ) as response:
                    status = response.status_code
                    if status == 404:
                        raise StepFailed(STEP, _mirror_hint(url))
                    if status >= 500:
                        raise _Retryable(f"{url} answered HTTP {status} {response.reason}")
                    if status == 416 and offset:
                        # The partial file is not shorter than the remote one: start again.
                        logger.warning("%s: stale partial download, starting again", url)
                        digest, offset = _restart(out)
                        raise _Retryable(f"{url}: range not satisfiable")
                    if status not in (200, 206):
                        raise StepFailed(STEP, f"{url} answered HTTP {status} {response.reason}")
                    if status == 206 and _range_start(response) != offset:
                        digest, offset = _restart(out)
                        raise _Retryable(f"{url}: the server sent another range than asked")
                    if status == 200 and offset:
                        # No Range support, or the file changed (If-Range): the body is the
                        # whole file, so drop what we had.
                        digest, offset = _restart(out)
                    out.seek(offset)
                    total = _total_size(response, offset)
                    etag = response.headers.get("ETag", "")
                    validator = (
                        etag if etag and not etag.startswith("W/") else None
                    ) or response.headers.get("Last-Modified")
                    for chunk in _body_chunks(response):
                        try:
                            out.write(chunk)
                        except OSError as error:
                            raise _WriteFailed(error.strerror or str(error)) from None
                        digest.update(chunk)
                        offset += len(chunk)
                        failures = 0
                        report(offset, total)
                    if total is not None and offset < total:
                        raise _Retryable(f"connection closed at byte {offset} of {total}")
                    break
            except requests.exceptions.SSLError as error:
                raise StepFailed(STEP, _tls_hint(url, error)) from None
            except (*_RETRYABLE, _Retryable) as error:
                failures += 1
                if failures > retries:
                    out.flush()
                    raise StepFailed(
                        STEP,
                        f"downloading {url} failed {failures} times in a row "
                        f"({_short(error)}); the {offset} bytes received are kept in "
                        f"{partial} and the next run resumes from there",
                    ) from None
                delay = min(retry_delay * 2 ** (failures - 1), MAX_RETRY_DELAY)
                logger.warning("%s: %s; retrying in %.0f s", url, _short(error), delay)
                time.sleep(delay)
            except requests.RequestException as error:
                raise StepFailed(STEP, f"cannot fetch {url}: {_short(error)}") from None
            except _WriteFailed as error:
                raise StepFailed(
                    STEP, f"cannot write {partial}: {error}; {offset} bytes are kept there"
                ) from None
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), offset


def _restart(out: BinaryIO) -> tuple[hashlib._Hash, int]:
    """Empty the partial download: a fresh hash and offset 0."""
    out.seek(0)
    out.truncate()
    return hashlib.sha256(), 0


def _body_chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives, at most ``CHUNK_SIZE`` bytes at a time.

    ``iter_content`` fills whole chunks and, when the connection drops or times out, loses what
    it buffered of the chunk in progress. ``read1`` hands over whatever has arrived, and with
    urllib3's length check off a short body simply ends (the caller compares the length), so a
    resume starts exactly at the last byte written.
    """
    raw = response.raw
    read1 = getattr(raw, "read1", None)
    if read1 is None:  # urllib3 < 2.3
        yield from response.iter_content(CHUNK_SIZE)
        return
    raw.enforce_content_length = False
    while True:
        chunk = read1(CHUNK_SIZE, decode_content=True)
        if not chunk:
            return
        yield chunk


def _range_start(response: requests.Response) -> int:
    match = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else -1


def _total_size(response: requests.Response, offset: int) -> int | None:
    match = re.match(r"bytes\s+\d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
    if match:
        return int(match.group(1))
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and "Content-Encoding" not in response.headers:
        return offset + int(length)
    return None


def fetch_iso(
    release: Release,
    arch: Arch,
    *,
    mirror: str,
    cache_dir: Path,
    progress: Reporter = null_reporter,
    timeout: float = 60,
    retries: int = 5,
    retry_delay: float = 1.0,
) -> IsoInfo:
    """Download (or reuse from ``cache_dir``) the verified DVD ISO of ``release`` for ``arch``.

    A cached ISO whose record matches its size and mtime is reused without reading it, unless
    the mirror now publishes a different checksum. Without a record, a cached ISO is hashed
    once and kept if it matches. Otherwise the ISO is downloaded (resuming ``<iso>.partial``),
    verified, and moved into place.

    Raises:
        UsageError: the release has no ISO for ``arch``.
        StepFailed: ("fetch-iso") not found on the mirror, unreachable after ``retries``
            retries, or a checksum mismatch (the partial download is deleted).
    """
    _check_arch(release, arch)
    iso_name = release.iso_name(arch)
    url = release.iso_url(arch, mirror)
    checksum_url = release.iso_checksum_url(arch, mirror)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"cannot create the ISO cache {cache_dir}: {error.strerror}; "
            "choose another directory with --cache"
        ) from None
    iso = cache_dir / iso_name
    partial = _partial_path(iso)
    progress(STEP, None, f"checking {checksum_url}")
    with _session() as session:
        try:
            expected = _fetch_expected_sha256(
                session,
                checksum_url,
                iso_name,
                timeout=timeout,
                retries=retries,
                retry_delay=retry_delay,
            )
        except _ChecksumUnavailable as error:
            expected, unavailable = None, error
        else:
            unavailable = None

        cached = _read_record(iso)
        if cached and expected in (None, cached.sha256):
            if unavailable:
                logger.warning(
                    "using the cached %s unchecked against the mirror: %s", iso, unavailable
                )
            progress(STEP, 100, f"cached {iso_name}")
            return cached
        if expected is None:
            raise StepFailed(STEP, str(unavailable))
        if cached:
            logger.warning("the mirror publishes a new checksum for %s: downloading it", iso_name)
        elif iso.is_file():
            # A verified ISO whose record was lost (or an ISO copied in by hand): hash it once.
            digest, size = hash_file(iso, progress)
            if digest == expected:
                _write_record(iso, digest, checksum_url)
                return IsoInfo(iso, digest, size)
            logger.warning("%s in the cache does not match %s: downloading it", iso, checksum_url)

        digest, size = _download(
            session,
            url,
            partial,
            timeout=timeout,
            retries=retries,
            retry_delay=retry_delay,
            progress=progress,
        )
    if digest != expected:
        partial.unlink(missing_ok=True)
        raise StepFailed(
            STEP,
            f"checksum mismatch for {url}: expected {expected} (from {checksum_url}), "
            f"got {digest}; the download was deleted: run again, or try another mirror",
        )
    os.replace(partial, iso)
    _write_record(iso, digest, checksum_url)
    progress(STEP, 100, f"{iso_name} verified")
    return IsoInfo(iso, digest, size)


def iso_volume_label(path: Path) -> str | None:
    """The ISO 9660 volume identifier of ``path``, or None if it is not an ISO 9660 image."""
    try:
        with path.open("rb") as stream:
            stream.seek(_PVD_OFFSET)
            descriptor = stream.read(72)
    except OSError:
        return None
    if len(descriptor) < 72 or descriptor[1:6] != b"CD001":
        return None
    return descriptor[40:72].decode("ascii", "replace").strip() or None


def use_local_iso(
    path: Path,
    release: Release,
    arch: Arch,
    *,
    sha256: str | None = None,
    mirror: str | None = None,
    progress: Reporter = null_reporter,
    timeout: float = 30,
) -> IsoInfo:
    """Verify a local ISO given with ``--iso``: against ``sha256``, else the mirror's checksum.

    The file is read once to hash it. An openEuler volume label naming another release or
    architecture is refused before hashing.

    Raises:
        UsageError: missing file, malformed ``sha256``, no way to verify (mirror unreachable and
            no ``sha256``: the message says how to pass it), wrong ISO, or checksum mismatch.
    """
    path = path.expanduser()
    if not path.is_file():
        raise UsageError(f"--iso {path}: no such file; give the path of the downloaded DVD ISO")
    _check_arch(release, arch)
    label = iso_volume_label(path)
    wanted_label = release.iso_volume_label(arch)
    if label and label.lower().startswith("openeuler-") and label != wanted_label:
        raise UsageError(
            f"--iso {path} is the ISO of {label}, not {wanted_label}: give the "
            f"{release.iso_name(arch)} ISO, or the --release/--arch it belongs to"
        )
    if label != wanted_label:
        logger.warning("%s has volume label %r, not %r", path, label, wanted_label)
    iso_name = release.iso_name(arch)
    if sha256 is not None:
        expected = normalise_sha256(sha256)
        source = "--sha256"
    else:
        how = (
            f"pass --sha256 with the first field of {iso_name}.sha256sum from the openEuler "
            "download site"
        )
        if not mirror:
            raise UsageError(f"cannot verify {path}: no mirror to check it against; {how}")
        checksum_url = release.iso_checksum_url(arch, mirror)
        try:
            with _session() as session:
                expected = _fetch_expected_sha256(
                    session, checksum_url, iso_name, timeout=timeout, retries=1, retry_delay=1
                )
        except _ChecksumUnavailable as error:
            raise UsageError(f"cannot verify {path}: {error}; {how}") from None
        source = checksum_url
    digest, size = hash_file(path, progress)
    if digest != expected:
        raise UsageError(
            f"{path} does not match {source}: expected {expected}, got {digest}; check that "
            f"it is {iso_name} and that the download completed"
        )
    return IsoInfo(path.resolve(), digest, size)
