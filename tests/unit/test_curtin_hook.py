"""The in-image curtin hook against a stand-in of curtin's API (tests/curtin_harness).

Each test renders the hook for a release, writes a synthetic openEuler target, runs the hook as
curtin would (a child process with curtin's environment variables) and checks the boot-loader
commands curtin's built-in hooks were led to run, that /etc/os-release did not change, and that
the hook removed /curtin. The stand-in's profiles mimic curtin 21.3 (no aarch64 loader names,
%rhel 7/8), 23.1.1 (%rhel 7/8/9) and release/23.1 (aarch64 names, any %rhel above 6).
tests/unit/test_curtin_hook_real.py runs the same scenarios against real curtin checkouts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from curtin_harness import bootloader_commands, curtin_config, run_hook
from fixtures.image_trees import OS_RELEASE, make_image_tree

from openeuler_image_builder.core import catalogue
from openeuler_image_builder.pipeline import render

PROFILES = ["21.3", "23.1.1", "release-23.1"]
SCENARIOS = {
    "uefi-x86_64": ("x86_64", True),
    "bios-x86_64": ("x86_64", False),
    "uefi-aarch64": ("aarch64", True),
}
EXPECTED = {
    "uefi-x86_64": [
        [
            "efibootmgr",
            "--create",
            "--write-signature",
            "--label",
            "openEuler",
            "--disk",
            "/dev/sda",
            "--part",
            "1",
            "--loader",
            "/EFI/openEuler/shimx64.efi",
        ],
        ["grub2-mkconfig", "-o", "/boot/efi/EFI/openEuler/grub.cfg"],
    ],
    "bios-x86_64": [
        ["grub2-install", "/dev/sda"],
        ["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"],
    ],
    "uefi-aarch64": [
        [
            "efibootmgr",
            "--create",
            "--write-signature",
            "--label",
            "openEuler",
            "--disk",
            "/dev/sda",
            "--part",
            "1",
            "--loader",
            "/EFI/openEuler/shimaa64.efi",
        ],
        ["grub2-mkconfig", "-o", "/boot/efi/EFI/openEuler/grub.cfg"],
    ],
}


def render_hook(release_name: str, arch: str) -> str:
    release = catalogue.resolve(release_name)
    return (
        render._environment()
        .get_template("curtin/curtin-hooks")
        .render(
            release=release.name, arch=arch, rhel_major=release.rhel_major, tool_version="test"
        )
    )


def run(
    tmp_path: Path,
    scenario: str,
    profile: str,
    *,
    release: str = "22.03",
    os_release: str = OS_RELEASE,
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[dict[str, Any], Path, bytes]:
    arch, uefi = SCENARIOS[scenario]
    target = make_image_tree(
        tmp_path / "target", arch, curtin_hook=render_hook(release, arch), os_release=os_release
    )
    before = (target / "usr/lib/os-release").read_bytes()
    result = run_hook(
        target / "curtin" / "curtin-hooks",
        target,
        tmp_path / "work",
        uefi=uefi,
        machine=arch,
        arch=arch,
        config=config,
        extra_env={"STANDIN_CURTIN_PROFILE": profile, **(env or {})},
    )
    return result, target, before


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_hook_leads_curtin_to_the_native_boot_loader_setup(
    tmp_path: Path, scenario: str, profile: str
) -> None:
    result, target, before = run(tmp_path, scenario, profile)
    assert result["returncode"] == 0, result["stderr"]
    assert bootloader_commands(result) == EXPECTED[scenario]
    assert (target / "usr/lib/os-release").read_bytes() == before
    assert (target / "etc/os-release").is_symlink()
    assert not (target / "curtin").exists()
    assert "openEuler" in result["curtin"]["distro_names"]
    assert "registered openEuler as a redhat-family distro" in result["stdout"]
    # curtin's other built-in hooks ran too: initramfs for the one kernel, network config, fstab
    commands = [command["args"] for command in result["commands"]]
    assert [
        "dracut",
        "-f",
        f"/boot/initramfs-5.10.0-216.0.0.115.oe2203sp4.{SCENARIOS[scenario][0]}.img",
        f"5.10.0-216.0.0.115.oe2203sp4.{SCENARIOS[scenario][0]}",
    ] in commands
    assert (target / "etc/cloud/cloud.cfg.d/50-curtin-networking.cfg").exists()
    assert "UUID=1111-2222" in (target / "etc/fstab").read_text()
    # every command ran in the target, none on the host
    assert all(command["target"] == str(target) for command in result["commands"])


@pytest.mark.parametrize(
    ("profile", "release", "value"),
    [
        ("21.3", "24.03", "8"),  # 21.3 only accepts 7 and 8 for %rhel
        ("23.1.1", "24.03", "9"),
        ("release-23.1", "24.03", "9"),
        ("21.3", "20.03", "8"),
    ],
)
def test_bios_rhel_macro_value_is_one_curtin_accepts(
    tmp_path: Path, profile: str, release: str, value: str
) -> None:
    result, _, _ = run(tmp_path, "bios-x86_64", profile, release=release)
    assert result["returncode"] == 0, result["stderr"]
    assert (
        f"rpm -E %rhel gave '%rhel' (openEuler defines no %rhel); using {value}"
        in (result["stdout"])
    )
    assert bootloader_commands(result) == EXPECTED["bios-x86_64"]


@pytest.mark.parametrize(("profile", "patched_lookup"), [("21.3", True), ("release-23.1", False)])
def test_aarch64_loader_lookup_only_steps_in_where_curtin_lacks_it(
    tmp_path: Path, profile: str, patched_lookup: bool
) -> None:
    result, _, _ = run(tmp_path, "uefi-aarch64", profile)
    assert result["returncode"] == 0, result["stderr"]
    message = "found aarch64 loader /boot/efi/EFI/openEuler/shimaa64.efi"
    assert (message in result["stdout"]) is patched_lookup
    assert bootloader_commands(result) == EXPECTED["uefi-aarch64"]


def test_target_curtin_already_knows_is_left_alone(tmp_path: Path) -> None:
    os_release = OS_RELEASE.replace('ID="openEuler"', 'ID="rhel"')
    arch = "x86_64"
    target = make_image_tree(
        tmp_path / "target", arch, curtin_hook=render_hook("22.03", arch), os_release=os_release
    )
    (target / "boot/efi/EFI/redhat").mkdir()
    (target / "boot/efi/EFI/redhat/shimx64.efi").write_text("shim\n")
    result = run_hook(
        target / "curtin" / "curtin-hooks",
        target,
        tmp_path / "work",
        uefi=True,
        machine=arch,
        arch=arch,
        extra_env={"STANDIN_CURTIN_PROFILE": "release-23.1"},
    )
    assert result["returncode"] == 0, result["stderr"]
    assert "curtin already knows this target as rhel (family redhat)" in result["stdout"]
    assert result["curtin"]["distro_names"] == result["curtin"]["distro_names_before"]
    assert not result["curtin"]["rpm_get_dist_id_patched"]
    assert not result["curtin"]["find_efi_loader_patched"]
    assert bootloader_commands(result)[0][-1] == "/EFI/redhat/shimx64.efi"
    assert not (target / "curtin").exists()


def test_changed_curtin_internals_fail_loudly(tmp_path: Path) -> None:
    result, target, _ = run(tmp_path, "uefi-x86_64", "no-osfamily-map")
    assert result["returncode"] == 1
    assert (
        "ERROR: curtin stand-in (no-osfamily-map) does not have what this hook needs"
        in (result["stderr"])
    )
    assert "curtin.distro.DISTRO_TO_OSFAMILY" in result["stderr"]
    assert bootloader_commands(result) == []
    assert (target / "curtin" / "curtin-hooks").exists()  # left for the install log's reader


def test_os_release_change_during_curtin_hooks_fails(tmp_path: Path) -> None:
    result, _, _ = run(tmp_path, "uefi-x86_64", "rewrites-os-release")
    assert result["returncode"] == 1
    assert "/etc/os-release of the target changed during curtin's hooks" in result["stderr"]


def test_other_unknown_distro_is_refused(tmp_path: Path) -> None:
    os_release = OS_RELEASE.replace('ID="openEuler"', 'ID="kylin"')
    result, _, _ = run(tmp_path, "uefi-x86_64", "release-23.1", os_release=os_release)
    assert result["returncode"] == 1
    assert (
        "this hook is for openEuler targets, but the target's os-release ID is 'kylin'"
        in (result["stderr"])
    )


def test_debian_kdump_step_is_skipped_with_a_warning(tmp_path: Path) -> None:
    config = curtin_config(True, crash_dumps=True)
    result, _, _ = run(tmp_path, "uefi-x86_64", "release-23.1", config=config)
    assert result["returncode"] == 0, result["stderr"]
    assert "WARNING: MAAS asked for kernel crash dumps" in result["stdout"]
    assert not any("kdump-tools" in command["args"] for command in result["commands"])


def test_crash_dumps_without_the_hook_fail_in_the_stand_in(tmp_path: Path) -> None:
    """Control for the test above: the stand-in fails like curtin when kdump is requested."""
    config = curtin_config(True, crash_dumps=True)
    os_release = OS_RELEASE.replace('ID="openEuler"', 'ID="rhel"')  # known: hook changes nothing
    result, _, _ = run(
        tmp_path, "uefi-x86_64", "release-23.1", os_release=os_release, config=config
    )
    assert result["returncode"] != 0
    assert any("kdump-tools" in command["args"] for command in result["commands"])


def test_hook_refuses_to_run_outside_curtin(tmp_path: Path) -> None:
    result, _, _ = run(tmp_path, "uefi-x86_64", "release-23.1", env={"TARGET_MOUNT_POINT": ""})
    assert result["returncode"] == 1
    assert "TARGET_MOUNT_POINT is not set to a directory" in result["stderr"]


def test_stock_curtin_fails_without_the_hook(tmp_path: Path) -> None:
    """Control: the same target with a hook that only calls curtin's built-in hooks."""
    arch = "x86_64"
    control = (
        "#!/usr/bin/env python3\n"
        "from curtin import config, util\n"
        "from curtin.commands import curthooks\n"
        "state = util.load_command_environment()\n"
        "curthooks.builtin_curthooks(config.load_command_config(None, state),"
        " state['target'], state)\n"
    )
    target = make_image_tree(tmp_path / "target", arch, curtin_hook=control)
    result = run_hook(
        target / "curtin" / "curtin-hooks",
        target,
        tmp_path / "work",
        uefi=True,
        machine=arch,
        arch=arch,
        extra_env={"STANDIN_CURTIN_PROFILE": "release-23.1"},
    )
    assert result["returncode"] != 0
    assert "KeyError: 'ID_LIKE'" in result["stderr"]
