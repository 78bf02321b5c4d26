"""The release catalogue: resolution of names and aliases, end-of-life flags, URLs, MAAS names."""

from __future__ import annotations

import datetime
import json

import pytest

from openeuler_image_builder.cli import main
from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import UsageError

TODAY = datetime.date(2026, 11, 27)


def test_every_lts_line_has_ga_and_four_service_packs() -> None:
    names = [r.name for r in catalogue.RELEASES]
    for line in ("20.03", "22.03", "24.03"):
        assert f"{line}-LTS" in names
        for sp in range(1, 5):
            assert f"{line}-LTS-SP{sp}" in names
    assert len(names) == len(set(names)) == 15


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("22.03", "22.03-LTS-SP4"),
        ("20.03", "20.03-LTS-SP4"),
        ("24.03", "24.03-LTS-SP4"),
        ("24.03-LTS", "24.03-LTS"),
        ("22.03-LTS-SP3", "22.03-LTS-SP3"),
        ("22.03-lts-sp3", "22.03-LTS-SP3"),
        ("22.03 LTS SP3", "22.03-LTS-SP3"),
        ("22.03-SP1", "22.03-LTS-SP1"),
        ("openEuler-24.03-LTS-SP2", "24.03-LTS-SP2"),
        ("  24.03-LTS-SP3 ", "24.03-LTS-SP3"),
    ],
)
def test_resolve_exact_names_and_aliases(text: str, expected: str) -> None:
    assert catalogue.resolve(text).name == expected


@pytest.mark.parametrize("text", ["23.09", "22.03-LTS-SP5", "26.03", "", "latest", "22.03-SP"])
def test_unknown_release_lists_the_valid_names(text: str) -> None:
    with pytest.raises(UsageError) as info:
        catalogue.resolve(text)
    message = str(info.value)
    assert repr(text) in message
    assert "22.03-LTS-SP4" in message
    assert "24.03-LTS-SP4" in message
    assert "\n" not in message


def test_end_of_life_flags_on_a_fixed_date() -> None:
    eol = {r.name for r in catalogue.RELEASES if r.is_end_of_life(TODAY)}
    supported = {r.name for r in catalogue.RELEASES} - eol
    assert supported == {"24.03-LTS-SP1", "24.03-LTS-SP3", "24.03-LTS-SP4"}
    # End-of-life releases stay in the catalogue and stay resolvable.
    assert catalogue.resolve("22.03").is_end_of_life(TODAY)
    assert catalogue.resolve("24.03-LTS-SP4").end_of_life is None


def test_release_facts_follow_the_reference() -> None:
    sp4_2203 = catalogue.resolve("22.03-LTS-SP4")
    assert sp4_2203.rhel_major == 8
    assert sp4_2203.default_user == "openeuler"
    assert sp4_2203.cloud_init == "21.4"
    assert sp4_2203.cloud_init_needs_network_fix is True
    ga_2003 = catalogue.resolve("20.03-LTS")
    assert (ga_2003.rhel_major, ga_2003.default_user, ga_2003.cloud_init) == (
        8,
        "openEuler",
        "19.4",
    )
    ga_2403 = catalogue.resolve("24.03-LTS")
    assert (ga_2403.rhel_major, ga_2403.cloud_init) == (9, "23.4.1")
    assert ga_2403.cloud_init_needs_network_fix is False
    # 24.03 SPs take cloud-init from 24.03-LTS-Next, version not recorded: the probe decides.
    assert catalogue.resolve("24.03-LTS-SP3").cloud_init_needs_network_fix is None


def test_iso_urls_and_label() -> None:
    release = catalogue.resolve("24.03-LTS-SP3")
    assert release.iso_url("aarch64") == (
        "https://repo.openeuler.org/openEuler-24.03-LTS-SP3/ISO/aarch64/"
        "openEuler-24.03-LTS-SP3-aarch64-dvd.iso"
    )
    assert release.iso_checksum_url("x86_64", "http://mirror.example/openeuler").endswith(
        "/openeuler/openEuler-24.03-LTS-SP3/ISO/x86_64/openEuler-24.03-LTS-SP3-x86_64-dvd.iso"
        ".sha256sum"
    )
    assert release.iso_volume_label("x86_64") == "openEuler-24.03-LTS-SP3-x86_64"
    assert release.update_repo_url("x86_64", "http://m/") == (
        "http://m/openEuler-24.03-LTS-SP3/update/x86_64/"
    )


def test_maas_names_titles_and_base_image() -> None:
    release = catalogue.resolve("22.03")
    assert release.maas_name() == "custom/openeuler-22.03-lts-sp4"
    assert release.maas_name("rhel") == "rhel/openeuler-22.03-lts-sp4"
    assert release.maas_base_image == "rhel/8"
    assert release.title == "openEuler 22.03 LTS SP4"
    assert catalogue.resolve("24.03-LTS").maas_base_image == "rhel/9"
    assert release.image_basename("aarch64") == "openeuler-22.03-LTS-SP4-aarch64"
    # Every release gets a distinct MAAS name under both schemes.
    for scheme in ("custom", "rhel"):
        names = {r.maas_name(scheme) for r in catalogue.RELEASES}
        assert len(names) == len(catalogue.RELEASES)


@pytest.mark.parametrize(
    ("text", "arch"),
    [("x86_64", "x86_64"), ("amd64", "x86_64"), ("AARCH64", "aarch64"), ("arm64", "aarch64")],
)
def test_resolve_arch(text: str, arch: str) -> None:
    assert catalogue.resolve_arch(text) == arch


def test_resolve_arch_rejects_unknown() -> None:
    with pytest.raises(UsageError, match="use x86_64 or aarch64"):
        catalogue.resolve_arch("riscv64")


def test_resolve_many_dedupes_keeping_order() -> None:
    names = [r.name for r in catalogue.resolve_many(["24.03", "22.03", "24.03-LTS-SP4", "22.03"])]
    assert names == ["24.03-LTS-SP4", "22.03-LTS-SP4"]


def test_releases_json_lists_aliases_and_eol_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["releases", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {item["name"]: item for item in data}
    assert len(by_name) == 15
    assert by_name["22.03-LTS-SP4"]["aliases"] == ["22.03"]
    assert by_name["24.03-LTS-SP4"]["aliases"] == ["24.03"]
    assert by_name["22.03-LTS-SP3"]["aliases"] == []
    assert by_name["20.03-LTS"]["eol"] is True
    assert by_name["24.03-LTS-SP4"]["end_of_life"] is None
    assert by_name["24.03-LTS-SP4"]["eol"] is False
    assert by_name["24.03-LTS-SP3"]["iso"]["aarch64"] == "openEuler-24.03-LTS-SP3-aarch64-dvd.iso"


def test_releases_human_output_marks_eol(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["releases"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("20.03-LTS-SP4"))
    assert "(EOL)" in row
    assert "20.03" in row.split()[1]
