"""Process and environment helpers; the harness replaces the ones that touch the host."""

import os

from curtin import paths


class ProcessExecutionError(Exception):
    """A command failed."""


def load_command_environment(env=os.environ, strict=False):
    """The curtin state from the environment, as curtin passes it to hooks."""
    mapping = {
        "scratch": "WORKING_DIR",
        "fstab": "OUTPUT_FSTAB",
        "interfaces": "OUTPUT_INTERFACES",
        "config": "CONFIG",
        "target": "TARGET_MOUNT_POINT",
        "network_state": "OUTPUT_NETWORK_STATE",
        "network_config": "OUTPUT_NETWORK_CONFIG",
        "report_stack_prefix": "CURTIN_REPORTSTACK",
    }
    if strict:
        missing = [name for name in mapping.values() if name not in env]
        if missing:
            raise KeyError(f"missing environment vars: {missing}")
    return {key: env.get(name) for key, name in mapping.items()}


def subp(args, capture=False, target=None, **kwargs) -> "tuple[str, str]":
    """Run a command (the stand-in never does: the harness replaces this)."""
    raise ProcessExecutionError(f"stand-in curtin does not run commands: {args}")


def do_mount(src, target, opts=None):
    """Bind-mount (replaced by the harness)."""
    raise ProcessExecutionError("stand-in curtin does not mount")


def is_uefi_bootable():
    """Whether this machine booted with UEFI."""
    return os.path.exists("/sys/firmware/efi")


def write_file(filename, content, mode=0o644, omode="w"):
    """Write ``content`` to ``filename`` (creating directories)."""
    os.makedirs(os.path.dirname(filename), exist_ok=True)
    with open(filename, omode) as stream:
        stream.write(content)
    os.chmod(filename, mode)


class ChrootableTarget:
    """Run commands in ``target`` (bind mounts go through ``do_mount``)."""

    def __init__(self, target, allow_daemons=False):
        self.target = paths.target_path(target)

    def __enter__(self):
        for mount in ("/dev", "/proc", "/sys"):
            do_mount(mount, paths.target_path(self.target, mount), opts="--bind")
        return self

    def __exit__(self, *exc):
        return False

    def subp(self, *args, **kwargs):
        kwargs["target"] = self.target
        return subp(*args, **kwargs)
