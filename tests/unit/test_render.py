"""render_recipe(): every release and arch, firmware detection, argument checks, the CLI."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from openeuler_image_builder.cli import main
from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.paths import templates_dir
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.pipeline import render

CASES = [(release, arch) for release in catalogue.RELEASES for arch in release.architectures]


def fake_firmware(
    tmp_path: Path, arch: str = "x86_64", code_size: int = 4 * 1024 * 1024
) -> render.FirmwarePaths:
    """Firmware files standing in for OVMF/AAVMF (the VARS copy is checked)."""
    base = tmp_path / "firmware"
    base.mkdir(exist_ok=True)
    code, variables = base / f"{arch}_CODE.fd", base / f"{arch}_VARS.fd"
    if arch == "aarch64":
        code.write_bytes(b"C" * code_size)
        variables.write_bytes(b"V" * 1024 * 1024)  # shorter than the code: must be padded
    else:
        code.write_bytes(b"C" * 3653632)
        variables.write_bytes(b"V" * 540672)
    return render.FirmwarePaths(code=code, vars=variables)


def accelerator_for(arch: str) -> render.Accelerator:
    return "kvm" if arch == catalogue.host_arch() else "tcg"


@pytest.mark.parametrize(("release", "arch"), CASES, ids=lambda v: getattr(v, "name", v))
def test_every_release_and_arch_renders_all_artefacts(
    release: catalogue.Release, arch: catalogue.Arch, tmp_path: Path
) -> None:
    recipe = render.render_recipe(
        release,
        arch,
        Settings(),
        tmp_path / "out",
        accelerator=accelerator_for(arch),
        firmware=fake_firmware(tmp_path, arch),
    )
    assert recipe.directory == tmp_path / "out"
    assert recipe.packer_template.read_text().startswith("# Packer template")
    assert f"release={release.name} arch={arch}" in recipe.kickstart.read_text().splitlines()[0]
    hook = recipe.curtin_hook.read_text()
    assert f'RELEASE = "{release.name}"' in hook
    assert f'RHEL_MAJOR = "{release.rhel_major}"' in hook
    assert recipe.curtin_hook.stat().st_mode & stat.S_IXUSR
    assert (recipe.directory / "plugins.pkr.hcl").is_file()  # production layout by default
    assert (
        recipe.disk_image == recipe.directory / "output" / f"openeuler-{release.name}-{arch}.raw"
    )
    assert recipe.serial_log == recipe.directory / "serial.log"
    assert len(recipe.template_hash) == 64


def test_template_hash_does_not_depend_on_the_output_directory(tmp_path: Path) -> None:
    release = catalogue.resolve("24.03")
    firmware = fake_firmware(tmp_path)
    first = render.render_recipe(
        release, "x86_64", Settings(), tmp_path / "a", accelerator="tcg", firmware=firmware
    )
    second = render.render_recipe(
        release, "x86_64", Settings(), tmp_path / "b" / "c", accelerator="tcg", firmware=firmware
    )
    assert first.template_hash == second.template_hash
    third = render.render_recipe(
        release,
        "x86_64",
        Settings(extra_packages=("tmux",)),
        tmp_path / "d",
        accelerator="tcg",
        firmware=firmware,
    )
    assert third.template_hash != first.template_hash


def test_template_id_in_the_kickstart_marker_hashes_the_sources(tmp_path: Path) -> None:
    recipe = render.render_recipe(
        catalogue.resolve("22.03"),
        "x86_64",
        Settings(),
        tmp_path / "out",
        accelerator="tcg",
        firmware=fake_firmware(tmp_path),
    )
    marker = recipe.kickstart.read_text().splitlines()[0]
    assert marker.endswith(f"template={render.template_id()}")
    assert len(render.template_id()) == 16


def test_plugins_file_only_for_packer_that_understands_it(tmp_path: Path) -> None:
    release, firmware = catalogue.resolve("24.03"), fake_firmware(tmp_path)
    out = tmp_path / "out"
    render.render_recipe(
        release,
        "x86_64",
        Settings(),
        out,
        accelerator="tcg",
        firmware=firmware,
        packer_version="1.11.2",
    )
    assert 'version = "= 1.1.1"' in (out / "plugins.pkr.hcl").read_text()
    render.render_recipe(
        release,
        "x86_64",
        Settings(),
        out,
        accelerator="tcg",
        firmware=firmware,
        packer_version="1.6.6",
    )
    assert not (out / "plugins.pkr.hcl").exists()
    render.render_recipe(
        release,
        "x86_64",
        Settings(qemu_plugin_version="1.1.3"),
        out,
        accelerator="tcg",
        firmware=firmware,
        packer_version=None,
    )
    assert 'version = "= 1.1.3"' in (out / "plugins.pkr.hcl").read_text()


def test_uefi_variable_store_is_copied_and_padded_for_aarch64(tmp_path: Path) -> None:
    firmware = fake_firmware(tmp_path, "aarch64", code_size=64 * 1024 * 1024)  # as AAVMF
    recipe = render.render_recipe(
        catalogue.resolve("24.03"),
        "aarch64",
        Settings(),
        tmp_path / "out",
        accelerator="tcg",
        firmware=firmware,
    )
    copy = recipe.directory / "efivars.fd"
    assert copy.stat().st_size == firmware.code.stat().st_size == 64 * 1024 * 1024
    assert copy.read_bytes()[: 1024 * 1024] == firmware.vars.read_bytes()
    assert copy.read_bytes()[1024 * 1024 :].count(b"\0") == 63 * 1024 * 1024


def test_x86_variable_store_is_copied_unchanged(tmp_path: Path) -> None:
    firmware = fake_firmware(tmp_path)
    recipe = render.render_recipe(
        catalogue.resolve("24.03"),
        "x86_64",
        Settings(),
        tmp_path / "out",
        accelerator="tcg",
        firmware=firmware,
    )
    assert (recipe.directory / "efivars.fd").read_bytes() == firmware.vars.read_bytes()


def _firmware_root(tmp_path: Path, names: list[str]) -> Path:
    root = tmp_path / "host"
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"fd")
    return root


@pytest.mark.parametrize(
    ("host", "names", "arch", "expected_code", "expected_vars"),
    [
        (
            "ubuntu-22.04",
            [
                "usr/share/OVMF/OVMF_CODE.fd",
                "usr/share/OVMF/OVMF_VARS.fd",
                "usr/share/OVMF/OVMF_CODE_4M.fd",
                "usr/share/OVMF/OVMF_VARS_4M.fd",
            ],
            "x86_64",
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "ubuntu-24.04",
            [
                "usr/share/OVMF/OVMF_CODE_4M.fd",
                "usr/share/OVMF/OVMF_VARS_4M.fd",
                "usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
            ],
            "x86_64",
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "ubuntu-20.04",
            ["usr/share/OVMF/OVMF_CODE.fd", "usr/share/OVMF/OVMF_VARS.fd"],
            "x86_64",
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
        (
            "aarch64-guest",
            ["usr/share/AAVMF/AAVMF_CODE.fd", "usr/share/AAVMF/AAVMF_VARS.fd"],
            "aarch64",
            "/usr/share/AAVMF/AAVMF_CODE.fd",
            "/usr/share/AAVMF/AAVMF_VARS.fd",
        ),
    ],
)
def test_firmware_detection_per_host(
    tmp_path: Path,
    host: str,
    names: list[str],
    arch: catalogue.Arch,
    expected_code: str,
    expected_vars: str,
) -> None:
    found = render.detect_firmware(arch, root=_firmware_root(tmp_path, names))
    assert found == render.FirmwarePaths(code=Path(expected_code), vars=Path(expected_vars))


def test_firmware_detection_names_the_package_to_install(tmp_path: Path) -> None:
    root = _firmware_root(tmp_path, ["usr/share/OVMF/OVMF_CODE_4M.fd"])  # no VARS
    with pytest.raises(UsageError, match="install the ovmf package"):
        render.detect_firmware("x86_64", root=root)
    with pytest.raises(UsageError, match="install the qemu-efi-aarch64 package"):
        render.detect_firmware("aarch64", root=root)


def test_firmware_on_this_host_is_found() -> None:
    # This machine (and CI) has ovmf and qemu-efi-aarch64 installed.
    for arch in catalogue.ARCHES:
        found = render.detect_firmware(arch)
        assert found.code.is_file()
        assert found.vars.is_file()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"accelerator": "hvf"}, "unknown accelerator"),
        ({"iso_sha256": "abc"}, "is not a sha256"),
        ({"http_proxy": "proxy:3128"}, "is not an http"),
        ({"shutdown_timeout": "forever"}, "shutdown timeout"),
        ({"iso_path": Path("/nonexistent/openEuler.iso")}, "does not exist"),
        ({"packer_version": "latest"}, "is not a Packer version"),
    ],
)
def test_bad_arguments_are_refused_before_writing(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    out = tmp_path / "out"
    arguments: dict[str, object] = {"accelerator": "tcg", "firmware": fake_firmware(tmp_path)}
    arguments.update(kwargs)
    with pytest.raises(UsageError, match=message):
        render.render_recipe(
            catalogue.resolve("24.03"),
            "x86_64",
            Settings(),
            out,
            **arguments,  # type: ignore[arg-type]
        )
    assert not out.exists()


def test_kvm_for_a_foreign_architecture_is_refused(tmp_path: Path) -> None:
    foreign: catalogue.Arch = "aarch64" if catalogue.host_arch() == "x86_64" else "x86_64"
    with pytest.raises(UsageError, match="use accelerator tcg"):
        render.render_recipe(
            catalogue.resolve("24.03"),
            foreign,
            Settings(),
            tmp_path / "out",
            accelerator="kvm",
            firmware=fake_firmware(tmp_path, foreign),
        )


def test_missing_firmware_file_is_refused(tmp_path: Path) -> None:
    firmware = render.FirmwarePaths(code=tmp_path / "no-code.fd", vars=tmp_path / "no-vars.fd")
    with pytest.raises(UsageError, match="UEFI firmware code"):
        render.render_recipe(
            catalogue.resolve("24.03"),
            "x86_64",
            Settings(),
            tmp_path / "out",
            accelerator="tcg",
            firmware=firmware,
        )


def test_existing_packer_output_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "output").mkdir(parents=True)
    (out / "output" / "disk.raw").write_bytes(b"previous disk")
    with pytest.raises(UsageError, match="Packer refuses to overwrite"):
        render.render_recipe(
            catalogue.resolve("24.03"),
            "x86_64",
            Settings(),
            out,
            accelerator="tcg",
            firmware=fake_firmware(tmp_path),
        )
    assert (out / "output" / "disk.raw").read_bytes() == b"previous disk"
    assert not (out / "openeuler.pkr.hcl").exists()


def test_rendering_leaves_no_temporary_files(tmp_path: Path) -> None:
    recipe = render.render_recipe(
        catalogue.resolve("20.03"),
        "x86_64",
        Settings(),
        tmp_path / "out",
        accelerator="tcg",
        firmware=fake_firmware(tmp_path),
    )
    names = sorted(str(path.relative_to(recipe.directory)) for path in recipe.directory.rglob("*"))
    assert names == [
        "curtin",
        "curtin/curtin-hooks",
        "efivars.fd",
        "http",
        "http/ks.cfg",
        "openeuler.pkr.hcl",
        "plugins.pkr.hcl",
    ]


def test_hcl_and_qemu_escaping() -> None:
    assert render._hcl_string('a"b\\c${x}%{y}') == 'a\\"b\\\\c$${x}%%{y}'
    assert render._qemu_option("/isos/a,b.iso") == "/isos/a,,b.iso"
    with pytest.raises(UsageError, match="line break"):
        render._hcl_string("a\nb")


def test_cli_render_with_host_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    iso = tmp_path / "openEuler-24.03-LTS-SP3-x86_64-dvd.iso"
    iso.write_bytes(b"iso")
    status = main(
        [
            "render",
            "--release",
            "24.03-LTS-SP3",
            "--arch",
            "x86_64",
            "--output",
            str(tmp_path / "out"),
            "--iso",
            str(iso),
            "--sha256",
            "ab" * 32,
            "--accelerator",
            "tcg",
            "--packer-version",
            "1.6.6",
            "--json",
        ]
    )
    assert status == 0
    data = json.loads(capsys.readouterr().out)
    assert data["release"] == "24.03-LTS-SP3"
    assert data["directory"] == str(tmp_path / "out")
    assert data["disk_image"].endswith("output/openeuler-24.03-LTS-SP3-x86_64.raw")
    template = (tmp_path / "out" / "openeuler.pkr.hcl").read_text()
    assert f'iso_url      = "{iso.resolve()}"' in template
    assert f'iso_checksum = "sha256:{"ab" * 32}"' in template
    assert not (tmp_path / "out" / "plugins.pkr.hcl").exists()


def test_cli_render_settings_file_and_mirror(tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"include-updates": False, "extra-packages": "tmux vim"}))
    status = main(
        [
            "render",
            "--release",
            "22.03",
            "--arch",
            "x86_64",
            "--output",
            str(tmp_path / "o"),
            "--settings",
            str(settings),
            "--mirror",
            "http://mirror.example/openeuler",
            "--accelerator",
            "tcg",
            "--packer-version",
            "1.11.2",
        ]
    )
    assert status == 0
    kickstart = (tmp_path / "o" / "http" / "ks.cfg").read_text()
    assert "\ntmux\nvim\n" in kickstart
    assert "repo --name" not in kickstart
    template = (tmp_path / "o" / "openeuler.pkr.hcl").read_text()
    assert "http://mirror.example/openeuler/openEuler-22.03-LTS-SP4/ISO/x86_64/" in template


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sha256", "ab" * 32], "--sha256 applies to a local ISO"),
        (["--firmware-code", "/usr/share/OVMF/OVMF_CODE_4M.fd"], "together"),
        (["--release", "19.09"], "unknown openEuler release"),
    ],
)
def test_cli_render_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    base = [
        "render",
        "--release",
        "24.03",
        "--arch",
        "x86_64",
        "--output",
        str(tmp_path / "o"),
        "--accelerator",
        "tcg",
    ]
    assert main(base + argv) == 2
    error = capsys.readouterr().err
    assert message in error
    assert error.count("\n") == 1


def test_cli_render_bad_settings_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text("[1, 2]")
    status = main(
        [
            "render",
            "--release",
            "24.03",
            "--output",
            str(tmp_path / "o"),
            "--settings",
            str(settings),
            "--accelerator",
            "tcg",
        ]
    )
    assert status == 2
    assert f"settings file {settings} must hold a JSON object" in capsys.readouterr().err


def test_default_accelerator_and_packer_version(monkeypatch: pytest.MonkeyPatch) -> None:
    from openeuler_image_builder.cli import recipe

    foreign: catalogue.Arch = "aarch64" if catalogue.host_arch() == "x86_64" else "x86_64"
    assert recipe.default_accelerator(foreign) == "tcg"
    monkeypatch.setenv("PATH", "/nonexistent")
    assert recipe.default_packer_version() is None
    monkeypatch.setenv("PATH", os.defpath)
    if Path("/usr/bin/packer").exists():
        assert recipe.default_packer_version() == "1.6.6"


@pytest.mark.parametrize(
    ("release", "arch"), CASES[:2] + CASES[-2:], ids=lambda v: getattr(v, "name", v)
)
def test_embedded_python_parses_for_the_oldest_interpreters(
    tmp_path: Path, release: catalogue.Release, arch: catalogue.Arch
) -> None:
    """The hook runs under MAAS's ephemeral python3 (3.6 on bionic and later), the cloud-init
    fix under the image's (3.7 on 20.03)."""
    import ast

    recipe = render.render_recipe(
        release,
        arch,
        Settings(),
        tmp_path / "out",
        accelerator=accelerator_for(arch),
        firmware=fake_firmware(tmp_path, arch),
    )
    ast.parse(recipe.curtin_hook.read_text(), feature_version=(3, 6))
    fix = templates_dir() / "cloudinit" / "oeib-cloudinit-fix.py"
    ast.parse(fix.read_text(), feature_version=(3, 7))
