"""The rendered Packer template: parses as HCL2, passes `packer validate` (Debian's 1.6.6)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures.packer_hcl import load_hcl, qemu_source

from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.pipeline import render

PACKER = shutil.which("packer")
CASES = [(release, arch) for release in catalogue.RELEASES for arch in release.architectures]


def firmware(tmp_path: Path) -> render.FirmwarePaths:
    paths = render.FirmwarePaths(code=tmp_path / "code.fd", vars=tmp_path / "vars.fd")
    paths.code.write_bytes(b"c" * 4096)
    paths.vars.write_bytes(b"v" * 4096)
    return paths


def packer_validate(directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert PACKER is not None
    return subprocess.run(
        [PACKER, "validate", *extra, "."],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "CHECKPOINT_DISABLE": "1", "HOME": str(directory)},
    )


@pytest.mark.parametrize(("release", "arch"), CASES, ids=lambda v: getattr(v, "name", v))
def test_template_parses_with_the_expected_settings(
    tmp_path: Path, release: catalogue.Release, arch: catalogue.Arch
) -> None:
    settings = Settings.from_mapping({"disk-size": "12G", "build-memory": "6G", "build-cpus": 3})
    recipe = render.render_recipe(
        release, arch, settings, tmp_path / "out", accelerator="tcg", firmware=firmware(tmp_path)
    )
    source = qemu_source(recipe.packer_template)
    assert source["format"] == "raw"
    assert source["disk_size"] == "12288M"
    assert source["memory"] == 6144
    assert source["cpus"] == 3
    assert source["accelerator"] == "tcg"
    assert source["headless"] is True
    assert source["communicator"] == "none"
    assert source["shutdown_timeout"] == "90m"
    assert source["qemu_binary"] == f"qemu-system-{arch}"
    assert source["vm_name"] == recipe.disk_image.name
    assert source["output_directory"] == "${path.root}/output"
    assert source["iso_url"] == release.iso_url(arch, settings.mirror_url)
    assert source["iso_checksum"] == "file:" + release.iso_checksum_url(arch, settings.mirror_url)
    assert source["iso_target_path"] == f"${{path.root}}/{release.iso_name(arch)}"
    args = {pair[0]: [] for pair in source["qemuargs"]}
    for flag, value in source["qemuargs"]:
        args[flag].append(value)
    assert args["-cpu"] == ["max"]  # TCG
    assert f"file=${{path.root}}/{release.iso_name(arch)}," in args["-drive"][2]
    assert f"file=${{path.root}}/output/{recipe.disk_image.name}," in args["-drive"][3]
    assert args["-drive"][0].endswith(f"file={recipe.directory.parent / 'code.fd'}")
    plugins = load_hcl(recipe.directory / "plugins.pkr.hcl")
    qemu = plugins["packer"][0]["required_plugins"][0]["qemu"]
    assert qemu == {"version": "= 1.1.1", "source": "github.com/hashicorp/qemu"}


def test_kvm_uses_the_host_cpu(tmp_path: Path) -> None:
    recipe = render.render_recipe(
        catalogue.resolve("24.03"),
        catalogue.host_arch(),
        Settings(),
        tmp_path / "out",
        accelerator="kvm",
        firmware=firmware(tmp_path),
    )
    source = qemu_source(recipe.packer_template)
    assert source["accelerator"] == "kvm"
    assert ["-cpu", "host"] in source["qemuargs"]


def test_local_iso_with_awkward_path_is_escaped(tmp_path: Path) -> None:
    iso = tmp_path / 'isos, "odd" ${dir}' / "openEuler.iso"
    iso.parent.mkdir()
    iso.write_bytes(b"iso")
    recipe = render.render_recipe(
        catalogue.resolve("24.03"),
        "x86_64",
        Settings(),
        tmp_path / "out",
        accelerator="tcg",
        firmware=firmware(tmp_path),
        iso_path=iso,
        iso_sha256="AB" * 32,
    )
    source = qemu_source(recipe.packer_template)
    # python-hcl2 undoes \" and \\ but, like Packer, leaves $${ for HCL to turn into ${.
    assert source["iso_url"] == str(iso).replace("${", "$${")
    assert source["iso_checksum"] == "sha256:" + "ab" * 32
    assert "iso_target_path" not in source
    cdrom = next(arg for flag, arg in source["qemuargs"] if "id=cdrom0" in arg)
    assert cdrom.startswith("file=" + str(iso).replace(",", ",,").replace("${", "$${") + ",")


@pytest.mark.skipif(PACKER is None, reason="needs Debian's packer package (1.6.6 in CI)")
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_packer_validate_with_a_local_iso(tmp_path: Path, arch: catalogue.Arch) -> None:
    iso = tmp_path / "openEuler.iso"
    iso.write_bytes(b"not really an ISO")
    recipe = render.render_recipe(
        catalogue.resolve("22.03"),
        arch,
        Settings(),
        tmp_path / "out",
        accelerator="tcg",
        firmware=firmware(tmp_path),
        iso_path=iso,
        iso_sha256=hashlib.sha256(iso.read_bytes()).hexdigest(),
        packer_version="1.6.6",
    )
    completed = packer_validate(recipe.directory)
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.skipif(PACKER is None, reason="needs Debian's packer package (1.6.6 in CI)")
def test_packer_validate_downloads_the_checksum_from_the_mirror(
    tmp_path: Path, http_server
) -> None:
    """Without --iso, Packer reads the ISO's sha256 from the mirror's .sha256sum file."""
    release = catalogue.resolve("24.03-LTS-SP3")
    iso_dir = http_server.root / f"openEuler-{release.name}" / "ISO" / "x86_64"
    iso_dir.mkdir(parents=True)
    (iso_dir / release.iso_name("x86_64")).write_bytes(b"iso")
    digest = hashlib.sha256(b"iso").hexdigest()
    (iso_dir / (release.iso_name("x86_64") + ".sha256sum")).write_text(
        f"{digest}  {release.iso_name('x86_64')}\n"
    )
    recipe = render.render_recipe(
        release,
        "x86_64",
        Settings(mirror_url=http_server.url),
        tmp_path / "out",
        accelerator="tcg",
        firmware=firmware(tmp_path),
        packer_version="1.6.6",
    )
    completed = packer_validate(recipe.directory)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert any(request.path.endswith(".sha256sum") for request in http_server.requests), (
        "Packer did not fetch the checksum file"
    )


@pytest.mark.skipif(PACKER is None, reason="needs Debian's packer package (1.6.6 in CI)")
def test_packer_validate_rejects_an_unknown_builder_option(tmp_path: Path) -> None:
    """The check is real: Packer 1.6.6 refuses keys its qemu builder does not have."""
    iso = tmp_path / "openEuler.iso"
    iso.write_bytes(b"iso")
    recipe = render.render_recipe(
        catalogue.resolve("24.03"),
        "x86_64",
        Settings(),
        tmp_path / "out",
        accelerator="tcg",
        firmware=firmware(tmp_path),
        iso_path=iso,
        packer_version="1.6.6",
    )
    template = recipe.packer_template.read_text().replace(
        "  headless     = true\n", '  headless     = true\n  cpu_model = "host"\n'
    )
    recipe.packer_template.write_text(template)
    completed = packer_validate(recipe.directory)
    assert completed.returncode != 0
    assert 'argument named "cpu_model" is not expected here' in completed.stderr + completed.stdout


@pytest.mark.skipif(PACKER is None, reason="needs Debian's packer package (1.6.6 in CI)")
def test_production_layout_main_template_validates_and_plugin_block_parses(
    tmp_path: Path,
) -> None:
    """Production (Packer >= 1.11) adds plugins.pkr.hcl, which 1.6.6 does not understand:
    validate the main template with 1.6.6 and the plugin block syntactically."""
    iso = tmp_path / "openEuler.iso"
    iso.write_bytes(b"iso")
    recipe = render.render_recipe(
        catalogue.resolve("24.03"),
        "aarch64",
        Settings(qemu_plugin_version="1.1.3"),
        tmp_path / "out",
        accelerator="tcg",
        firmware=firmware(tmp_path),
        iso_path=iso,
        packer_version=None,
    )
    plugins = recipe.directory / "plugins.pkr.hcl"
    with_plugins = packer_validate(recipe.directory)
    assert with_plugins.returncode != 0  # 1.6.6: required_plugins is a newer block
    alone = tmp_path / "main-only"
    alone.mkdir()
    shutil.copy(recipe.packer_template, alone / "openeuler.pkr.hcl")
    completed = packer_validate(alone, "-syntax-only")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    qemu = load_hcl(plugins)["packer"][0]["required_plugins"][0]["qemu"]
    assert qemu["version"] == "= 1.1.3"
