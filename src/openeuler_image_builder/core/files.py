"""File helpers every stage shares: atomic writes, and hashing a file once.

Atomic writes: a synced temporary file beside the target, then ``os.replace``.

A reader (another process, or this one after a crash) sees either the old file or the whole
new one, never a partial write. The temporary file is created 0600 by ``mkstemp`` and only
given its final mode once written, so a private file (the MAAS key, a job's environment) is
never readable by others, not even for a moment. Parent directories are not created: a caller
that may write into a missing directory creates it (so a deleted image directory is never
brought back by a late write).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

PUBLIC = 0o644
PRIVATE = 0o600
HASH_BLOCK = 1024 * 1024


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int = PUBLIC) -> Iterator[IO[bytes]]:
    """A binary stream whose content replaces ``path`` when the block ends without error.

    On an error (or an interruption) the temporary file is removed and ``path`` is untouched.
    """
    with staged_file(path) as (stream, temporary):
        yield stream
        finish(stream, mode)
        os.replace(temporary, path)


@contextlib.contextmanager
def staged_file(
    path: Path, *, prefix: str | None = None, suffix: str = ".tmp"
) -> Iterator[tuple[IO[bytes], Path]]:
    """A temporary file beside ``path``, as ``(stream, temporary path)``, renamed by the caller.

    For a caller that renames it itself (e.g. two files renamed one after the other once both
    are complete): write, call :func:`finish`, rename. Removed on exit unless renamed. Named
    ``<prefix><random><suffix>``; ``prefix`` defaults to ``.<name of path>.``.
    """
    if prefix is None:
        prefix = f".{path.name}."
    descriptor, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            yield stream, temporary
    finally:
        temporary.unlink(missing_ok=True)


def finish(stream: IO[bytes], mode: int = PUBLIC) -> None:
    """Flush and sync a :func:`staged_file` stream and give it its final mode."""
    stream.flush()
    os.fsync(stream.fileno())
    os.fchmod(stream.fileno(), mode)


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def write_atomic(path: Path, data: str | bytes, *, mode: int = PUBLIC) -> None:
    """Replace ``path`` with ``data`` (text is UTF-8) atomically, synced, with ``mode``."""
    with atomic_writer(path, mode=mode) as stream:
        stream.write(_as_bytes(data))


def json_text(data: Mapping[str, Any] | list[Any], *, indent: int = 2) -> str:
    """The JSON form the project writes: sorted keys, ``indent``, a final newline."""
    return json.dumps(data, indent=indent, sort_keys=True, default=str) + "\n"


def write_json_atomic(
    path: Path, data: Mapping[str, Any], *, mode: int = PUBLIC, indent: int = 2
) -> None:
    """Replace ``path`` with ``data`` as JSON (see :func:`json_text`) atomically."""
    write_atomic(path, json_text(data, indent=indent), mode=mode)


def write_if_changed(path: Path, data: str | bytes, *, mode: int = PUBLIC) -> bool:
    """Write ``data`` atomically unless ``path`` already holds it with ``mode``.

    Returns:
        Whether the file was (re)written.
    """
    content = _as_bytes(data)
    with contextlib.suppress(OSError):
        if path.read_bytes() == content and (path.stat().st_mode & 0o7777) == mode:
            return False
    write_atomic(path, content, mode=mode)
    return True


def hash_file(
    path: Path,
    *,
    block_size: int = HASH_BLOCK,
    report: Callable[[int, int], None] | None = None,
) -> tuple[str, int]:
    """The sha256 (hex) and size of a file, read once in ``block_size`` blocks.

    ``report(done, total)`` is called after each block (e.g. a ``progress.ByteProgress``).
    """
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    view = memoryview(bytearray(block_size))
    with path.open("rb", buffering=0) as stream:
        while count := stream.readinto(view):
            digest.update(view[:count])
            done += count
            if report is not None:
                report(done, total)
    return digest.hexdigest(), done
