"""charmcraft.yaml and lxd-profile.yaml: structure charmcraft and Juju expect (charmcraft cannot
pack here, so these checks stand in for `charmcraft pack`'s validation of what matters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from openeuler_image_builder.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHARMCRAFT: dict[str, Any] = yaml.safe_load((ROOT / "charmcraft.yaml").read_text())
OPTIONS: dict[str, dict[str, Any]] = CHARMCRAFT["config"]["options"]
JUJU_TYPES = {"string", "int", "float", "boolean", "secret"}


def test_identity_and_bases() -> None:
    assert CHARMCRAFT["type"] == "charm"
    assert CHARMCRAFT["name"] == "openeuler-image-builder"
    assert CHARMCRAFT["title"]
    assert CHARMCRAFT["summary"]
    assert len(CHARMCRAFT["description"].split()) > 50  # a real description
    assert "bases" not in CHARMCRAFT  # the legacy form; base/platforms instead
    assert set(CHARMCRAFT["platforms"]) == {
        "ubuntu@22.04:amd64",
        "ubuntu@22.04:arm64",
        "ubuntu@24.04:amd64",
        "ubuntu@24.04:arm64",
    }
    assert CHARMCRAFT["assumes"] == ["juju >= 3.6"]


def test_parts_ship_the_code_and_the_templates() -> None:
    parts = CHARMCRAFT["parts"]
    assert parts["charm"]["plugin"] == "uv"
    assert parts["charm"]["source"] == "."
    assert "astral-uv" in parts["charm"]["build-snaps"]
    # The uv plugin ships only src/ and lib/: templates/ needs its own dump part.
    dump = [part for part in parts.values() if part["plugin"] == "dump"]
    assert len(dump) == 1
    assert dump[0]["source"] == "."
    assert dump[0]["stage"] == ["templates"]
    assert (ROOT / "templates").is_dir()
    assert any((ROOT / "templates").rglob("*.j2"))


def test_actions_live_in_actions_yaml_only() -> None:
    assert "actions" not in CHARMCRAFT  # charmcraft refuses both
    actions = yaml.safe_load((ROOT / "actions.yaml").read_text())
    assert {
        "build-image",
        "build-status",
        "cancel-build",
        "upload-image",
        "list-images",
        "delete-image",
    } <= set(actions)


def test_relations_and_resources() -> None:
    assert CHARMCRAFT["requires"]["maas-region"] == {
        "interface": "maas_controller",
        "optional": True,
        "limit": 1,
        "description": CHARMCRAFT["requires"]["maas-region"]["description"],
    }
    assert "provides" not in CHARMCRAFT
    assert CHARMCRAFT["peers"]["builders"]["interface"]
    resources = CHARMCRAFT["resources"]
    assert set(resources) == {"packer", "packer-qemu-plugin"}
    for resource in resources.values():
        assert resource["type"] == "file"
        assert resource["filename"].endswith(".zip")
        assert "SHA256SUMS" in resource["description"]


def test_every_setting_is_an_option_and_back() -> None:
    fields = {name.replace("_", "-") for name in Settings.model_fields}
    assert set(OPTIONS) == fields | {"maas-api-key"}


def test_maas_api_key_is_a_secret_without_default() -> None:
    assert OPTIONS["maas-api-key"]["type"] == "secret"
    assert "default" not in OPTIONS["maas-api-key"]
    for command in ("juju add-secret", "juju grant-secret", "juju config"):
        assert command in OPTIONS["maas-api-key"]["description"]


@pytest.mark.parametrize("option", sorted(set(OPTIONS) - {"maas-api-key"}))
def test_option_has_type_default_and_description(option: str) -> None:
    spec = OPTIONS[option]
    assert spec["type"] in JUJU_TYPES
    assert "default" in spec
    assert len(spec["description"].split()) >= 8
    python_type = {"string": str, "int": int, "boolean": bool, "float": float}[spec["type"]]
    assert isinstance(spec["default"], python_type)


@pytest.mark.parametrize("option", sorted(set(OPTIONS) - {"maas-api-key"}))
def test_defaults_equal_the_settings_defaults(option: str) -> None:
    field = option.replace("-", "_")
    parsed = Settings.from_mapping({option: OPTIONS[option]["default"]})
    assert getattr(parsed, field) == getattr(Settings(), field)


def test_lxd_profile_passes_kvm_only_with_allowed_keys() -> None:
    profile = yaml.safe_load((ROOT / "lxd-profile.yaml").read_text())
    assert set(profile) <= {"description", "config", "devices"}
    for key in profile.get("config", {}):
        assert not key.startswith(("boot", "limits", "migration")), key
    devices = profile["devices"]
    assert {"type": "unix-char", "path": "/dev/kvm"} in devices.values()
    for device in devices.values():
        assert device["type"] in {"unix-char", "unix-block", "gpu", "usb"}
