"""The boot resource an upload creates: its name, architecture, title and ``base_image``.

Names follow DESIGN "MAAS naming"; the create form is ``POST boot-resources/``
(``shared/reference/maas-api.md`` section 4).
"""

from __future__ import annotations

import dataclasses
import re

from openeuler_image_builder.core.catalogue import MAAS_ARCHITECTURE, Arch, NameScheme, Release
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.maas.image_facts import ImageFacts
from openeuler_image_builder.maas.naming import canonical_name, scheme_of

FILETYPE = "tgz"


@dataclasses.dataclass(frozen=True)
class UploadTarget:
    """What the image is called in MAAS and how it is created."""

    name: str  # canonical: custom/<x> or rhel/<x>
    architecture: str  # MAAS arch/subarch
    title: str
    base_image: str | None  # only for custom/ names

    def form(self, facts: ImageFacts) -> dict[str, str]:
        """The ``POST boot-resources/`` fields: sha256 + size, never ``content``."""
        fields = {
            "name": self.name,
            "architecture": self.architecture,
            "title": self.title,
            "filetype": FILETYPE,
            "sha256": facts.sha256,
            "size": str(facts.size),
        }
        if self.base_image:
            fields["base_image"] = self.base_image
        return fields


def upload_target(
    release: Release,
    arch: Arch,
    *,
    scheme: NameScheme = "custom",
    name: str | None = None,
    title: str | None = None,
) -> UploadTarget:
    """Name, architecture, title and ``base_image`` of an upload (DESIGN "MAAS naming").

    Raises:
        UsageError: a name outside the ``custom/`` and ``rhel/`` OS names, or a name whose
            OS disagrees with ``scheme``.
    """
    if arch not in release.architectures:
        raise UsageError(f"openEuler {release.name} has no {arch} build")
    if name:
        full = canonical_name(name.strip())
        osystem, _, series = full.partition("/")
        if not series or "/" in series or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", series):
            raise UsageError(
                f"invalid MAAS image name {name!r}: use custom/<name> or rhel/<name> with "
                "letters, digits, dots, dashes and underscores"
            )
        found = scheme_of(full)
        if found is None:
            raise UsageError(
                f"invalid MAAS image name {name!r}: an openEuler image must be named "
                f"custom/<name> or rhel/<name>, not {osystem}/..."
            )
        scheme = found
    else:
        full = release.maas_name(scheme)
    return UploadTarget(
        name=full,
        architecture=MAAS_ARCHITECTURE[arch],
        title=title or release.title,
        # base_image only for custom names: MAAS forces it empty for rhel/ (section 4), and a
        # custom image without it is deployed as Ubuntu (section 8).
        base_image=release.maas_base_image if scheme == "custom" else None,
    )
