"""The stand-in installer's logic, run on this host without booting anything (fast).

The stand-in for anaconda (tests/e2e/standin/, docs/testing.md) is busybox shell; here its
functions run under the host's busybox against kickstarts the project's recipe really renders,
so a change in the recipe's contract (docs/recipe.md) shows up here before the slow e2e run.
Also the ISO's GRUB menu layout, the synthetic root tree against the image verifier, and the
module ordering of the ISO builder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from e2e.standin import builder
from e2e.standin.builder import KickstartContract
from openeuler_image_builder.backends.vm import packer
from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.pipeline import render, verify
from openeuler_image_builder.pipeline.manifest import read_rpmdb

STANDIN = Path(builder.__file__).parent
LIBRARY = STANDIN / "installer-lib.sh"
BUSYBOX = shutil.which("busybox")
RELEASE = catalogue.resolve("24.03")
MIRROR = "http://127.0.0.1:8080/"

pytestmark = pytest.mark.skipif(
    BUSYBOX is None or shutil.which("rpmbuild") is None,
    reason="busybox or rpmbuild is not installed (.ci/apt-packages/e2e.txt)",
)


def _config_environment(release: catalogue.Release, variant: builder.Variant = "normal") -> dict:
    """The STANDIN_* variables of the ISO's standin.conf, as the init exports them."""
    text = builder.standin_config(release, "x86_64", variant, KickstartContract.from_recipe())
    assert BUSYBOX is not None
    dumped = subprocess.run(
        [BUSYBOX, "sh", "-c", f"set -a; {text}\nenv"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={"PATH": os.environ["PATH"]},
    ).stdout
    return {
        name: value
        for name, _, value in (line.partition("=") for line in dumped.splitlines())
        if name.startswith("STANDIN_")
    }


def _lib(script: str, release: catalogue.Release = RELEASE) -> subprocess.CompletedProcess[str]:
    assert BUSYBOX is not None
    return subprocess.run(
        [BUSYBOX, "sh", "-c", f". {LIBRARY}\n{script}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={"PATH": os.environ["PATH"], **_config_environment(release)},
    )


def _render(tmp_path: Path, release: catalogue.Release = RELEASE) -> render.RenderedRecipe:
    return render.render_recipe(
        release,
        "x86_64",
        Settings(mirror_url=MIRROR),
        tmp_path / f"recipe-{release.name}",
        accelerator="tcg",
        packer_version="1.6.6",
    )


@pytest.mark.parametrize("release", catalogue.RELEASES, ids=lambda r: r.name)
def test_rendered_kickstart_passes_the_check_for_every_release(
    release: catalogue.Release, tmp_path: Path
) -> None:
    recipe = _render(tmp_path, release)
    result = _lib(f"ks_check {recipe.kickstart}", release)
    assert result.returncode == 0, result.stdout


def test_kickstart_is_read_as_the_recipe_writes_it(tmp_path: Path) -> None:
    recipe = _render(tmp_path)
    ks = recipe.kickstart
    hook = tmp_path / "hook"
    assert _lib(f"ks_extract_hook {ks} {hook}").returncode == 0
    assert hook.read_bytes() == recipe.curtin_hook.read_bytes()
    assert _lib(f"ks_partition_plan {ks}").stdout == "/ ext4 1 yes root\n"
    assert _lib(f"ks_disklabel {ks} yes").stdout.strip() == "gpt"
    assert _lib(f"ks_disklabel {ks} no").stdout.strip() == "gpt"
    assert _lib(f"ks_target_disk {ks}").stdout == "vda"
    assert _lib(f"ks_end_action {ks}").stdout == "poweroff"
    assert _lib(f"ks_install_source {ks}").stdout.strip() == "cdrom"
    # The update repository on a loopback mirror is reached by the guest at 10.0.2.2.
    assert _lib(f"ks_repos {ks}").stdout == (
        f"oeib-updates http://10.0.2.2:8080/openEuler-{RELEASE.name}/update/x86_64/ -\n"
    )


def _broken(tmp_path: Path, change: tuple[str, str], count: int = 1) -> Path:
    text = _render(tmp_path).kickstart.read_text()
    old, new = change
    assert old in text, old
    path = tmp_path / "broken.cfg"
    path.write_text(text.replace(old, new, count))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("# openeuler-image-builder kickstart release=", "# some kickstart release="),
            "it is not the kickstart openeuler-image-builder renders",
        ),
        ((f"release={RELEASE.name} arch=", "release=22.03-LTS-SP4 arch="), "another release"),
        (("arch=x86_64 template=", "arch=x86_64 template=xyz"), "16 hex digits"),
        (
            ("<<'OEIB_CURTIN_HOOKS_EOF'", "<<'SOMETHING_ELSE'"),
            "exactly one heredoc delimited by OEIB_CURTIN_HOOKS_EOF",
        ),
        (
            ("part / --fstype=ext4 --size=1 --grow --ondisk=vda --label=root", "autopart"),
            "only implements explicit 'part' partitioning",
        ),
        (("\ncdrom\n", "\nurl --url=http://example.invalid/os\n"), "is not implemented"),
        (("\ncdrom\n", "\n"), "names no installation source"),
    ],
    ids=["no-marker", "other-release", "bad-template-id", "no-heredoc", "autopart", "url", "none"],
)
def test_kickstart_check_says_what_is_wrong(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    result = _lib(f"ks_check {_broken(tmp_path, change)}")
    assert result.returncode == 1
    assert message in result.stdout


def test_end_action_defaults_to_halt_like_anaconda(tmp_path: Path) -> None:
    path = _broken(tmp_path, ("\npoweroff\n", "\n"))
    assert _lib(f"ks_end_action {path}").stdout == "halt"


def test_partition_plan_and_sfdisk_input_for_a_fuller_layout(tmp_path: Path) -> None:
    kickstart = tmp_path / "ks.cfg"
    kickstart.write_text(
        "# x\n"
        "clearpart --all --initlabel --drives=sda\n"
        "part / --fstype=xfs --size=2048 --grow --ondisk=sda\n"
        "part /boot/efi --size=600\n"
        "part biosboot --fstype=biosboot --size=1\n"
        "part swap --size=512 --label=swap\n"
        "%post\npart /not/a/command\n%end\n"
    )
    plan = _lib(f"ks_partition_plan {kickstart}").stdout
    assert plan.splitlines() == [
        "/boot/efi efi 600 no -",
        "biosboot biosboot 1 no -",
        "swap swap 512 no swap",
        "/ xfs 2048 yes -",
    ]
    assert _lib(f"ks_target_disk {kickstart}").stdout == "sda"
    gpt = _lib(f'sfdisk_script "$(ks_partition_plan {kickstart})" gpt').stdout.splitlines()
    assert gpt == [
        "label: gpt",
        ",600MiB,C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        ",1MiB,21686148-6449-6E6F-744E-656564454649",
        ",512MiB,0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
        ",+,0FC63DAF-8483-4772-8E79-3D69D8477DE4",
    ]
    dos = _lib(f'sfdisk_script "$(ks_partition_plan {kickstart})" dos').stdout.splitlines()
    assert dos[0] == "label: dos" and dos[1] == ",600MiB,ef" and dos[-1] == ",+,83"
    assert _lib("partition_device vda 1; echo; partition_device nvme0n1 2").stdout == (
        "vda1\nnvme0n1p2"
    )


def test_cmdline_parsing() -> None:
    cmdline = "BOOT_IMAGE=/x inst.ks=http://a/ks.cfg quiet inst.ks=http://b/ks.cfg rd.live.check"
    assert _lib(f"cmdline_value inst.ks '{cmdline}'").stdout == "http://b/ks.cfg"
    assert _lib(f"cmdline_value inst.stage2 '{cmdline}'").stdout == ""
    assert _lib(f"cmdline_has rd.live.check '{cmdline}'").returncode == 0
    assert _lib(f"cmdline_has quie '{cmdline}'").returncode == 1


def test_synthetic_root_passes_the_verifier_and_reports_progress(tmp_path: Path) -> None:
    assert BUSYBOX is not None
    root, hook = tmp_path / "root", tmp_path / "hook"
    root.mkdir()
    hook.write_text("#!/usr/bin/python3\nprint('hook')\n")
    kickstart = tmp_path / "ks.cfg"
    kickstart.write_text("# ks\n")
    standin = builder.standin_packages(RELEASE, "x86_64")
    packages_file = tmp_path / "packages"
    packages_file.write_text("".join(f"{p.name} {p.version} {p.release}\n" for p in standin))
    rpmdb = builder.build_rpmdb(standin, "x86_64", tmp_path / "rpm")
    result = subprocess.run(
        [BUSYBOX, "sh", str(STANDIN / "write-root.sh"), str(root), str(hook), str(kickstart)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={
            "PATH": os.environ["PATH"],
            "STANDIN_PACKAGES_FILE": str(packages_file),
            "STANDIN_RPMDB": str(rpmdb),
            **_config_environment(RELEASE),
        },
    )
    assert result.returncode == 0, result.stderr
    assert verify.verify_tree(root, "x86_64") == []
    assert (root / "curtin/curtin-hooks").read_bytes() == hook.read_bytes()
    assert (root / "etc/machine-id").stat().st_size == 0
    packages = (root / "var/lib/standin/packages").read_text().splitlines()
    assert any(re.fullmatch(r"kernel-6\.6\.0-.*\.oe2403sp\d+\.x86_64", p) for p in packages)
    # pack reads the image's rpm database with the host's rpm: the same package list.
    work = tmp_path / "pack-work"
    work.mkdir()
    facts = read_rpmdb(root, work)
    assert facts.packages == packages
    assert facts.cloud_init == (RELEASE.cloud_init or builder.DEFAULT_CLOUD_INIT)
    # The build's own parser turns the stand-in's lines into install progress.
    reports: list[tuple[str, float | None, str]] = []

    def record(phase: str, percent: float | None, detail: str = "") -> None:
        reports.append((phase, percent, detail))

    progress = packer.InstallerProgress(tmp_path / "unused", record)
    for line in result.stdout.splitlines():
        progress.feed(line)
    assert reports[-1] == ("install", 90.0, f"package {len(packages)} of {len(packages)}")


def test_grub_menu_follows_openeuler_layout() -> None:
    text = builder.render_grub_config(RELEASE, "x86_64")
    label = RELEASE.iso_volume_label("x86_64")
    assert 'set default="1"' in text
    assert "set timeout=60" in text
    entries = re.findall(r"^menuentry '([^']+)'.*?\{\n(.*?)\n\}", text, re.MULTILINE | re.DOTALL)
    assert [title for title, _ in entries[:2]] == [
        f"Install openEuler {RELEASE.name}",
        f"Test this media & install openEuler {RELEASE.name}",
    ]
    install_body = entries[0][1].splitlines()
    assert len(install_body) == 2
    assert install_body[0].split()[:3] == [
        "linux",
        "/images/pxeboot/vmlinuz",
        f"inst.stage2=hd:LABEL={label}",
    ]
    assert install_body[1].split() == ["initrd", "/images/pxeboot/initrd.img"]
    assert "rd.live.check" in entries[1][1]


def test_module_order_puts_dependencies_first(tmp_path: Path) -> None:
    modules = tmp_path / "lib/modules/6.1.0-1-amd64"

    def module(path: str, depends: str) -> None:
        target = modules / "kernel" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"\x7fELF...\x00name=x\x00depends=" + depends.encode() + b"\x00")

    module("fs/ext4/ext4.ko", "mbcache,jbd2")
    module("fs/jbd2/jbd2.ko", "")
    module("fs/mbcache.ko", "")
    module("crypto/crc32c-intel.ko", "")
    (modules / "modules.builtin").write_text("kernel/lib/crc16.ko\n")
    order = builder.kernel_module_order(modules, ["ext4", "crc32c_intel", "crc16"])
    names = [path.name for path in order]
    assert names == ["mbcache.ko", "jbd2.ko", "ext4.ko", "crc32c-intel.ko"]
    with pytest.raises(builder.StandinUnavailable, match="virtio_blk"):
        builder.kernel_module_order(modules, ["virtio_blk"])


def test_kernel_version_is_shaped_like_the_release() -> None:
    assert builder.kernel_version_for(catalogue.resolve("24.03-LTS-SP1"), "x86_64") == (
        "6.6.0-72.0.0.1.oe2403sp1.x86_64",
        "oe2403sp1",
    )
    assert builder.kernel_version_for(catalogue.resolve("20.03-LTS-SP4"), "x86_64")[1] == "oe1"
    assert builder.kernel_version_for(catalogue.resolve("22.03-LTS"), "x86_64")[1] == "oe2203"
