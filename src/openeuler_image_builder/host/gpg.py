"""Signing-key fingerprints read by GnuPG, to pin an apt repository key.

``setup-host`` downloads HashiCorp's apt signing key and must trust it only if its fingerprint is
the published one. ``gpg`` reads the key (ASCII-armored or binary) from stdin in a fresh,
private home directory that is removed afterwards, so the host's own keyrings are neither read
nor changed; only the pinned key is exported for the keyring file apt's ``Signed-By`` points
at, even if the download carried other keys.

Every problem is one error: ``UsageError`` for key data gpg does not accept as public keys and
for a missing ``gpg`` (install the ``gnupg`` package); ``StepFailed`` when gpg hangs or cannot run.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from openeuler_image_builder.core.errors import StepFailed, UsageError

STEP = "gpg"
GPG = "gpg"
GPG_PACKAGE = "gnupg"
GPG_TIMEOUT = 30.0
# A public key block with many signatures is tens of KiB; anything this big is not one.
MAX_KEY_BYTES = 1 << 20
MAX_MESSAGE_CHARS = 200
# The record types of gpg's --with-colons output (doc/DETAILS in GnuPG's sources).
_PRIMARY_RECORD = "pub"
_SUBKEY_RECORD = "sub"
_FINGERPRINT_RECORD = "fpr"  # codespell:ignore fpr
_SECRET_RECORDS = ("sec", "ssb")
_INVALID = "i"  # validity field: no valid self-signature (e.g. truncated data)


@dataclasses.dataclass(frozen=True)
class PublicKey:
    """One primary public key with its user IDs, signatures and subkeys, as gpg exports it."""

    fingerprint: str
    data: bytes

    def to_bytes(self) -> bytes:
        """The binary form apt accepts in a ``.gpg`` keyring file."""
        return self.data


def normalise_fingerprint(text: str) -> str:
    """``798A EC65 ...`` → ``798AEC65...`` (upper case, no spaces)."""
    return re.sub(r"\s+", "", text).upper()


def _run_gpg(
    home: Path, args: Sequence[str], data: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """Run gpg on ``data`` (stdin) in ``home``; never starts gpg-agent or reads gpg.conf."""
    argv = [
        GPG,
        "--batch",
        "--no-options",
        "--no-autostart",
        "--quiet",
        "--homedir",
        str(home),
        *args,
    ]
    try:
        return subprocess.run(
            argv, input=data, capture_output=True, timeout=GPG_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise UsageError(
            f"{GPG} not found: install the {GPG_PACKAGE} package (it reads the signing key)"
        ) from None
    except subprocess.TimeoutExpired:
        raise StepFailed(STEP, f"{GPG} {args[-1]} did not finish in {GPG_TIMEOUT:.0f}s") from None
    except OSError as error:
        raise StepFailed(STEP, f"cannot run {GPG} ({error.strerror})") from None


def _last_line(stderr: bytes, returncode: int) -> str:
    # gpg's messages can quote the downloaded key's own text (user IDs): printable, and short.
    lines = stderr.decode(errors="replace").strip().splitlines()
    if not lines:
        return f"exit status {returncode}"
    line = "".join(char if char.isprintable() else "?" for char in lines[-1])
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 1] + "…"


def _check_size(data: bytes) -> None:
    if not data.strip():
        raise UsageError("the key is empty: expected an OpenPGP public key block")
    if len(data) > MAX_KEY_BYTES:
        raise UsageError(
            f"the key is {len(data)} bytes, more than an OpenPGP public key block "
            f"({MAX_KEY_BYTES} at most)"
        )


def _primary_fingerprints(home: Path, data: bytes) -> list[str]:
    """The primary-key fingerprints gpg reads from ``data`` (``--show-keys``: nothing imported).

    Raises:
        UsageError: not OpenPGP key data, a secret key, or a key without a valid self-signature.
    """
    _check_size(data)
    result = _run_gpg(home, ["--with-colons", "--show-keys"], data)
    if result.returncode != 0:
        reason = _last_line(result.stderr, result.returncode)
        raise UsageError(f"the key is not an OpenPGP public key block ({reason})")
    found: list[str] = []
    invalid = False
    expect_primary = False
    for line in result.stdout.decode(errors="replace").splitlines():
        fields = line.split(":")
        if fields[0] in _SECRET_RECORDS:
            raise UsageError("the key data holds a secret key: expected only a public key")
        if fields[0] == _PRIMARY_RECORD:
            expect_primary = True
            invalid = len(fields) > 1 and fields[1] == _INVALID
        elif fields[0] == _FINGERPRINT_RECORD and expect_primary and len(fields) > 9:
            if invalid:
                raise UsageError(
                    f"key {fields[9]} has no valid self-signature: the key data is damaged"
                )
            found.append(fields[9].upper())
            expect_primary = False
        elif fields[0] == _SUBKEY_RECORD:
            expect_primary = False
    if not found:
        raise UsageError("the key data holds no OpenPGP public key")
    return found


def fingerprints(data: bytes) -> list[str]:
    """The fingerprint of every primary key in ``data`` (armored or binary), in order.

    Raises:
        UsageError: ``data`` is not OpenPGP public keys (the message says why), or gpg is
            missing.
        StepFailed: gpg did not finish in time or could not run.
    """
    with tempfile.TemporaryDirectory(prefix="gnupg-") as home:  # mkdtemp: mode 0700
        return _primary_fingerprints(Path(home), data)


def select_key(data: bytes, expected_fingerprint: str) -> PublicKey:
    """The key in ``data`` whose primary fingerprint is ``expected_fingerprint``, alone.

    Raises:
        UsageError: no key in ``data`` has that fingerprint (the message lists what was found),
            ``data`` is not OpenPGP public keys, or gpg is missing.
        StepFailed: gpg did not finish in time or could not run.
    """
    wanted = normalise_fingerprint(expected_fingerprint)
    with tempfile.TemporaryDirectory(prefix="gnupg-") as name:
        home = Path(name)
        found = _primary_fingerprints(home, data)
        if wanted not in found:
            raise UsageError(
                f"signing key fingerprint mismatch: expected {wanted}, the download holds "
                f"{', '.join(found)}; refusing to trust it (check for an intercepting proxy)"
            )
        imported = _run_gpg(home, ["--import"], data)
        exported = _run_gpg(home, ["--export", wanted])
        if imported.returncode != 0 or exported.returncode != 0 or not exported.stdout:
            failed = imported if imported.returncode != 0 else exported
            reason = _last_line(failed.stderr, failed.returncode)
            raise UsageError(f"gpg could not import and export key {wanted} ({reason})")
    return PublicKey(wanted, exported.stdout)
