"""Sharing the work between the units of one application, over the ``builders`` peer relation.

Assignment: the leader maps every configured ``release/arch`` key to one unit by rendezvous
(highest-random-weight) hashing: each (key, unit) pair gets a weight from sha256, and the key goes
to the unit with the highest weight among the units that can build that architecture. A unit
that joins takes only the keys for which it now has the highest weight (about 1/n of them); a
unit that leaves gives away only its own keys; nothing else moves. sha256, unlike ``hash()``, is
the same in every Python process, so every unit computes the same answer.

Inventory: every unit publishes the images it holds; :func:`merge_inventories` turns the
reports into one application-wide list (one entry per release and arch: the newest image, and
which units hold it).

Peer databags hold strings only, so everything here is a dataclass with ``to_json()`` and
``from_json()`` producing and reading one JSON string.

Databag keys:
- application databag (written by the leader): ``assignments`` = :class:`Assignments`.
- each unit's databag: ``builder`` = :class:`UnitReport` (arch, whether it can build, images).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.timestamps import parse_utc_or_none
from openeuler_image_builder.unit.inventory import LocalImage

PEER_RELATION = "builders"
ASSIGNMENTS_KEY = "assignments"
UNIT_REPORT_KEY = "builder"
SCHEMA = 1


class PeerDataError(ValueError):
    """A peer databag value is not what this version writes (bad JSON or wrong shape)."""


def work_key(release: str, arch: str) -> str:
    """The assignment key of one release on one architecture: ``24.03-LTS-SP2/x86_64``."""
    return f"{release}/{arch}"


def split_work_key(key: str) -> tuple[str, str]:
    """``(release, arch)`` of a work key."""
    release, _, arch = key.rpartition("/")
    return release, arch


def weight(key: str, unit_name: str) -> int:
    """The rendezvous weight of ``unit_name`` for ``key``: the first 8 bytes of sha256."""
    digest = hashlib.sha256(f"{key}\0{unit_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def owner(key: str, unit_names: Iterable[str]) -> str | None:
    """The unit with the highest weight for ``key`` (ties broken by name), None without units."""
    best: tuple[int, str] | None = None
    for unit_name in unit_names:
        candidate = (weight(key, unit_name), unit_name)
        if best is None or candidate > best:
            best = candidate
    return best[1] if best else None


def assign(keys: Iterable[str], unit_names: Iterable[str]) -> dict[str, str]:
    """Map every key to its owner among ``unit_names`` (empty when there is no unit)."""
    units = sorted(set(unit_names))
    if not units:
        return {}
    result: dict[str, str] = {}
    for key in keys:
        chosen = owner(key, units)
        if chosen is not None:
            result[key] = chosen
    return result


def _dumps(data: Mapping[str, Any]) -> str:
    # Compact, sorted and stamped with the schema: an unchanged value is the same string.
    return json.dumps({"schema": SCHEMA, **data}, sort_keys=True, separators=(",", ":"))


def _loads(text: str | None, what: str) -> dict[str, Any]:
    if not text:
        raise PeerDataError(f"{what}: empty")
    try:
        data = json.loads(text)
    except ValueError as error:
        raise PeerDataError(f"{what}: not JSON ({error})") from None
    if not isinstance(data, dict):
        raise PeerDataError(f"{what}: not a JSON object")
    return data


@dataclasses.dataclass(frozen=True)
class PublishedImage:
    """One image as a unit publishes it (no package list: databags stay small)."""

    release: str
    arch: str
    sha256: str
    size: int
    built_at: str | None
    uploaded: bool
    packages_digest: str | None = None

    @classmethod
    def from_local(cls, image: LocalImage) -> PublishedImage:
        """The published form of a local image."""
        return cls(
            release=image.release,
            arch=image.arch,
            sha256=image.sha256,
            size=image.size,
            built_at=image.built_at,
            uploaded=image.uploaded,
            packages_digest=image.packages_digest,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PublishedImage:
        """Read a dict written by :meth:`to_dict`; unknown keys are ignored."""
        try:
            return cls(
                release=str(data["release"]),
                arch=str(data["arch"]),
                sha256=str(data["sha256"]),
                size=int(data["size"]),
                built_at=str(data["built_at"]) if data.get("built_at") else None,
                uploaded=bool(data.get("uploaded", False)),
                packages_digest=(
                    str(data["packages_digest"]) if data.get("packages_digest") else None
                ),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise PeerDataError(f"published image: bad or missing field ({error})") from None


@dataclasses.dataclass(frozen=True)
class UnitReport:
    """What one unit publishes in its databag under :data:`UNIT_REPORT_KEY`."""

    arch: str
    can_build: bool
    images: tuple[PublishedImage, ...] = ()

    def to_json(self) -> str:
        """The databag string."""
        return _dumps(
            {
                "arch": self.arch,
                "can_build": self.can_build,
                "images": [image.to_dict() for image in self.images],
            }
        )

    @classmethod
    def from_json(cls, text: str | None) -> UnitReport:
        """Parse a databag string.

        Raises:
            PeerDataError: not a report written by this schema.
        """
        data = _loads(text, "unit report")
        images = data.get("images", [])
        if not isinstance(images, list):
            raise PeerDataError("unit report: images is not a list")
        arch = data.get("arch")
        if not isinstance(arch, str) or not arch:
            raise PeerDataError("unit report: no arch")
        return cls(
            arch=arch,
            can_build=bool(data.get("can_build", False)),
            images=tuple(PublishedImage.from_dict(item) for item in images),
        )

    @classmethod
    def from_local(cls, arch: str, can_build: bool, images: Iterable[LocalImage]) -> UnitReport:
        """A report of this unit's local images."""
        return cls(
            arch=arch,
            can_build=can_build,
            images=tuple(PublishedImage.from_local(image) for image in images),
        )


@dataclasses.dataclass(frozen=True)
class Assignments:
    """The leader's decision, in the application databag under :data:`ASSIGNMENTS_KEY`.

    Attributes:
        releases: the configured releases (exact names, config order) the plan was made for.
        owners: work key (``release/arch``) -> unit name.
        unassigned: work keys no unit can build (no unit of that arch can build).
    """

    releases: tuple[str, ...]
    owners: Mapping[str, str]
    unassigned: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The databag string (stable: sorted keys, so an unchanged plan writes no change)."""
        return _dumps(
            {
                "releases": list(self.releases),
                "owners": dict(sorted(self.owners.items())),
                "unassigned": sorted(self.unassigned),
            }
        )

    @classmethod
    def from_json(cls, text: str | None) -> Assignments:
        """Parse a databag string.

        Raises:
            PeerDataError: not an assignment written by this schema.
        """
        data = _loads(text, "assignments")
        releases, owners = data.get("releases"), data.get("owners")
        if not isinstance(releases, list) or not isinstance(owners, dict):
            raise PeerDataError("assignments: releases or owners missing")
        unassigned = data.get("unassigned", [])
        if not isinstance(unassigned, list):
            raise PeerDataError("assignments: unassigned is not a list")
        return cls(
            releases=tuple(str(r) for r in releases),
            owners={str(k): str(v) for k, v in owners.items()},
            unassigned=tuple(str(k) for k in unassigned),
        )

    def share_of(self, unit_name: str, arch: str | None = None) -> list[str]:
        """Releases assigned to ``unit_name`` (optionally only for ``arch``), config order."""
        mine = {
            split_work_key(key)[0]
            for key, unit in self.owners.items()
            if unit == unit_name and (arch is None or split_work_key(key)[1] == arch)
        }
        return [release for release in self.releases if release in mine]

    def units(self) -> list[str]:
        """Units that have at least one key, sorted."""
        return sorted(set(self.owners.values()))


def plan_assignments(releases: Sequence[str], reports: Mapping[str, UnitReport]) -> Assignments:
    """The leader's plan: each configured release on each architecture some unit reports.

    Only units that can build (``can_build``) are candidates; a key whose architecture has no
    such unit is listed as unassigned. A release is paired only with the architectures it has
    an ISO for.

    Args:
        releases: configured releases (exact names, as ``Settings.releases``).
        reports: unit name -> its report (the leader includes its own).
    """
    arches = sorted({report.arch for report in reports.values()})
    owners: dict[str, str] = {}
    unassigned: list[str] = []
    for arch in arches:
        candidates = [name for name, rep in reports.items() if rep.arch == arch and rep.can_build]
        for release in releases:
            if arch not in _architectures_of(release):
                continue
            key = work_key(release, arch)
            chosen = owner(key, candidates)
            if chosen is None:
                unassigned.append(key)
            else:
                owners[key] = chosen
    return Assignments(releases=tuple(releases), owners=owners, unassigned=tuple(unassigned))


def _architectures_of(release: str) -> tuple[str, ...]:
    try:
        return tuple(catalogue.resolve(release).architectures)
    except UsageError:
        return ()


def unit_share(
    assignments: Assignments | None, unit_name: str, arch: str, configured: Sequence[str]
) -> list[str]:
    """This unit's releases: assigned to it for its arch, and still configured (config order).

    A unit reads the plan the leader published; between a config change and the leader's next
    plan the plan may name releases no longer configured, which are left out here. Without a plan
    (None) the share is empty: the unit waits for the leader.
    """
    if assignments is None:
        return []
    mine = set(assignments.share_of(unit_name, arch))
    return [release for release in configured if release in mine]


@dataclasses.dataclass(frozen=True)
class Share:
    """One unit's part of the work.

    Attributes:
        releases: the configured releases this unit builds (config order).
        units: how many units reported (this one included).
        plan: the plan this unit made as the leader, to publish; None on other units.
    """

    releases: list[str]
    units: int
    plan: Assignments | None = None


def decide_share(
    releases: Sequence[str],
    unit_name: str,
    arch: str,
    reports: Mapping[str, UnitReport],
    *,
    leader: bool,
    published: Assignments | None = None,
) -> Share:
    """This unit's share of ``releases``.

    The leader (or a unit without peers) plans from every unit's report (its own included);
    the other units follow the plan the leader ``published`` (None: not yet, so nothing).
    """
    plan = plan_assignments(releases, reports) if leader else None
    share = unit_share(plan if leader else published, unit_name, arch, releases)
    return Share(share, len(reports), plan)


@dataclasses.dataclass(frozen=True)
class FleetImage:
    """One release x arch in the application-wide image list.

    Attributes:
        unit: the unit holding the newest image.
        holders: every unit holding that same tarball (same sha256), sorted.
        older_copies: how many other (older) images of this release and arch the units hold.
    """

    release: str
    arch: str
    sha256: str
    size: int
    built_at: str | None
    uploaded: bool
    unit: str
    holders: tuple[str, ...]
    older_copies: int = 0

    def to_result(self) -> dict[str, str]:
        """Action-result form (keys lowercase with hyphens, string values)."""
        return {
            "release": self.release,
            "arch": self.arch,
            "sha256": self.sha256,
            "size": str(self.size),
            "built-at": self.built_at or "unknown",
            "uploaded": "true" if self.uploaded else "false",
            "unit": self.unit,
            "holders": ", ".join(self.holders),
        }


def _newness(image: PublishedImage, unit: str) -> tuple[float, bool, str, str]:
    moment = parse_utc_or_none(image.built_at)
    # Newest first; at equal times an uploaded copy wins; then a fixed order by sha256 and unit,
    # so every unit computes the same merge.
    return (moment.timestamp() if moment else 0.0, image.uploaded, image.sha256, unit)


def merge_inventories(reports: Mapping[str, UnitReport]) -> list[FleetImage]:
    """One application-wide list: per release and arch, the newest image and who holds it.

    Copies of one tarball (same sha256) on several units are one entry, listed in ``holders``;
    an image counts as uploaded when any holder reports it uploaded. Sorted by release, arch.
    """
    by_key: dict[tuple[str, str], list[tuple[PublishedImage, str]]] = {}
    for unit, report in reports.items():
        for image in report.images:
            by_key.setdefault((image.release, image.arch), []).append((image, unit))
    merged = []
    for (release, arch), copies in sorted(by_key.items()):
        newest, unit = max(copies, key=lambda pair: _newness(*pair))
        same = [(image, holder) for image, holder in copies if image.sha256 == newest.sha256]
        distinct_older = {image.sha256 for image, _ in copies if image.sha256 != newest.sha256}
        merged.append(
            FleetImage(
                release=release,
                arch=arch,
                sha256=newest.sha256,
                size=newest.size,
                built_at=newest.built_at,
                uploaded=any(image.uploaded for image, _ in same),
                unit=unit,
                holders=tuple(sorted({holder for _, holder in same})),
                older_copies=len(distinct_older),
            )
        )
    return merged


def read_reports(
    databags: Mapping[str, Mapping[str, str]],
) -> tuple[dict[str, UnitReport], dict[str, str]]:
    """Parse every unit's report from ``unit name -> databag``.

    Returns:
        ``(reports, problems)``: the readable reports, and unit name -> why its report was
        skipped (a unit that has not published yet is silently absent from both).
    """
    reports: dict[str, UnitReport] = {}
    problems: dict[str, str] = {}
    for unit, databag in databags.items():
        text = databag.get(UNIT_REPORT_KEY)
        if not text:
            continue
        try:
            reports[unit] = UnitReport.from_json(text)
        except PeerDataError as error:
            problems[unit] = str(error)
    return reports, problems
