"""Rendezvous assignment of releases to units, peer-data round trips, inventory merge."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from openeuler_image_builder.unit import fleet
from openeuler_image_builder.unit.fleet import (
    Assignments,
    PeerDataError,
    PublishedImage,
    UnitReport,
    assign,
    merge_inventories,
    plan_assignments,
    unit_share,
    work_key,
)

APP = "openeuler-image-builder"
# Many synthetic keys so that measured shares are statistically meaningful; the real key space
# (15 releases x 2 arches) is too small to measure a 1/n share on.
KEYS = [f"rel-{index}/x86_64" for index in range(3000)]


def units(count: int, start: int = 0) -> list[str]:
    return [f"{APP}/{index}" for index in range(start, start + count)]


def test_weight_is_sha256_of_key_and_unit() -> None:
    expected = int.from_bytes(hashlib.sha256(b"24.03-LTS-SP2/x86_64\0app/0").digest()[:8], "big")
    assert fleet.weight("24.03-LTS-SP2/x86_64", "app/0") == expected


def test_assignment_is_the_same_in_another_python_process() -> None:
    # hash() would differ between processes (PYTHONHASHSEED); sha256 must not.
    names = units(4)
    here = assign(KEYS[:50], names)
    code = (
        "import json, sys; from openeuler_image_builder.unit.fleet import assign; "
        "print(json.dumps(assign(json.loads(sys.argv[1]), json.loads(sys.argv[2]))))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code, json.dumps(KEYS[:50]), json.dumps(names)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(completed.stdout) == here


def test_assignment_does_not_depend_on_unit_order() -> None:
    names = units(5)
    assert assign(KEYS, names) == assign(KEYS, list(reversed(names)))


def test_no_units_means_no_assignment() -> None:
    assert assign(KEYS[:3], []) == {}


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 8, 13])
def test_keys_spread_evenly(count: int) -> None:
    owners = assign(KEYS, units(count))
    assert set(owners) == set(KEYS)
    per_unit = [list(owners.values()).count(name) for name in units(count)]
    ideal = len(KEYS) / count
    # sha256 weights are uniform: each unit's load stays within 15% of the ideal share.
    assert all(abs(load - ideal) <= 0.15 * ideal for load in per_unit), per_unit


@pytest.mark.parametrize("count", [1, 2, 3, 4, 6, 9])
def test_join_moves_only_keys_to_the_new_unit_about_one_share(count: int) -> None:
    before = assign(KEYS, units(count))
    joined = units(1, start=100)[0]
    after = assign(KEYS, [*units(count), joined])
    moved = [key for key in KEYS if before[key] != after[key]]
    # Minimal movement: every key that moved went to the joining unit.
    assert all(after[key] == joined for key in moved)
    measured = len(moved) / len(KEYS)
    theoretical = 1 / (count + 1)
    assert abs(measured - theoretical) <= 0.15 * theoretical, (measured, theoretical)


@pytest.mark.parametrize("count", [2, 3, 4, 6, 9])
def test_leave_moves_only_the_leaving_units_keys(count: int) -> None:
    names = units(count)
    before = assign(KEYS, names)
    leaving = names[count // 2]
    after = assign(KEYS, [name for name in names if name != leaving])
    moved = [key for key in KEYS if before[key] != after[key]]
    assert set(moved) == {key for key, owner in before.items() if owner == leaving}
    measured = len(moved) / len(KEYS)
    theoretical = 1 / count
    assert abs(measured - theoretical) <= 0.15 * theoretical, (measured, theoretical)


def test_movement_is_far_below_modulo_hashing() -> None:
    # The naive alternative (key index modulo unit count) reshuffles almost everything.
    def modulo(names: list[str]) -> dict[str, str]:
        return {key: names[i % len(names)] for i, key in enumerate(KEYS)}

    naive = sum(modulo(units(4))[k] != modulo(units(5))[k] for k in KEYS) / len(KEYS)
    before, after = assign(KEYS, units(4)), assign(KEYS, units(5))
    rendezvous = sum(before[k] != after[k] for k in KEYS) / len(KEYS)
    assert naive > 0.7
    assert rendezvous < 0.25


def report(arch: str = "x86_64", can_build: bool = True, *images: PublishedImage) -> UnitReport:
    return UnitReport(arch=arch, can_build=can_build, images=tuple(images))


def test_plan_covers_each_configured_release_on_each_reported_arch() -> None:
    reports = {
        f"{APP}/0": report("x86_64"),
        f"{APP}/1": report("x86_64"),
        f"{APP}/2": report("aarch64"),
    }
    releases = ("22.03-LTS-SP4", "24.03-LTS-SP2")
    plan = plan_assignments(releases, reports)
    assert set(plan.owners) == {work_key(r, a) for r in releases for a in ("x86_64", "aarch64")}
    for release in releases:
        assert plan.owners[work_key(release, "aarch64")] == f"{APP}/2"
        assert plan.owners[work_key(release, "x86_64")] in (f"{APP}/0", f"{APP}/1")
    assert plan.unassigned == ()


def test_units_that_cannot_build_get_nothing_and_keys_become_unassigned() -> None:
    reports = {f"{APP}/0": report("x86_64", False), f"{APP}/1": report("aarch64", True)}
    plan = plan_assignments(("24.03-LTS-SP2",), reports)
    assert plan.owners == {"24.03-LTS-SP2/aarch64": f"{APP}/1"}
    assert plan.unassigned == ("24.03-LTS-SP2/x86_64",)


def test_plan_and_share_on_join_and_leave_with_real_releases() -> None:
    releases = (
        "20.03-LTS-SP4",
        "22.03-LTS-SP3",
        "22.03-LTS-SP4",
        "24.03-LTS-SP1",
        "24.03-LTS-SP2",
    )
    two = plan_assignments(releases, {name: report() for name in units(2)})
    three = plan_assignments(releases, {name: report() for name in units(3)})
    for key, owner in two.owners.items():
        assert three.owners[key] in (owner, f"{APP}/2")
    shares = [three.share_of(name, "x86_64") for name in units(3)]
    assert sorted(release for share in shares for release in share) == sorted(releases)
    # Each share keeps config order.
    for share in shares:
        assert share == [r for r in releases if r in share]


def test_assignments_round_trip_and_are_stable_text() -> None:
    plan = plan_assignments(("24.03-LTS-SP2", "22.03-LTS-SP4"), {n: report() for n in units(3)})
    text = plan.to_json()
    assert isinstance(text, str)
    assert Assignments.from_json(text) == plan
    # The same plan computed again writes the same string (no databag churn).
    again = plan_assignments(("24.03-LTS-SP2", "22.03-LTS-SP4"), {n: report() for n in units(3)})
    assert again.to_json() == text


def test_unit_report_round_trip() -> None:
    image = PublishedImage(
        "24.03-LTS-SP2", "x86_64", "a" * 64, 123, "2026-11-27T07:05:13Z", True, "d" * 64
    )
    original = report("x86_64", True, image)
    assert UnitReport.from_json(original.to_json()) == original


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"arch": ""}',
        '{"arch": "x86_64", "images": {}}',
        '{"arch": "x86_64", "images": [{"release": "x"}]}',
    ],
)
def test_bad_unit_reports_are_refused(text: str) -> None:
    with pytest.raises(PeerDataError):
        UnitReport.from_json(text)


@pytest.mark.parametrize("text", ["", "{}", '{"releases": "x", "owners": {}}', "3"])
def test_bad_assignments_are_refused(text: str) -> None:
    with pytest.raises(PeerDataError):
        Assignments.from_json(text)


def test_read_reports_skips_silent_units_and_names_broken_ones() -> None:
    good = report("x86_64")
    reports, problems = fleet.read_reports(
        {
            f"{APP}/0": {fleet.UNIT_REPORT_KEY: good.to_json()},
            f"{APP}/1": {},
            f"{APP}/2": {fleet.UNIT_REPORT_KEY: "{broken"},
        }
    )
    assert reports == {f"{APP}/0": good}
    assert list(problems) == [f"{APP}/2"]
    assert "not JSON" in problems[f"{APP}/2"]


def test_unit_share_drops_releases_no_longer_configured_and_waits_without_plan() -> None:
    plan = Assignments(
        releases=("22.03-LTS-SP4", "24.03-LTS-SP2"),
        owners={"22.03-LTS-SP4/x86_64": f"{APP}/0", "24.03-LTS-SP2/x86_64": f"{APP}/0"},
    )
    assert unit_share(plan, f"{APP}/0", "x86_64", ["24.03-LTS-SP2"]) == ["24.03-LTS-SP2"]
    assert unit_share(plan, f"{APP}/0", "aarch64", ["24.03-LTS-SP2"]) == []
    assert unit_share(None, f"{APP}/0", "x86_64", ["24.03-LTS-SP2"]) == []


def test_the_leader_plans_the_share_and_the_others_follow_its_published_plan() -> None:
    releases = ["22.03-LTS-SP4", "24.03-LTS-SP2", "24.03-LTS-SP4"]
    reports = {name: UnitReport("x86_64", True) for name in units(3)}
    leader = fleet.decide_share(releases, f"{APP}/0", "x86_64", reports, leader=True)
    assert leader.plan == plan_assignments(releases, reports)
    assert leader.units == 3
    assert leader.releases == unit_share(leader.plan, f"{APP}/0", "x86_64", releases)
    shares = [leader.releases]
    for name in units(2, start=1):
        follower = fleet.decide_share(
            releases, name, "x86_64", reports, leader=False, published=leader.plan
        )
        assert follower.plan is None  # only the leader publishes a plan
        shares.append(follower.releases)
    assert sorted(release for share in shares for release in share) == sorted(releases)
    waiting = fleet.decide_share(releases, f"{APP}/1", "x86_64", reports, leader=False)
    assert waiting.releases == []  # no plan published yet: nothing to build


def image(release: str, sha: str, built: str, uploaded: bool = False) -> PublishedImage:
    return PublishedImage(release, "x86_64", sha * 64, 100, built, uploaded)


def test_merge_keeps_newest_per_release_and_arch_and_names_holders() -> None:
    reports = {
        f"{APP}/0": report(
            "x86_64",
            True,
            image("24.03-LTS-SP2", "a", "2026-11-20T00:00:00Z", True),
            image("22.03-LTS-SP4", "c", "2026-11-01T00:00:00Z"),
        ),
        f"{APP}/1": report(
            "x86_64",
            True,
            image("24.03-LTS-SP2", "b", "2026-11-27T07:05:13Z"),
            image("22.03-LTS-SP4", "c", "2026-11-01T00:00:00Z", True),
        ),
    }
    merged = merge_inventories(reports)
    assert [(m.release, m.arch) for m in merged] == [
        ("22.03-LTS-SP4", "x86_64"),
        ("24.03-LTS-SP2", "x86_64"),
    ]
    older, newer = merged
    assert newer.sha256 == "b" * 64
    assert newer.unit == f"{APP}/1"
    assert newer.holders == (f"{APP}/1",)
    assert newer.uploaded is False
    assert newer.older_copies == 1
    # The same tarball on two units is one entry, uploaded if any holder uploaded it.
    assert older.holders == (f"{APP}/0", f"{APP}/1")
    assert older.uploaded is True
    assert older.older_copies == 0


def test_merge_ties_resolve_the_same_whatever_the_order() -> None:
    a = {f"{APP}/0": report("x86_64", True, image("24.03-LTS-SP2", "a", "2026-11-27T00:00:00Z"))}
    b = {f"{APP}/1": report("x86_64", True, image("24.03-LTS-SP2", "b", "2026-11-27T00:00:00Z"))}
    assert merge_inventories({**a, **b}) == merge_inventories({**b, **a})


def test_merge_result_rows_have_juju_keys() -> None:
    merged = merge_inventories(
        {f"{APP}/0": report("x86_64", True, image("24.03-LTS-SP2", "a", "x"))}
    )
    row = merged[0].to_result()
    assert row["unit"] == f"{APP}/0"
    assert row["built-at"] == "x"
    assert all(key == key.lower() and "_" not in key for key in row)
