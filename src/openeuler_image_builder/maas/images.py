"""Our images in MAAS: listing them with the state of their newest set, and deleting one.

Only uploaded boot resources with our names are considered, never synced Ubuntu images
(``shared/reference/maas-api.md`` sections 3 and 8).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from openeuler_image_builder.core.catalogue import MAAS_ARCHITECTURE, Arch, NameScheme
from openeuler_image_builder.maas.client import MaasClient
from openeuler_image_builder.maas.naming import (
    canonical_name,
    is_our_image,
    maas_arch_of,
    matching_resources,
    newest_set,
    single_file,
)


@dataclasses.dataclass(frozen=True)
class MaasImage:
    """One of our images in MAAS, described by its newest set."""

    resource_id: int
    name: str  # canonical (custom/ prefix restored on MAAS <= 3.7)
    stored_name: str
    architecture: str
    arch: Arch | None
    title: str
    base_image: str | None
    state: str  # complete | incomplete | empty
    progress: float | None  # percentage across regions while incomplete
    size: int | None
    sha256: str | None
    set_version: str | None

    def to_json(self) -> dict[str, object]:
        """JSON-serialisable form (``maas-list --json``)."""
        return dataclasses.asdict(self)


def _image_from_resource(resource: Mapping[str, Any]) -> MaasImage:
    found = newest_set(resource)
    rfile = single_file(found[1]) if found else None
    if not found or not rfile:
        state, percent = "empty", None
    elif found[1].get("complete"):
        state, percent = "complete", None
    else:
        state, percent = "incomplete", float(found[1].get("progress") or 0.0)
    stored = str(resource.get("name", ""))
    architecture = str(resource.get("architecture", ""))
    return MaasImage(
        resource_id=int(resource.get("id", 0)),
        name=canonical_name(stored),
        stored_name=stored,
        architecture=architecture,
        arch=maas_arch_of(architecture),
        title=str(resource.get("title", "")),
        base_image=resource.get("base_image") or None,
        state=state,
        progress=percent,
        size=int(rfile["size"]) if rfile and "size" in rfile else None,
        sha256=rfile.get("sha256") if rfile else None,
        set_version=found[0] if found else None,
    )


def list_images(client: MaasClient, scheme: NameScheme | None = None) -> list[MaasImage]:
    """Our uploaded images (names ``custom/openeuler-*``, ``rhel/openeuler-*``), by name."""
    images = []
    for item in client.boot_resources("uploaded", step="maas-list"):
        if item.get("type") != "Uploaded" or not is_our_image(str(item.get("name", "")), scheme):
            continue
        resource = client.boot_resource(int(item["id"]), step="maas-list")
        if resource is not None:
            images.append(_image_from_resource(resource))
    return sorted(images, key=lambda image: (image.name, image.architecture))


def delete_image(client: MaasClient, name: str, arch: Arch) -> bool:
    """Delete the uploaded boot resource ``name`` for ``arch``; False when there is none.

    ``name`` may be given with or without ``custom/``; both stored forms match (section 8).
    Only uploaded resources are considered, never synced Ubuntu images.
    """
    architecture = MAAS_ARCHITECTURE[arch]
    listed = client.boot_resources("uploaded", step="maas-delete")
    deleted = False
    for item in matching_resources(listed, name, architecture):
        deleted |= client.delete_boot_resource(int(item["id"]), step="maas-delete")
    return deleted
