"""Whether this host can run QEMU with KVM acceleration."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

KVM_DEVICE = Path("/dev/kvm")


@dataclasses.dataclass(frozen=True)
class KvmCheck:
    """Whether ``/dev/kvm`` can be used, and if not, why."""

    usable: bool
    reason: str = ""


def check_kvm(device: Path | None = None) -> KvmCheck:
    """Check that the KVM device exists and can be opened read/write (as QEMU does)."""
    device = KVM_DEVICE if device is None else device
    if not device.exists():
        return KvmCheck(False, f"{device} does not exist")
    try:
        descriptor = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        return KvmCheck(False, f"{device} cannot be opened read/write ({error.strerror})")
    os.close(descriptor)
    return KvmCheck(True)
