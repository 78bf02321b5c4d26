"""Typed build settings shared by the charm (Juju config) and the CLI.

Field names are the charm's config option names with dashes turned into underscores, so the
charm can load them with ``self.load_config`` and the CLI with ``Settings.from_mapping``. The MAAS
API key is not a field here: the charm reads it from a Juju secret and the CLI from the
environment, and neither passes it around in a settings object.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import pydantic

from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import UsageError

Accelerator = Literal["auto", "kvm", "tcg"]

_SIZE = re.compile(r"^\s*(\d+)\s*([MG])(?:i?B)?\s*$", re.IGNORECASE)
# RPM package names: letters, digits and ._+- ; optionally a group (@core).
_PACKAGE = re.compile(r"^@?\^?[A-Za-z0-9][A-Za-z0-9._+-]*$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_HTTP_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")
_CALENDAR_SHORTHANDS = {
    "minutely",
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "annually",
    "quarterly",
    "semiannually",
}
_CALENDAR = re.compile(r"^[A-Za-z0-9*,./:~ -]+$")

# What each option accepts, used in error messages ("use ...").
ACCEPTED_FORMS: dict[str, str] = {
    "releases": "space- or comma-separated release names or aliases, e.g. '22.03 24.03'",
    "mirror-url": "an http:// or https:// URL of an openEuler mirror's tree root",
    "include-updates": "true or false",
    "extra-packages": "space- or comma-separated RPM package names, e.g. 'vim-enhanced tmux'",
    "disk-size": "a size in GiB or MiB of at least 4G, e.g. 8G or 10240M",
    "build-memory": "a size of at least 2G, e.g. 4G or 4096M",
    "build-cpus": "a whole number from 1 to 64",
    "accelerator": "auto, kvm or tcg",
    "packer-version": "a Packer version of at least 1.11.0, e.g. 1.11.2",
    "qemu-plugin-version": "a qemu plugin version other than 1.1.2, e.g. 1.1.1",
    "maas-url": "empty, or the MAAS URL ending in /MAAS, e.g. http://10.0.0.2:5240/MAAS",
    "maas-ca-certificate": "empty, or a PEM certificate (-----BEGIN CERTIFICATE-----...)",
    "maas-name-scheme": "custom or rhel",
    "auto-upload": "true or false",
    "rebuild-schedule": (
        "empty (off) or a systemd calendar expression, e.g. weekly or 'Sun *-*-* 03:00:00'"
    ),
    "keep-images": "a whole number from 1 to 50",
}


def _split_words(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(word for word in re.split(r"[\s,]+", value) if word)
    return value


def parse_size_mib(value: Any) -> int:
    """Parse ``8G``/``8GiB``/``8192M``/``8192`` (MiB when no unit) into MiB."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if match:
        number, unit = int(match.group(1)), match.group(2).upper()
        return number * 1024 if unit == "G" else number
    if str(value).strip().isdigit():
        return int(str(value).strip())
    raise ValueError("not a size")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


class Settings(pydantic.BaseModel):
    """Everything that shapes a build, an upload and the charm's housekeeping."""

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore")

    releases: tuple[str, ...] = ()
    mirror_url: str = catalogue.DEFAULT_MIRROR
    include_updates: bool = True
    extra_packages: tuple[str, ...] = ()
    disk_size: int = 8 * 1024
    """Disk size of the install VM in MiB (the image's root filesystem size)."""
    build_memory: int = 4096
    """Memory of the install VM in MiB."""
    build_cpus: int = 2
    accelerator: Accelerator = "auto"
    packer_version: str = "1.11.2"
    qemu_plugin_version: str = "1.1.1"
    maas_url: str = ""
    maas_ca_certificate: str = ""
    maas_name_scheme: catalogue.NameScheme = "custom"
    auto_upload: bool = True
    rebuild_schedule: str = ""
    keep_images: int = 2

    @pydantic.field_validator("releases", mode="before")
    @classmethod
    def _releases(cls, value: Any) -> Any:
        names = _split_words(value)
        try:
            return tuple(r.name for r in catalogue.resolve_many(names))
        except UsageError as error:
            raise ValueError(str(error)) from None

    @pydantic.field_validator("extra_packages", mode="before")
    @classmethod
    def _extra_packages(cls, value: Any) -> Any:
        names = _split_words(value)
        for name in names:
            if not _PACKAGE.match(name):
                raise ValueError(f"{name!r} is not an RPM package name")
        return tuple(dict.fromkeys(names))

    @pydantic.field_validator("mirror_url")
    @classmethod
    def _mirror_url(cls, value: str) -> str:
        if not _HTTP_URL.match(value.strip()):
            raise ValueError("not an http(s) URL")
        return value.strip().rstrip("/") + "/"

    @pydantic.field_validator("disk_size", mode="before")
    @classmethod
    def _disk_size(cls, value: Any) -> int:
        size = parse_size_mib(value)
        if size < 4 * 1024:
            raise ValueError("smaller than 4G")
        return size

    @pydantic.field_validator("build_memory", mode="before")
    @classmethod
    def _build_memory(cls, value: Any) -> int:
        size = parse_size_mib(value)
        if size < 2 * 1024:
            raise ValueError("smaller than 2G (anaconda's GRUB fails with less)")
        return size

    @pydantic.field_validator("build_cpus")
    @classmethod
    def _build_cpus(cls, value: int) -> int:
        if not 1 <= value <= 64:
            raise ValueError("out of range")
        return value

    @pydantic.field_validator("packer_version")
    @classmethod
    def _packer_version(cls, value: str) -> str:
        value = value.strip().removeprefix("v")
        if not _VERSION.match(value) or _version_tuple(value) < (1, 11, 0):
            raise ValueError("needs a version of at least 1.11.0")
        return value

    @pydantic.field_validator("qemu_plugin_version")
    @classmethod
    def _qemu_plugin_version(cls, value: str) -> str:
        value = value.strip().removeprefix("v")
        if not _VERSION.match(value):
            raise ValueError("not a version")
        if value == "1.1.2":
            # hashicorp/packer-plugin-qemu#197: 1.1.2 halts communicator=none builds.
            raise ValueError("1.1.2 halts kickstart builds (packer-plugin-qemu#197)")
        return value

    @pydantic.field_validator("maas_url")
    @classmethod
    def _maas_url(cls, value: str) -> str:
        value = value.strip()
        if value and not _HTTP_URL.match(value):
            raise ValueError("not an http(s) URL")
        return value.rstrip("/")

    @pydantic.field_validator("maas_ca_certificate")
    @classmethod
    def _maas_ca_certificate(cls, value: str) -> str:
        value = value.strip()
        if value and "-----BEGIN CERTIFICATE-----" not in value:
            raise ValueError("not a PEM certificate")
        return value

    @pydantic.field_validator("rebuild_schedule")
    @classmethod
    def _rebuild_schedule(cls, value: str) -> str:
        value = value.strip()
        if value and value.lower() not in _CALENDAR_SHORTHANDS and not _CALENDAR.match(value):
            raise ValueError("not a systemd calendar expression")
        return value

    @pydantic.field_validator("keep_images")
    @classmethod
    def _keep_images(cls, value: int) -> int:
        if not 1 <= value <= 50:
            raise ValueError("out of range")
        return value

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Build settings from option names with dashes (Juju config) or underscores.

        Raises:
            UsageError: one line per invalid option, naming the option, the value and the
                accepted form.
        """
        data = {key.replace("-", "_"): value for key, value in values.items()}
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as error:
            raise UsageError(describe_validation_error(error, data)) from None


def describe_validation_error(
    error: pydantic.ValidationError, data: Mapping[str, Any] | None = None
) -> str:
    """Turn a validation error into ``option 'X' has invalid value 'V': use <form>`` lines."""
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        option = field.replace("_", "-")
        value = item.get("input") if data is None else data.get(field, item.get("input"))
        form = ACCEPTED_FORMS.get(option, "a valid value")
        reason = str(item.get("msg", "")).removeprefix("Value error, ")
        lines.append(f"config option {option}={value!r} is invalid ({reason}): use {form}")
    return "; ".join(lines)


# Why a build cannot run without KVM (also the charm's Blocked status), and how to fix it.
KVM_UNAVAILABLE = (
    "KVM unavailable: deploy on bare metal or a VM with nested virtualisation, "
    "or set accelerator=tcg (slow)"
)


def resolve_accelerator(accelerator: Accelerator, kvm_usable: bool) -> Literal["kvm", "tcg"]:
    """Pick the accelerator for a build: ``auto`` means KVM when usable, else refuse.

    Raises:
        UsageError: KVM is wanted (``kvm`` or ``auto``) but ``/dev/kvm`` is not usable.
    """
    if accelerator == "tcg":
        return "tcg"
    if not kvm_usable:
        raise UsageError(KVM_UNAVAILABLE)
    return "kvm"
