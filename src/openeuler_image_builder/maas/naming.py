"""Our image names in MAAS, and reading the boot resources MAAS lists under them.

Names follow DESIGN "MAAS naming": ``custom/openeuler-...`` or ``rhel/openeuler-...``. MAAS up to
3.7 stores ``custom/`` names without the prefix, 3.8 keeps it (``shared/reference/maas-api.md``
section 8), so a stored name is matched in both forms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from openeuler_image_builder.core.catalogue import MAAS_ARCHITECTURE, Arch, NameScheme


def canonical_name(name: str) -> str:
    """``custom/<x>`` for a bare ``<x>`` (MAAS reads a bare name as custom; section 4)."""
    return name if "/" in name else f"custom/{name}"


def stored_name_variants(name: str) -> tuple[str, ...]:
    """Names MAAS may store for ``name``: up to 3.7 ``custom/`` is stripped, 3.8 keeps it."""
    name = canonical_name(name)
    if name.startswith("custom/"):
        return (name, name.removeprefix("custom/"))
    return (name,)


def scheme_of(name: str) -> NameScheme | None:
    """The naming scheme a (canonical) name belongs to, or None for other OS names."""
    osystem = canonical_name(name).split("/", 1)[0]
    if osystem == "custom":
        return "custom"
    if osystem == "rhel":
        return "rhel"
    return None


def is_our_image(name: str, scheme: NameScheme | None = None) -> bool:
    """Whether a stored boot-resource name follows our naming (``<scheme>/openeuler-...``)."""
    name = canonical_name(name)
    schemes: tuple[NameScheme, ...] = (scheme,) if scheme else ("custom", "rhel")
    return any(name.startswith(f"{s}/openeuler-") for s in schemes)


def maas_arch_of(architecture: str) -> Arch | None:
    """The openEuler architecture of a MAAS ``arch/subarch``, or None."""
    for arch, maas_arch in MAAS_ARCHITECTURE.items():
        if (
            architecture == maas_arch
            or architecture.split("/", 1)[0] == maas_arch.split("/", 1)[0]
        ):
            return arch
    return None


def matching_resources(
    resources: list[dict[str, Any]], name: str, architecture: str
) -> list[dict[str, Any]]:
    """The uploaded resources stored as ``name`` (either stored form) for ``architecture``."""
    names = stored_name_variants(name)
    return [
        item
        for item in resources
        if item.get("type") == "Uploaded"
        and item.get("name") in names
        and item.get("architecture") == architecture
    ]


# --------------------------------------------------------------------------------------------
# Boot resources read with their sets


def _version_key(version: str) -> tuple[int, ...] | tuple[int, str]:
    # Set versions are YYYYmmdd or YYYYmmdd.n (section 3). The maas CLI compares them as
    # strings, which ranks "20261127.9" above "20261127.10"; compare the numbers instead.
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1, version)


def newest_set(resource: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The newest set of a resource read with sets: ``(version, set)``, or None."""
    sets = resource.get("sets") or {}
    if not isinstance(sets, dict) or not sets:
        return None
    version = max(sets, key=_version_key)
    return version, sets[version]


def single_file(resource_set: Mapping[str, Any]) -> dict[str, Any] | None:
    """The one file of an uploaded set (``root.tgz``), or None."""
    set_files = resource_set.get("files") or {}
    if isinstance(set_files, dict) and len(set_files) == 1:
        return next(iter(set_files.values()))
    return None
