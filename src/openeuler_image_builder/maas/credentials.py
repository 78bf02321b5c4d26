"""The MAAS API key and URL: parsing the key, reading it from a file or the environment.

The API key never reaches a log record, an exception message, a ``repr`` or a process's
arguments. Packer (and the QEMU it starts) gets an environment without it; background jobs get
the name of a root-only key file, never the key. A standalone run given ``MAAS_API_KEY`` leaves
it in its own environment, which its helpers (tar, pigz) inherit: readable only by the same
user, as the variable already was; ``MAAS_API_KEY_FILE`` avoids even that.

Sections in brackets refer to ``shared/reference/maas-api.md``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from openeuler_image_builder.core.errors import UsageError

API_KEY_ENV = "MAAS_API_KEY"
API_KEY_FILE_ENV = "MAAS_API_KEY_FILE"
MAAS_URL_ENV = "MAAS_URL"


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """A MAAS API key ``consumer_key:token_key:token_secret`` (section 1)."""

    consumer_key: str
    token_key: str
    token_secret: str = dataclasses.field(repr=False)

    def __repr__(self) -> str:
        return f"ApiKey(consumer_key={self.consumer_key!r}, token_key=..., token_secret=...)"

    @classmethod
    def parse(cls, text: str) -> ApiKey:
        """Split a key; the error message never contains the key itself."""
        parts = text.strip().split(":")
        if len(parts) != 3 or not all(parts):
            raise UsageError(
                f"the MAAS API key must be consumer_key:token_key:token_secret (three non-empty "
                f"fields separated by colons; this one has {len(parts)} field(s)): "
                "copy the whole line printed by `maas apikey --username ADMIN`"
            )
        if any(re.search(r"\s", part) for part in parts):
            raise UsageError(
                "the MAAS API key contains white space inside it: copy the whole line printed "
                "by `maas apikey --username ADMIN`"
            )
        return cls(parts[0], parts[1], parts[2])


def read_api_key_file(path: Path) -> str:
    """Read a key file, refusing one that other users could read or change.

    Raises:
        UsageError: missing, unreadable, group/other-accessible, owned by another user, or not
            exactly one key.
    """
    try:
        info = path.stat()
    except OSError as error:
        raise UsageError(
            f"cannot read the MAAS API key file {path}: {error.strerror}: "
            f"check {API_KEY_FILE_ENV} or --api-key-file"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"the MAAS API key file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise UsageError(
            f"the MAAS API key file {path} is accessible to other users "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): run `chmod 600 {path}`"
        )
    if info.st_uid not in (0, os.geteuid()):
        raise UsageError(
            f"the MAAS API key file {path} belongs to another user (uid {info.st_uid}): "
            "it must be owned by you or root"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read the MAAS API key file {path}: {error}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise UsageError(
            f"the MAAS API key file {path} must hold exactly one key on one line "
            f"(it holds {len(lines)} non-empty lines)"
        )
    return lines[0]


def api_key_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """The API key from ``MAAS_API_KEY``, else from the file named by ``MAAS_API_KEY_FILE``.

    Returns None when neither is set. The file must be readable by its owner only.
    """
    env = os.environ if environ is None else environ
    key = env.get(API_KEY_ENV, "").strip()
    if key:
        return key
    key_file = env.get(API_KEY_FILE_ENV, "").strip()
    if key_file:
        return read_api_key_file(Path(key_file))
    return None


def connection_settings(
    *,
    url: str | None = None,
    key: str | None = None,
    key_file: Path | None = None,
    default_url: str = "",
    environ: Mapping[str, str] | None = None,
) -> tuple[str, str | None]:
    """The MAAS URL and API key to use: given values, else the environment, else defaults.

    URL: ``url``, ``MAAS_URL``, ``default_url`` (the settings' ``maas-url``). Key: ``key``, the
    file ``key_file``, then :func:`api_key_from_environment`. ``""``/None when missing; the
    caller says which of its options to set.

    Raises:
        UsageError: a key file readable by others, or not a key.
    """
    env = os.environ if environ is None else environ
    found_url = url or env.get(MAAS_URL_ENV, "").strip() or default_url
    if key:
        return found_url, key
    if key_file is not None:
        return found_url, read_api_key_file(key_file)
    return found_url, api_key_from_environment(env)
