"""Action parameter classes and the decisions actions share (upload choice, running job)."""

from __future__ import annotations

import dataclasses

import pytest
from fixtures.charm_ops import make_job

from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.settings import KVM_UNAVAILABLE
from openeuler_image_builder.unit.action_params import (
    BuildImageParams,
    BuildStatusParams,
    CancelBuildParams,
    DeleteImageParams,
    UploadImageParams,
    already_running_message,
    build_refusal,
    decide_upload,
    missing_maas_config,
    running_job_for,
)


def test_release_aliases_resolve() -> None:
    assert BuildImageParams("22.03").target.name == "22.03-LTS-SP4"
    assert BuildStatusParams().target is None
    assert BuildStatusParams("24.03-LTS").target.name == "24.03-LTS"  # type: ignore[union-attr]
    assert CancelBuildParams("24.03-sp2").target.name == "24.03-LTS-SP2"
    assert DeleteImageParams("24.03", from_maas=True).target.name == "24.03-LTS-SP4"


@pytest.mark.parametrize(
    "make",
    [
        lambda: BuildImageParams("21.09"),
        lambda: BuildStatusParams("nope"),
        lambda: CancelBuildParams(""),
        lambda: UploadImageParams("9"),
        lambda: DeleteImageParams("22.04"),
    ],
)
def test_bad_release_is_one_line_naming_the_valid_values(make) -> None:
    with pytest.raises(ValueError) as caught:
        make()
    message = str(caught.value)
    assert "\n" not in message
    assert "unknown openEuler release" in message
    assert "24.03-LTS-SP2" in message and "22.03" in message


@pytest.mark.parametrize("name", ["custom/openeuler-24.03-lts-sp2", "rhel/oe-24", "oe24"])
def test_good_maas_names(name: str) -> None:
    assert UploadImageParams("24.03", name=name).name == name


@pytest.mark.parametrize("name", ["Custom/Oe", "ubuntu/noble", "custom/", "a b", "custom/x/y"])
def test_bad_maas_names(name: str) -> None:
    with pytest.raises(
        ValueError, match="not a MAAS image name: use custom/<name> or rhel/<name>"
    ):
        UploadImageParams("24.03", name=name)


def test_bad_titles() -> None:
    with pytest.raises(ValueError, match="one line of at most 100"):
        UploadImageParams("24.03", title="a\nb")
    with pytest.raises(ValueError, match="one line of at most 100"):
        UploadImageParams("24.03", title="x" * 101)


def test_missing_maas_config_names_each_missing_option() -> None:
    assert missing_maas_config("http://10.0.0.2:5240/MAAS", True) is None
    url_only = missing_maas_config("", True)
    assert url_only == "set maas-url (or integrate with maas-region)"
    key_only = missing_maas_config("http://m/MAAS", False)
    assert key_only is not None and key_only.startswith("set maas-api-key to a Juju secret")
    both = missing_maas_config("", False)
    assert both is not None and "maas-url" in both and "maas-api-key" in both


def test_upload_choice() -> None:
    missing = "set maas-url (or integrate with maas-region)"
    assert decide_upload(None, auto_upload=True, maas_missing=None).upload is True
    assert decide_upload(None, auto_upload=False, maas_missing=None).upload is False
    quiet = decide_upload(None, auto_upload=True, maas_missing=missing)
    assert quiet.upload is False and "not configured" in quiet.note
    assert decide_upload(False, auto_upload=True, maas_missing=None).upload is False
    assert decide_upload(True, auto_upload=False, maas_missing=None).upload is True
    with pytest.raises(UsageError, match=r"^upload=true needs MAAS: set maas-url"):
        decide_upload(True, auto_upload=True, maas_missing=missing)


def test_already_running_names_the_job_and_the_actions() -> None:
    job = make_job("24.03-LTS-SP2")
    message = already_running_message(job)
    assert job.id in message
    assert "cancel-build release=24.03-LTS-SP2" in message
    assert "\n" not in message


def test_running_job_for_cancel() -> None:
    done = make_job("24.03-LTS-SP2", result="succeeded")
    running = make_job("22.03-LTS-SP4")
    assert running_job_for([done, running], "22.03-LTS-SP4", "x86_64") is running
    with pytest.raises(UsageError, match=r"running: 22\.03-LTS-SP4 \(x86_64, build\)"):
        running_job_for([done, running], "24.03-LTS-SP2", "x86_64")
    with pytest.raises(UsageError, match="running: none"):
        running_job_for([done], "24.03-LTS-SP2", "x86_64")


def test_build_refusal_says_why_a_build_cannot_start_here() -> None:
    release = catalogue.resolve("24.03")

    def refusal(**changes: object) -> str | None:
        facts: dict[str, object] = {
            "tools_installed": True,
            "install_error": "",
            "kvm_usable": True,
            **changes,
        }
        return build_refusal(release, "x86_64", **facts)  # type: ignore[arg-type]

    assert refusal() is None
    x86_only = dataclasses.replace(release, architectures=("x86_64",))
    assert build_refusal(
        x86_only, "aarch64", tools_installed=True, install_error="", kvm_usable=True
    ) == (f"{release.name} has no aarch64 ISO: it cannot be built on this unit")
    assert refusal(tools_installed=False) == (
        "the build tools are not installed yet: see 'juju status'"
    )
    assert refusal(install_error="apt failed") == (
        "the build tools are not installed yet (apt failed): see 'juju status'"
    )
    assert refusal(kvm_usable=False) == KVM_UNAVAILABLE
