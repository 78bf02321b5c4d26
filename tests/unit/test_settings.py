"""Typed settings shared by the charm and the CLI: good values, bad values and their messages."""

from __future__ import annotations

import pytest

from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.settings import (
    ACCEPTED_FORMS,
    Settings,
    parse_size_mib,
    resolve_accelerator,
)


def test_defaults() -> None:
    settings = Settings()
    assert settings.releases == ()
    assert settings.mirror_url == "https://repo.openeuler.org/"
    assert settings.include_updates is True
    assert settings.disk_size == 8192
    assert settings.build_memory == 4096
    assert settings.accelerator == "auto"
    assert settings.qemu_plugin_version == "1.1.1"
    assert settings.maas_name_scheme == "custom"
    assert settings.keep_images == 2


def test_good_values_from_juju_style_keys() -> None:
    settings = Settings.from_mapping(
        {
            "releases": "22.03, 24.03-LTS-SP3 24.03",
            "mirror-url": "http://mirror.example/openeuler",
            "include-updates": False,
            "extra-packages": "vim-enhanced, tmux  python3-pip @development",
            "disk-size": "10G",
            "build-memory": "6144M",
            "build-cpus": 4,
            "accelerator": "tcg",
            "packer-version": "v1.14.1",
            "qemu-plugin-version": "1.1.3",
            "maas-url": "http://10.0.0.2:5240/MAAS/",
            "maas-name-scheme": "rhel",
            "auto-upload": False,
            "rebuild-schedule": "Sun *-*-* 03:00:00",
            "keep-images": 3,
        }
    )
    assert settings.releases == ("22.03-LTS-SP4", "24.03-LTS-SP3", "24.03-LTS-SP4")
    assert settings.mirror_url == "http://mirror.example/openeuler/"
    assert settings.extra_packages == ("vim-enhanced", "tmux", "python3-pip", "@development")
    assert settings.disk_size == 10240
    assert settings.build_memory == 6144
    assert settings.packer_version == "1.14.1"
    assert settings.maas_url == "http://10.0.0.2:5240/MAAS"
    assert settings.rebuild_schedule == "Sun *-*-* 03:00:00"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("releases", "22.03 23.09"),
        ("mirror-url", "ftp://mirror.example/"),
        ("mirror-url", "not a url"),
        ("extra-packages", "vim; rm -rf /"),
        ("disk-size", "2G"),
        ("disk-size", "lots"),
        ("build-memory", "1024M"),
        ("build-cpus", 0),
        ("build-cpus", 65),
        ("accelerator", "xen"),
        ("packer-version", "1.10.3"),
        ("packer-version", "latest"),
        ("qemu-plugin-version", "1.1.2"),
        ("qemu-plugin-version", "one"),
        ("maas-url", "maas.example:5240"),
        ("maas-ca-certificate", "hello"),
        ("maas-name-scheme", "ubuntu"),
        ("rebuild-schedule", "every tuesday; reboot"),
        ("keep-images", 0),
    ],
)
def test_each_bad_value_names_option_value_and_accepted_form(option: str, value: object) -> None:
    with pytest.raises(UsageError) as info:
        Settings.from_mapping({option: value})
    message = str(info.value)
    assert message.startswith(f"config option {option}={value!r} is invalid")
    assert ACCEPTED_FORMS[option] in message
    assert "\n" not in message


def test_every_option_has_an_accepted_form() -> None:
    options = {name.replace("_", "-") for name in Settings.model_fields}
    assert options == set(ACCEPTED_FORMS)


def test_several_bad_values_are_all_reported() -> None:
    with pytest.raises(UsageError) as info:
        Settings.from_mapping({"build-cpus": 0, "keep-images": 0})
    assert "build-cpus=0" in str(info.value)
    assert "keep-images=0" in str(info.value)


@pytest.mark.parametrize(
    ("text", "mib"),
    [("8G", 8192), ("8GiB", 8192), ("8gb", 8192), ("512M", 512), ("4096", 4096), (2048, 2048)],
)
def test_parse_size(text: object, mib: int) -> None:
    assert parse_size_mib(text) == mib


@pytest.mark.parametrize("text", ["8T", "eight", "", True])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size_mib(text)


def test_accelerator_resolution() -> None:
    assert resolve_accelerator("tcg", kvm_usable=False) == "tcg"
    assert resolve_accelerator("auto", kvm_usable=True) == "kvm"
    assert resolve_accelerator("kvm", kvm_usable=True) == "kvm"
    for wanted in ("auto", "kvm"):
        with pytest.raises(UsageError, match="KVM unavailable: deploy on bare metal"):
            resolve_accelerator(wanted, kvm_usable=False)  # type: ignore[arg-type]
