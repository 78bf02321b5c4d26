"""The catalogue of openEuler LTS releases this tool can build, and release-name resolution.

Facts come from `shared/reference/openeuler-releases.md` (release-management plans, the
openEuler portal's download data, the 2024 consolidation and the 2025 decision to extend 24.03
instead of shipping a 26.03 LTS). Innovation releases (20.09, 23.09, 25.03, ...) have a support
life of six months and are not in the catalogue.
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
import re
from collections.abc import Iterable
from typing import Literal

from openeuler_image_builder.core.errors import UsageError

Arch = Literal["x86_64", "aarch64"]
ARCHES: tuple[Arch, ...] = ("x86_64", "aarch64")

# MAAS architecture names (arch/subarch) for each openEuler architecture.
MAAS_ARCHITECTURE: dict[Arch, str] = {"x86_64": "amd64/generic", "aarch64": "arm64/generic"}

DEFAULT_MIRROR = "https://repo.openeuler.org/"

NameScheme = Literal["custom", "rhel"]


@dataclasses.dataclass(frozen=True)
class Release:
    """One openEuler LTS release or service pack.

    Attributes:
        name: exact release name as used in the mirror tree, e.g. ``22.03-LTS-SP4``.
        line: the LTS line it belongs to, e.g. ``22.03``.
        service_pack: 0 for the GA release, N for SPN.
        released: release date.
        end_of_life: the date maintenance ended or is planned to end (None: not published).
        kernel: kernel series shipped.
        cloud_init: cloud-init version shipped on the DVD, or None where it is not recorded
            (the image build probes it).
        cloud_init_needs_network_fix: True when that cloud-init cannot pick a network renderer
            for ``ID=openEuler`` (reference: curtin-and-cloud-init.md section 7); None means
            "unknown, let the in-image probe decide".
        default_user: cloud-init's default user name in the release's cloud.cfg.
        rhel_major: the RHEL major version used as MAAS ``base_image`` (rhel/N) and as the
            ``%rhel`` macro value curtin's BIOS path needs.
        kickstart_version: pykickstart handler version matching the release's anaconda.
        architectures: architectures with a DVD ISO.
    """

    name: str
    line: str
    service_pack: int
    released: datetime.date
    end_of_life: datetime.date | None
    kernel: str
    cloud_init: str | None
    cloud_init_needs_network_fix: bool | None
    default_user: str
    rhel_major: int
    kickstart_version: str
    architectures: tuple[Arch, ...] = ARCHES

    @property
    def title(self) -> str:
        """Human title, e.g. ``openEuler 22.03 LTS SP4``."""
        return "openEuler " + self.name.replace("-", " ")

    @property
    def slug(self) -> str:
        """Lowercase name used in MAAS names and unit names, e.g. ``22.03-lts-sp4``."""
        return self.name.lower()

    def is_end_of_life(self, today: datetime.date | None = None) -> bool:
        """Whether maintenance has ended by ``today`` (default: the current date)."""
        today = today or datetime.date.today()
        return self.end_of_life is not None and self.end_of_life < today

    def iso_name(self, arch: Arch) -> str:
        """File name of the offline standard (DVD) ISO for ``arch``."""
        return f"openEuler-{self.name}-{arch}-dvd.iso"

    def iso_url(self, arch: Arch, mirror: str = DEFAULT_MIRROR) -> str:
        """URL of the DVD ISO on ``mirror`` (a mirror's tree root, with or without slash)."""
        return f"{mirror.rstrip('/')}/openEuler-{self.name}/ISO/{arch}/{self.iso_name(arch)}"

    def iso_checksum_url(self, arch: Arch, mirror: str = DEFAULT_MIRROR) -> str:
        """URL of the published ``.sha256sum`` file beside the ISO."""
        return self.iso_url(arch, mirror) + ".sha256sum"

    def iso_volume_label(self, arch: Arch) -> str:
        """Volume label of the DVD ISO, e.g. ``openEuler-24.03-LTS-SP2-x86_64``."""
        return f"openEuler-{self.name}-{arch}"

    def os_repo_url(self, arch: Arch, mirror: str = DEFAULT_MIRROR) -> str:
        """URL of the release's OS repository (equal to the DVD)."""
        return f"{mirror.rstrip('/')}/openEuler-{self.name}/OS/{arch}/"

    def update_repo_url(self, arch: Arch, mirror: str = DEFAULT_MIRROR) -> str:
        """URL of the release's rolling update repository."""
        return f"{mirror.rstrip('/')}/openEuler-{self.name}/update/{arch}/"

    def image_basename(self, arch: Arch) -> str:
        """Base name of the image files: ``openeuler-<release>-<arch>``."""
        return f"openeuler-{self.name}-{arch}"

    def maas_name(self, scheme: NameScheme = "custom") -> str:
        """The boot-resource name in MAAS for this release.

        ``custom`` (default): ``custom/openeuler-<release lowercased>``, uploaded with
        ``base_image=rhel/<N>``. ``rhel``: ``rhel/openeuler-<release lowercased>``, unique per
        release so it never collides with a real RHEL image (maas-api.md section 8).
        """
        return f"{scheme}/openeuler-{self.slug}"

    @property
    def maas_base_image(self) -> str:
        """``base_image`` sent with custom names (maas-api.md section 4)."""
        return f"rhel/{self.rhel_major}"

    def to_json(self, today: datetime.date | None = None) -> dict[str, object]:
        """A JSON-serialisable description, as printed by ``releases --json``."""
        return {
            "name": self.name,
            "title": self.title,
            "line": self.line,
            "service_pack": self.service_pack,
            "released": self.released.isoformat(),
            "end_of_life": self.end_of_life.isoformat() if self.end_of_life else None,
            "eol": self.is_end_of_life(today),
            "kernel": self.kernel,
            "cloud_init": self.cloud_init,
            "cloud_init_needs_network_fix": self.cloud_init_needs_network_fix,
            "default_user": self.default_user,
            "rhel_major": self.rhel_major,
            "maas_base_image": self.maas_base_image,
            "kickstart_version": self.kickstart_version,
            "architectures": list(self.architectures),
            "aliases": aliases_of(self),
            "iso": {arch: self.iso_name(arch) for arch in self.architectures},
        }


def _d(text: str) -> datetime.date:
    return datetime.date.fromisoformat(text)


def _release(
    name: str,
    released: str,
    end_of_life: str | None,
    kernel: str,
) -> Release:
    line = name[:5]
    match = re.search(r"-SP(\d+)$", name)
    service_pack = int(match.group(1)) if match else 0
    if line == "20.03":
        # anaconda 33.19 parses with pykickstart's DEVEL handler: F33 in the 3.27 it ships.
        cloud_init, needs_fix, user, rhel, ks = "19.4", True, "openEuler", 8, "F33"
    elif line == "22.03":
        # 22.03 GA ships anaconda 33.19, which parses with pykickstart's DEVEL handler: F35 in
        # the pykickstart 3.34 it ships. SP1 onwards ship anaconda 36.16.5, pinned to F36.
        cloud_init, needs_fix, user, rhel = "21.4", True, "openeuler", 8
        ks = "F35" if service_pack == 0 else "F36"
    else:
        # 24.03 GA ships cloud-init 23.4.1; the SPs take it from 24.03-LTS-Next (not recorded).
        cloud_init = "23.4.1" if service_pack == 0 else None
        needs_fix = False if service_pack == 0 else None
        user, rhel, ks = "openeuler", 9, "F36"
    return Release(
        name=name,
        line=line,
        service_pack=service_pack,
        released=_d(released),
        end_of_life=_d(end_of_life) if end_of_life else None,
        kernel=kernel,
        cloud_init=cloud_init,
        cloud_init_needs_network_fix=needs_fix,
        default_user=user,
        rhel_major=rhel,
        kickstart_version=ks,
    )


# End-of-life dates: the planned EOL from the portal, replaced by the date maintenance actually
# stopped where the 2024 consolidation or a later decision overrode it (openeuler-releases.md 2.1).
RELEASES: tuple[Release, ...] = (
    _release("20.03-LTS", "2020-03-27", "2021-03-31", "4.19.90"),
    _release("20.03-LTS-SP1", "2020-12-21", "2024-05-30", "4.19.90"),
    _release("20.03-LTS-SP2", "2021-06-30", "2022-04-30", "4.19.90"),
    _release("20.03-LTS-SP3", "2021-12-30", "2024-05-30", "4.19.90"),
    _release("20.03-LTS-SP4", "2023-11-28", "2025-11-30", "4.19.90"),
    _release("22.03-LTS", "2022-03-30", "2024-05-30", "5.10.0"),
    _release("22.03-LTS-SP1", "2022-12-30", "2025-01-31", "5.10.0-136"),
    _release("22.03-LTS-SP2", "2023-06-30", "2024-05-30", "5.10.0-153"),
    _release("22.03-LTS-SP3", "2023-12-30", "2025-12-31", "5.10.0-182"),
    _release("22.03-LTS-SP4", "2024-06-29", "2026-06-30", "5.10.0-216"),
    _release("24.03-LTS", "2024-06-06", "2026-05-31", "6.6.0"),
    _release("24.03-LTS-SP1", "2024-12-31", "2026-12-31", "6.6.0-72"),
    _release("24.03-LTS-SP2", "2025-06-30", "2026-03-31", "6.6.0"),
    _release("24.03-LTS-SP3", "2025-12-31", "2027-12-31", "6.6.0"),
    _release("24.03-LTS-SP4", "2026-06-30", None, "6.6.0"),
)

_BY_NAME = {r.name.lower(): r for r in RELEASES}
LINES: tuple[str, ...] = tuple(dict.fromkeys(r.line for r in RELEASES))


def newest_of_line(line: str) -> Release:
    """The newest service pack of an LTS line (e.g. ``22.03`` -> ``22.03-LTS-SP4``)."""
    candidates = [r for r in RELEASES if r.line == line]
    if not candidates:
        raise UsageError(f"unknown openEuler LTS line {line!r}; known: {', '.join(LINES)}")
    return max(candidates, key=lambda r: r.service_pack)


def aliases_of(release: Release) -> list[str]:
    """Short names that resolve to ``release`` (besides its exact name)."""
    aliases = []
    if newest_of_line(release.line) is release:
        aliases.append(release.line)
    if release.service_pack == 0:
        aliases.append(f"{release.line}-LTS")
    return [a for a in aliases if a != release.name]


def _normalise(text: str) -> str:
    # Accept "22.03 LTS SP4", "22.03_lts_sp4", "openEuler-22.03-LTS-SP4" and mixed case.
    cleaned = re.sub(r"[\s_]+", "-", text.strip()).lower()
    return cleaned.removeprefix("openeuler-")


def resolve(text: str) -> Release:
    """Resolve an exact release name or an alias to a catalogue release.

    ``22.03`` is the newest service pack of 22.03 LTS; ``24.03-LTS`` is the GA release;
    ``22.03-SP4`` is accepted for ``22.03-LTS-SP4``. Names are case-insensitive.

    Raises:
        UsageError: the name matches no release; the message lists the valid names.
    """
    key = _normalise(text)
    if key in _BY_NAME:
        return _BY_NAME[key]
    if key in LINES:
        return newest_of_line(key)
    match = re.fullmatch(r"(\d\d\.\d\d)-(?:lts-)?sp(\d+)", key)
    if match and f"{match.group(1)}-lts-sp{match.group(2)}" in _BY_NAME:
        return _BY_NAME[f"{match.group(1)}-lts-sp{match.group(2)}"]
    valid = ", ".join(r.name for r in RELEASES)
    raise UsageError(
        f"unknown openEuler release {text!r}: use one of {valid}, "
        f"or an LTS line ({', '.join(LINES)}) for its newest service pack"
    )


def resolve_arch(text: str) -> Arch:
    """Validate an architecture name; accepts the MAAS/Debian names amd64 and arm64 too."""
    key = text.strip().lower()
    key = {"amd64": "x86_64", "arm64": "aarch64", "x86-64": "x86_64"}.get(key, key)
    for arch in ARCHES:
        if key == arch:
            return arch
    raise UsageError(f"unknown architecture {text!r}: use x86_64 or aarch64")


def host_arch() -> Arch:
    """The architecture of this machine, as an openEuler architecture name."""
    return resolve_arch(platform.machine())


def resolve_many(texts: Iterable[str]) -> list[Release]:
    """Resolve several names, dropping duplicates while keeping order."""
    seen: dict[str, Release] = {}
    for text in texts:
        release = resolve(text)
        seen.setdefault(release.name, release)
    return list(seen.values())
