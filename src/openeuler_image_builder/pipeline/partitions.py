"""The format and partition table of a disk image (raw or qcow2), and filesystem probes.

Pure Python, read-only: ``detect_format`` tells raw from qcow2 (and names other virtual disk
formats), ``read_partition_table`` parses GPT (primary header, else the backup), MBR (with
logical partitions) or a bare filesystem, ``probe_filesystem`` names the filesystem in a
partition from its superblock. Mounting is in ``diskimage``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import uuid
import zlib
from pathlib import Path
from typing import Literal

from openeuler_image_builder.core.errors import UsageError

logger = logging.getLogger(__name__)

ImageFormat = Literal["raw", "qcow2"]
Scheme = Literal["gpt", "mbr", "none"]

# GPT partition type GUIDs (lowercase, canonical text form).
GPT_ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
GPT_BIOS_BOOT = "21686148-6449-6e6f-744e-656564454649"
GPT_LINUX_SWAP = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
GPT_LINUX_LVM = "e6d6d379-f507-44c2-a23c-238f2a3df928"
GPT_LINUX_RAID = "a19d880f-05fc-4d3b-a006-743f0f84911e"
# MBR partition type bytes.
MBR_EXTENDED = {0x05, 0x0F, 0x85}
MBR_ESP = 0xEF
MBR_SWAP = 0x82
MBR_LVM = 0x8E
MBR_RAID = 0xFD
MBR_GPT_PROTECTIVE = 0xEE
MAX_LOGICAL_PARTITIONS = 128

_OTHER_FORMATS = (
    (0, b"KDMV", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"QED\x00", "qed"),
    (64, b"\x7f\x10\xda\xbe", "vdi"),
    (0, b"conectix", "vpc/vhd"),  # codespell:ignore (the VHD footer cookie)
)


@dataclasses.dataclass(frozen=True)
class Partition:
    """One partition of a disk image.

    ``number`` is as the kernel names it (MBR logical partitions from 5); ``start`` and ``size``
    are in bytes; ``type`` is the GPT type GUID or the MBR type as ``0x83``; ``name`` the GPT
    partition name.
    """

    number: int
    start: int
    size: int
    type: str
    scheme: Scheme
    name: str = ""

    @property
    def role(self) -> str:
        """``esp``, ``bios-boot``, ``swap``, ``extended``, ``lvm``, ``raid`` or ``data``."""
        if self.scheme == "gpt":
            return {
                GPT_ESP: "esp",
                GPT_BIOS_BOOT: "bios-boot",
                GPT_LINUX_SWAP: "swap",
                GPT_LINUX_LVM: "lvm",
                GPT_LINUX_RAID: "raid",
            }.get(self.type, "data")
        if self.scheme == "mbr":
            code = int(self.type, 16)
            if code in MBR_EXTENDED:
                return "extended"
            return {MBR_ESP: "esp", MBR_SWAP: "swap", MBR_LVM: "lvm", MBR_RAID: "raid"}.get(
                code, "data"
            )
        return "data"


@dataclasses.dataclass(frozen=True)
class PartitionTable:
    """The partitions of an image.

    ``scheme == "none"`` means a bare filesystem: one pseudo-partition number 0 covering the
    whole image.
    """

    scheme: Scheme
    partitions: tuple[Partition, ...]
    sector_size: int = 512

    def get(self, number: int) -> Partition | None:
        """The partition with this number, if any."""
        return next((p for p in self.partitions if p.number == number), None)


def detect_format(path: Path) -> ImageFormat:
    """``qcow2`` or ``raw`` from the image's first bytes.

    Raises:
        UsageError: the file is missing, empty, or another virtual disk format.
    """
    try:
        with path.open("rb") as stream:
            head = stream.read(128)
    except FileNotFoundError:
        raise UsageError(f"disk image {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"disk image {path} is a directory: give the disk image file") from None
    except OSError as error:
        raise UsageError(f"cannot read disk image {path}: {error.strerror}") from None
    if not head:
        raise UsageError(f"disk image {path} is empty: the build did not produce a disk")
    if head.startswith(b"QFI\xfb"):
        return "qcow2"
    for offset, magic, name in _OTHER_FORMATS:
        if head[offset : offset + len(magic)] == magic:
            raise UsageError(
                f"disk image {path} is a {name} image: give a raw or qcow2 image, or convert "
                f"it with 'qemu-img convert -O raw {path} disk.raw'"
            )
    return "raw"


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw))


def read_partition_table(path: Path) -> PartitionTable:
    """Parse the partition table of a raw image.

    GPT (the primary header, else the backup), MBR (with logical partitions), or a bare
    filesystem without a table.

    Raises:
        UsageError: no partition table and no filesystem, or a table that points outside the
            image (a truncated or damaged image).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        image_size = os.fstat(fd).st_size
        if image_size == 0:
            image_size = _block_device_size(fd)
        mbr = os.pread(fd, 512, 0)
        has_signature = len(mbr) == 512 and mbr[510:512] == b"\x55\xaa"
        entries = [mbr[446 + 16 * i : 462 + 16 * i] for i in range(4)] if has_signature else []
        if any(entry[4] == MBR_GPT_PROTECTIVE for entry in entries):
            for sector_size in (512, 4096):
                table = _read_gpt(fd, sector_size, image_size)
                if table is not None:
                    return _checked(table, image_size, path)
            raise UsageError(
                f"disk image {path} has a protective MBR but no valid GPT header (primary or "
                "backup): the image is damaged"
            )
        if has_signature and _looks_like_mbr(entries):
            return _checked(_read_mbr(fd, entries, image_size), image_size, path)
        whole = Partition(0, 0, image_size, "", "none")
        if probe_filesystem(path, whole) is not None:
            return PartitionTable("none", (whole,))
        raise UsageError(
            f"disk image {path} has no partition table (GPT or MBR) and no filesystem: is it "
            "the disk Packer built?"
        )
    finally:
        os.close(fd)


def _block_device_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def _looks_like_mbr(entries: list[bytes]) -> bool:
    used = [e for e in entries if e[4] != 0]
    # A FAT boot sector also ends in 55 AA; its "entries" are boot code with random flags.
    return bool(used) and all(e[0] in (0x00, 0x80) for e in used)


def _read_gpt(fd: int, sector_size: int, image_size: int) -> PartitionTable | None:
    last_lba = image_size // sector_size - 1
    for header_lba in (1, last_lba):
        header = os.pread(fd, 92, header_lba * sector_size)
        if len(header) < 92 or header[:8] != b"EFI PART":
            continue
        header_size = struct.unpack_from("<I", header, 12)[0]
        if not 92 <= header_size <= sector_size:
            continue
        full = os.pread(fd, header_size, header_lba * sector_size)
        stored_crc = struct.unpack_from("<I", full, 16)[0]
        if zlib.crc32(full[:16] + b"\0\0\0\0" + full[20:]) & 0xFFFFFFFF != stored_crc:
            continue
        entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", full, 72)
        if entry_size < 128 or count > 4096:
            continue
        table = os.pread(fd, count * entry_size, entries_lba * sector_size)
        if zlib.crc32(table) & 0xFFFFFFFF != entries_crc:
            continue
        partitions = []
        for index in range(count):
            entry = table[index * entry_size : (index + 1) * entry_size]
            if entry[:16] == b"\0" * 16:
                continue
            first, last = struct.unpack_from("<QQ", entry, 32)
            name = entry[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
            partitions.append(
                Partition(
                    number=index + 1,
                    start=first * sector_size,
                    size=(last - first + 1) * sector_size,
                    type=_guid(entry[:16]),
                    scheme="gpt",
                    name=name,
                )
            )
        if header_lba != 1:
            logger.warning("the primary GPT header is damaged; using the backup header")
        return PartitionTable("gpt", tuple(partitions), sector_size)
    return None


def _read_mbr(fd: int, entries: list[bytes], image_size: int) -> PartitionTable:
    partitions: list[Partition] = []
    for index, entry in enumerate(entries):
        kind = entry[4]
        start, sectors = struct.unpack_from("<II", entry, 8)
        if kind == 0 or sectors == 0:
            continue
        partitions.append(Partition(index + 1, start * 512, sectors * 512, f"0x{kind:02x}", "mbr"))
        if kind in MBR_EXTENDED:
            partitions.extend(_read_logical(fd, start, image_size))
    return PartitionTable("mbr", tuple(partitions))


def _read_logical(fd: int, extended_start: int, image_size: int) -> list[Partition]:
    """Follow the chain of extended boot records (logical partitions 5, 6, ...)."""
    found: list[Partition] = []
    ebr_lba = extended_start
    seen: set[int] = set()
    while ebr_lba not in seen and len(found) < MAX_LOGICAL_PARTITIONS:
        seen.add(ebr_lba)
        if ebr_lba * 512 >= image_size:
            break
        ebr = os.pread(fd, 512, ebr_lba * 512)
        if len(ebr) < 512 or ebr[510:512] != b"\x55\xaa":
            break
        first, second = ebr[446:462], ebr[462:478]
        start, sectors = struct.unpack_from("<II", first, 8)
        if first[4] != 0 and sectors:
            found.append(
                Partition(
                    5 + len(found),
                    (ebr_lba + start) * 512,
                    sectors * 512,
                    f"0x{first[4]:02x}",
                    "mbr",
                )
            )
        next_start = struct.unpack_from("<I", second, 8)[0]
        if second[4] == 0 or next_start == 0:
            break
        ebr_lba = extended_start + next_start
    return found


def _checked(table: PartitionTable, image_size: int, path: Path) -> PartitionTable:
    for partition in table.partitions:
        if partition.role == "extended":
            continue
        if partition.start + partition.size > image_size:
            raise UsageError(
                f"partition {partition.number} of {path} ends at byte "
                f"{partition.start + partition.size}, beyond the end of the image "
                f"({image_size} bytes): the image is truncated or damaged"
            )
    return table


def probe_filesystem(path: Path, partition: Partition) -> str | None:
    """The filesystem in a partition, from its superblock (None when unknown or empty).

    ``ext4`` (any ext2/3/4), ``xfs``, ``vfat``, ``swap``, ``btrfs``, ``LVM2_member``,
    ``crypto_LUKS`` or ``linux_raid_member``.
    """
    fd = os.open(path, os.O_RDONLY)
    try:

        def at(offset: int, size: int) -> bytes:
            if offset + size > partition.size:
                return b""
            return os.pread(fd, size, partition.start + offset)

        if at(1024 + 56, 2) == b"\x53\xef":
            return "ext4"
        if at(0, 4) == b"XFSB":
            return "xfs"
        if at(0x10040, 8) == b"_BHRfS_M":
            return "btrfs"
        if at(0, 6) == b"LUKS\xba\xbe":
            return "crypto_LUKS"
        if b"LABELONE" in (at(512, 8), at(0, 8)):
            return "LVM2_member"
        if at(4096, 4) == b"\xfc\x4e\x2b\xa9" or at(0, 4) == b"\xfc\x4e\x2b\xa9":
            return "linux_raid_member"
        for page in (4096, 8192, 16384, 65536):
            if at(page - 10, 10) in (b"SWAPSPACE2", b"SWAP-SPACE"):
                return "swap"
        boot = at(0, 512)
        if boot[510:512] == b"\x55\xaa" and (boot[54:59] == b"FAT12" or boot[54:59] == b"FAT16"):
            return "vfat"
        if boot[510:512] == b"\x55\xaa" and boot[82:87] == b"FAT32":
            return "vfat"
        return None
    finally:
        os.close(fd)
