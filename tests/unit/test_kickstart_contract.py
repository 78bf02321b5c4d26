"""docs/recipe.md "Contract with the stand-in installer" matches what render_recipe writes.

The stand-in installer of the end-to-end test is built from that page, so each fact stated
there is checked against rendered files here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fixtures.packer_hcl import qemu_source

from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.pipeline import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "recipe.md"


def contract() -> str:
    text = DOC.read_text()
    start = text.index("## Contract with the stand-in installer")
    end = text.find("\n## ", start + 10)
    return text[start : end if end > 0 else None]


def code_blocks(section: str) -> list[str]:
    return [block.strip("\n") for block in re.findall(r"```\n(.*?)```", section, re.S)]


def render_for(tmp_path: Path, arch: catalogue.Arch, accelerator: render.Accelerator):
    firmware = render.FirmwarePaths(code=tmp_path / "code.fd", vars=tmp_path / "vars.fd")
    firmware.code.write_bytes(b"c")
    firmware.vars.write_bytes(b"v")
    return render.render_recipe(
        catalogue.resolve("24.03"),
        arch,
        Settings(),
        tmp_path / f"{arch}-{accelerator}",
        accelerator=accelerator,
        firmware=firmware,
    )


def source_block(recipe: render.RenderedRecipe) -> dict:
    return qemu_source(recipe.packer_template)


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
@pytest.mark.parametrize("accelerator", ["kvm", "tcg"])
def test_boot_keystrokes_and_wait_are_the_documented_ones(
    tmp_path: Path, arch: catalogue.Arch, accelerator: render.Accelerator
) -> None:
    if accelerator == "kvm" and arch != catalogue.host_arch():
        pytest.skip("KVM cannot run a foreign architecture")
    source = source_block(render_for(tmp_path, arch, accelerator))
    section = contract()
    documented = next(block for block in code_blocks(section) if block.startswith("<up>"))
    serial = {"x86_64": "ttyS0,115200", "aarch64": "ttyAMA0,115200"}[arch]
    assert "".join(source["boot_command"]) == documented.replace("<serial>", serial)
    wait = {"kvm": "10s", "tcg": "30s"}[accelerator]
    assert source["boot_wait"] == wait
    assert f"`{wait}` with `accelerator={accelerator}`" in section
    assert f"`{serial}` on {arch}" in section


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_devices_and_serial_console_are_the_documented_ones(
    tmp_path: Path, arch: catalogue.Arch
) -> None:
    recipe = render_for(tmp_path, arch, "tcg")
    source = source_block(recipe)
    args = [" ".join(pair) for pair in source["qemuargs"]]
    assert "-serial file:${path.root}/serial.log" in args
    assert recipe.serial_log.name == "serial.log"
    assert any("scsi-cd" in arg and "bootindex=0" in arg for arg in args)
    assert any("virtio-scsi-pci" in arg for arg in args)
    assert any("virtio-blk-pci" in arg and "bootindex=1" in arg for arg in args)
    assert any("virtio-net-pci,netdev=user.0" in arg for arg in args)
    assert any("unit=0,readonly=on" in arg for arg in args)
    assert any("unit=1,file=${path.root}/efivars.fd" in arg for arg in args)
    assert source["format"] == "raw"
    assert source["http_bind_address"] == "127.0.0.1"
    assert source["vnc_bind_address"] == "127.0.0.1"
    assert source["communicator"] == "none"
    assert source["machine_type"] == {"x86_64": "q35", "aarch64": "virt"}[arch]
    usb = any(arg == "-device usb-kbd" for arg in args)
    assert usb == (arch == "aarch64")
    section = contract()
    assert "`/dev/sr0`" in section and "`/dev/vda`" in section and "`10.0.2.2`" in section


def test_kickstart_marker_partitioning_and_heredocs(tmp_path: Path) -> None:
    recipe = render_for(tmp_path, "x86_64", "tcg")
    kickstart = recipe.kickstart.read_text()
    section = contract()
    marker = kickstart.splitlines()[0]
    assert re.fullmatch(
        r"# openeuler-image-builder kickstart release=24\.03-LTS-SP4 arch=x86_64 "
        r"template=[0-9a-f]{16}",
        marker,
    )
    assert "`# openeuler-image-builder kickstart release=<R> arch=<A> template=<H>`" in section
    partitioning = next(block for block in code_blocks(section) if "ignoredisk" in block)
    lines = [line.strip() for line in partitioning.splitlines() if line.strip()]
    ks_lines = kickstart.splitlines()
    start = ks_lines.index(lines[0])
    assert ks_lines[start : start + len(lines)] == lines
    heredoc = next(block for block in code_blocks(section) if "OEIB_CURTIN_HOOKS_EOF" in block)
    opening, _, closing = [line.strip() for line in heredoc.splitlines() if line.strip()]
    assert opening in ks_lines
    assert closing in ks_lines
    body = kickstart.split(opening + "\n", 1)[1].split("\n" + closing + "\n", 1)[0] + "\n"
    assert body == recipe.curtin_hook.read_text()
    assert "chmod 0755 /curtin/curtin-hooks" in ks_lines
    assert "cdrom" in ks_lines and "poweroff" in ks_lines
    assert "%post --erroronfail --interpreter=/bin/bash --log=/dev/console" in ks_lines
    assert "`OEIB-POST: ok`" in section and "`OEIB-POST: FAILED: <reason>`" in section
    assert 'echo "OEIB-POST: ok"' in ks_lines


def test_documented_grub_menu_matches_the_keystrokes() -> None:
    section = contract()
    menu = next(block for block in code_blocks(section) if block.startswith("menuentry"))
    assert "entry 0" in menu and "entry 1, the default" in menu
    assert 'set default="1"' in menu and "set timeout=60" in menu
    # `e`, three <down> from line 1 reach line 4 (initrd); <left> at column 0 goes to the end
    # of line 3 (kernel): the four editor lines are setparams, empty, kernel, initrd.
    assert "`setparams '<title>'`, an empty line, the kernel line, the initrd line" in section
