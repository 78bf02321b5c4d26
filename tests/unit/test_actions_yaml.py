"""actions.yaml: every action strict and described, with a valid JSON schema."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from openeuler_image_builder.unit import action_params

ROOT = Path(__file__).resolve().parents[2]
ACTIONS: dict[str, Any] = yaml.safe_load((ROOT / "actions.yaml").read_text())
EXPECTED = {
    "build-image": ({"release", "upload", "force", "wait"}, ["release"]),
    "build-status": ({"release"}, []),
    "cancel-build": ({"release"}, ["release"]),
    "upload-image": ({"release", "name", "title"}, ["release"]),
    "list-images": (set(), []),
    "delete-image": ({"release", "from-maas"}, ["release"]),
}
PARAM_CLASSES = {
    "build-image": action_params.BuildImageParams,
    "build-status": action_params.BuildStatusParams,
    "cancel-build": action_params.CancelBuildParams,
    "upload-image": action_params.UploadImageParams,
    "list-images": action_params.ListImagesParams,
    "delete-image": action_params.DeleteImageParams,
}
ALLOWED_KEYS = {
    "description",
    "params",
    "required",
    "additionalProperties",
    "parallel",
    "execution-group",
}


def schema_of(name: str) -> dict[str, Any]:
    """The JSON schema Juju validates an action's parameters against."""
    action = ACTIONS[name]
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": action.get("params") or {},
        "required": action.get("required", []),
        "additionalProperties": action["additionalProperties"],
    }


def test_exactly_the_actions_of_the_issue() -> None:
    assert set(ACTIONS) == set(EXPECTED)


def test_charmcraft_yaml_does_not_also_define_actions() -> None:
    charmcraft = ROOT / "charmcraft.yaml"
    if not charmcraft.exists():
        pytest.skip("charmcraft.yaml not present")
    assert "actions" not in (yaml.safe_load(charmcraft.read_text()) or {})


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_action_is_strict_and_described(name: str) -> None:
    action = ACTIONS[name]
    assert set(action) <= ALLOWED_KEYS
    assert action["additionalProperties"] is False
    assert len(action["description"]) > 60
    params, required = EXPECTED[name]
    assert set(action.get("params") or {}) == params
    assert sorted(action.get("required", [])) == sorted(required)
    for param, spec in (action.get("params") or {}).items():
        assert spec.get("type") in ("string", "boolean"), param
        assert len(spec.get("description", "")) > 40, f"{name}.{param} needs a description"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_action_schema_is_valid_json_schema(name: str) -> None:
    jsonschema.Draft7Validator.check_schema(schema_of(name))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_no_action_takes_the_machine_lock(name: str) -> None:
    # parallel without an execution-group: documented at the top of actions.yaml.
    assert ACTIONS[name].get("parallel") is True
    assert "execution-group" not in ACTIONS[name]


def test_upload_has_no_schema_default_and_says_it_follows_auto_upload() -> None:
    upload = ACTIONS["build-image"]["params"]["upload"]
    assert "default" not in upload
    assert "auto-upload" in upload["description"]
    assert ACTIONS["build-image"]["params"]["wait"]["default"] is False
    assert ACTIONS["build-image"]["params"]["force"]["default"] is False
    assert ACTIONS["delete-image"]["params"]["from-maas"]["default"] is False


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("build-image", {"release": "22.03"}),
        (
            "build-image",
            {"release": "24.03-LTS-SP2", "upload": False, "force": True, "wait": True},
        ),
        ("build-status", {}),
        ("build-status", {"release": "24.03"}),
        ("cancel-build", {"release": "24.03"}),
        ("upload-image", {"release": "24.03", "name": "custom/oe", "title": "openEuler"}),
        ("list-images", {}),
        ("delete-image", {"release": "24.03", "from-maas": True}),
    ],
)
def test_good_parameters_pass_schema_and_params_class(name: str, params: dict[str, Any]) -> None:
    jsonschema.validate(params, schema_of(name))
    # As ops' load_params does: dashes become underscores.
    loaded = PARAM_CLASSES[name](**{k.replace("-", "_"): v for k, v in params.items()})
    assert dataclasses.is_dataclass(loaded)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("build-image", {}),
        ("build-image", {"release": ""}),
        ("build-image", {"release": "22.03", "upload_": True}),
        ("build-image", {"release": "22.03", "upload": "yes"}),
        ("build-status", {"releases": "22.03"}),
        ("cancel-build", {}),
        ("upload-image", {"release": "22.03", "title": "x" * 101}),
        ("list-images", {"all": True}),
        ("delete-image", {"release": "22.03", "from_maas": True}),
    ],
)
def test_bad_parameters_are_refused_by_the_schema(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(params, schema_of(name))


def test_params_classes_accept_exactly_the_schema_names() -> None:
    for name, cls in PARAM_CLASSES.items():
        fields = {field.name.replace("_", "-") for field in dataclasses.fields(cls)}
        assert fields == EXPECTED[name][0], name
