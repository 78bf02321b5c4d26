"""Just enough OpenPGP (RFC 4880 / RFC 9580) to pin an apt repository key by fingerprint.

``setup-host`` downloads HashiCorp's apt signing key and must trust it only if its fingerprint is
the published one. Parsing the key here (instead of shelling out to ``gpg``) needs no GnuPG home
directory, works the same in tests, and lets us keep *only* the pinned key in the keyring file
that apt's ``Signed-By`` points at, even if the download carried other keys.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re

from openeuler_image_builder.core.errors import UsageError

_ARMOR_BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
_ARMOR_END = "-----END PGP PUBLIC KEY BLOCK-----"
TAG_PUBLIC_KEY = 6
TAG_PUBLIC_SUBKEY = 14


@dataclasses.dataclass(frozen=True)
class Packet:
    """One OpenPGP packet: its tag, body, and the exact bytes it occupied (header included)."""

    tag: int
    body: bytes
    raw: bytes


@dataclasses.dataclass(frozen=True)
class TransferableKey:
    """A primary public key with the packets that follow it (user IDs, signatures, subkeys)."""

    fingerprint: str
    packets: tuple[Packet, ...]

    def to_bytes(self) -> bytes:
        """The binary ("dearmored") form apt accepts in a ``.gpg`` keyring file."""
        return b"".join(packet.raw for packet in self.packets)


def normalise_fingerprint(text: str) -> str:
    """``798A EC65 ...`` → ``798AEC65...`` (upper case, no spaces)."""
    return re.sub(r"\s+", "", text).upper()


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def dearmor(data: bytes) -> bytes:
    """Binary packets from an ASCII-armored public key block (or ``data`` if already binary).

    Raises:
        UsageError: no armored key block, bad base64, or a wrong CRC-24 checksum.
    """
    if data[:1] and data[0] & 0x80:
        return data  # binary packets already (the first octet of a packet has bit 7 set)
    text = data.decode("ascii", errors="replace")
    start, end = text.find(_ARMOR_BEGIN), text.find(_ARMOR_END)
    if start < 0 or end < start:
        raise UsageError("the downloaded key is not an OpenPGP public key block")
    checksum = None
    body_lines: list[str] = []
    for line in (line.strip() for line in text[start + len(_ARMOR_BEGIN) : end].splitlines()):
        # Armor headers ("Version: ...") precede the data; base64 never contains ':'.
        if not line or (":" in line and not body_lines):
            continue
        if line.startswith("=") and len(line) == 5:
            checksum = line[1:]
        else:
            body_lines.append(line)
    try:
        binary = base64.b64decode("".join(body_lines), validate=True)
        expected = None if checksum is None else base64.b64decode(checksum, validate=True)
    except ValueError as error:
        raise UsageError(f"the downloaded key's armor is not valid base64 ({error})") from None
    if expected is not None and _crc24(binary) != int.from_bytes(expected, "big"):
        raise UsageError("the downloaded key's armor checksum (CRC-24) does not match")
    return binary


def parse_packets(binary: bytes) -> list[Packet]:
    """Split binary OpenPGP data into packets (old and new header formats).

    Raises:
        UsageError: truncated data or a packet form that keys never use (partial lengths).
    """
    packets = []
    offset = 0
    while offset < len(binary):
        start = offset
        first = binary[offset]
        offset += 1
        if not first & 0x80:
            raise UsageError("the key data is not OpenPGP (bad packet header)")
        if first & 0x40:  # new format
            tag = first & 0x3F
            if offset >= len(binary):
                raise UsageError("the key data is truncated")
            octet = binary[offset]
            if octet < 192:
                length, offset = octet, offset + 1
            elif octet < 224:
                if offset + 1 >= len(binary):
                    raise UsageError("the key data is truncated")
                length = ((octet - 192) << 8) + binary[offset + 1] + 192
                offset += 2
            elif octet == 255:
                length = int.from_bytes(binary[offset + 1 : offset + 5], "big")
                offset += 5
            else:
                raise UsageError("the key data uses partial body lengths, which keys never do")
        else:  # old format
            tag = (first >> 2) & 0x0F
            length_type = first & 0x03
            if length_type == 3:
                raise UsageError("the key data uses an indeterminate packet length")
            size = (1, 2, 4)[length_type]
            length = int.from_bytes(binary[offset : offset + size], "big")
            offset += size
        if offset + length > len(binary):
            raise UsageError("the key data is truncated")
        packets.append(
            Packet(tag, binary[offset : offset + length], binary[start : offset + length])
        )
        offset += length
    return packets


def fingerprint(key_packet_body: bytes) -> str:
    """The fingerprint of a public-key packet body: v4 (SHA-1) or v6 (SHA-256).

    Raises:
        UsageError: a key version this parser does not know (v3, v5).
    """
    version = key_packet_body[:1]
    if version == b"\x04":
        digest = hashlib.sha1(  # noqa: S324 - the v4 fingerprint is defined as SHA-1
            b"\x99" + len(key_packet_body).to_bytes(2, "big") + key_packet_body
        )
    elif version == b"\x06":
        digest = hashlib.sha256(
            b"\x9b" + len(key_packet_body).to_bytes(4, "big") + key_packet_body
        )
    else:
        raise UsageError(f"unsupported OpenPGP key version {version.hex() or 'none'}")
    return digest.hexdigest().upper()


def transferable_keys(data: bytes) -> list[TransferableKey]:
    """Every primary key in ``data`` (armored or binary), with its fingerprint and packets."""
    keys: list[TransferableKey] = []
    current: list[Packet] = []
    for packet in parse_packets(dearmor(data)):
        if packet.tag == TAG_PUBLIC_KEY:
            if current:
                keys.append(TransferableKey(fingerprint(current[0].body), tuple(current)))
            current = [packet]
        elif current:
            current.append(packet)
        else:
            raise UsageError("the key data does not start with a public key")
    if current:
        keys.append(TransferableKey(fingerprint(current[0].body), tuple(current)))
    return keys


def select_key(data: bytes, expected_fingerprint: str) -> TransferableKey:
    """The key in ``data`` whose primary fingerprint is ``expected_fingerprint``.

    Raises:
        UsageError: no key in ``data`` has that fingerprint (the message lists what was found).
    """
    wanted = normalise_fingerprint(expected_fingerprint)
    keys = transferable_keys(data)
    for key in keys:
        if key.fingerprint == wanted:
            return key
    found = ", ".join(key.fingerprint for key in keys) or "no key"
    raise UsageError(
        f"signing key fingerprint mismatch: expected {wanted}, the download holds {found}; "
        "refusing to trust it (check for an intercepting proxy)"
    )
