"""upload_image() against the MAAS API double (tests/fixtures/maas_double.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.maas_double import API_PREFIX, MaasDouble

from openeuler_image_builder import maas
from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.image_names import manifest_path_for
from openeuler_image_builder.maas import upload as maas_upload

RELEASE = catalogue.resolve("24.03-LTS-SP3")
MiB = 1024 * 1024


class Recorder:
    """A progress reporter that keeps every report."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, float | None, str]] = []

    def __call__(self, phase: str, percent: float | None, detail: str = "") -> None:
        self.reports.append((phase, percent, detail))

    def percents(self, phase: str) -> list[float]:
        return [p for ph, p, _ in self.reports if ph == phase and p is not None]


def client_for(double: MaasDouble, key: str | None = None, **options: object) -> maas.MaasClient:
    options.setdefault("backoff", 0.01)
    return maas.MaasClient(double.url, key or double.admin_key, **options)  # type: ignore[arg-type]


def puts(double: MaasDouble) -> list:
    return [r for r in double.requests if r.method == "PUT"]


def only_uploaded(double: MaasDouble) -> dict:
    uploaded = double.uploaded()
    assert len(uploaded) == 1, uploaded
    return uploaded[0]


def newest(resource: dict) -> dict:
    found = maas.newest_set(resource)
    assert found is not None
    return found[1]


def test_full_multi_chunk_upload_custom_name(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=9 * MiB + 12345)
    progress = Recorder()
    with client_for(maas_double) as client:
        result = maas.upload_image(
            client, tarball, release=RELEASE, arch="x86_64", progress=progress
        )

    assert result.status == "uploaded"
    assert result.name == "custom/openeuler-24.03-lts-sp3"
    assert result.architecture == "amd64/generic"
    assert result.size == tarball.stat().st_size
    assert result.sha256 == hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert result.facts_source == "manifest"
    # One read of the file, no hashing pass: the manifest gave sha256 and size.
    assert result.bytes_read == result.size
    assert result.bytes_sent == result.size
    assert result.attempts == 1

    [post] = maas_double.posts()
    assert post.fields == {
        "name": "custom/openeuler-24.03-lts-sp3",
        "architecture": "amd64/generic",
        "title": "openEuler 24.03 LTS SP3",
        "filetype": "tgz",
        "sha256": result.sha256,
        "size": str(result.size),
        "base_image": "rhel/9",
    }
    chunk_puts = puts(maas_double)
    assert [p.body_size for p in chunk_puts] == [4 * MiB, 4 * MiB, MiB + 12345]
    assert all(p.status == 200 for p in chunk_puts)

    resource = only_uploaded(maas_double)
    assert resource["name"] == "openeuler-24.03-lts-sp3"  # MAAS 3.6 strips custom/
    assert resource["base_image"] == "rhel/9"
    assert resource["title"] == "openEuler 24.03 LTS SP3"
    assert newest(resource)["complete"] is True
    assert maas_double.content(resource["id"]) == tarball.read_bytes()

    uploads = progress.percents("upload")
    assert uploads == sorted(uploads) and uploads[-1] == 100
    assert progress.percents("sync")[-1] == 100


def test_rhel_scheme_sends_no_base_image(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=3 * MiB)
    with client_for(maas_double) as client:
        result = maas.upload_image(client, tarball, release=RELEASE, arch="x86_64", scheme="rhel")
    assert result.name == "rhel/openeuler-24.03-lts-sp3"
    [post] = maas_double.posts()
    assert "base_image" not in post.fields
    assert post.fields["name"] == "rhel/openeuler-24.03-lts-sp3"
    resource = only_uploaded(maas_double)
    assert resource["name"] == "rhel/openeuler-24.03-lts-sp3"
    assert "base_image" not in resource


def test_explicit_names_pick_the_scheme(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=MiB)
    with client_for(maas_double) as client:
        maas.upload_image(client, tarball, release=RELEASE, arch="x86_64", name="oe-lab")
        maas.upload_image(
            client, tarball, release=RELEASE, arch="x86_64", name="rhel/oe-lab", title="Lab"
        )
    first, second = maas_double.posts()
    assert first.fields["name"] == "custom/oe-lab" and first.fields["base_image"] == "rhel/9"
    assert second.fields["name"] == "rhel/oe-lab" and "base_image" not in second.fields
    assert second.fields["title"] == "Lab"


@pytest.mark.parametrize("bad", ["ubuntu/oe", "centos/x", "custom/a/b", "custom/", "custom/ x"])
def test_names_outside_custom_and_rhel_are_refused(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path], bad: str
) -> None:
    tarball = maas_test_image(size=MiB)
    with client_for(maas_double) as client, pytest.raises(UsageError, match="MAAS image name"):
        maas.upload_image(client, tarball, release=RELEASE, arch="x86_64", name=bad)
    assert maas_double.requests == []


def test_aarch64_uses_arm64_and_rhel8_base_for_22_03(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    release = catalogue.resolve("22.03")
    tarball = maas_test_image(release=release.name, arch="aarch64", size=MiB)
    with client_for(maas_double) as client:
        result = maas.upload_image(client, tarball, release=release, arch="aarch64")
    assert result.architecture == "arm64/generic"
    [post] = maas_double.posts()
    assert post.fields["base_image"] == "rhel/8"
    assert post.fields["name"] == "custom/openeuler-22.03-lts-sp4"


def test_reupload_of_the_same_image_does_nothing(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=5 * MiB)
    with client_for(maas_double) as client:
        first = maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
        requests_before = len(maas_double.requests)
        second = maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
    assert first.status == "uploaded"
    assert second.status == "already-present"
    assert second.resource_id == first.resource_id
    assert second.set_version == first.set_version
    assert second.bytes_read == 0 and second.bytes_sent == 0
    later = maas_double.requests[requests_before:]
    assert {r.method for r in later} == {"GET"}, "no POST (it would add a set), no PUT"
    assert len(newest(only_uploaded(maas_double))["files"]) == 1
    assert "already in MAAS" in second.message


def test_new_build_replaces_the_previous_set(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path], tmp_path: Path
) -> None:
    old = maas_test_image(size=2 * MiB, seed=1, directory=tmp_path / "old")
    new = maas_test_image(size=2 * MiB + 7, seed=2, directory=tmp_path / "new")
    with client_for(maas_double) as client:
        maas.upload_image(client, old, release=RELEASE, arch="x86_64")
        result = maas.upload_image(client, new, release=RELEASE, arch="x86_64")
    assert result.status == "uploaded"
    resource = only_uploaded(maas_double)
    assert len(resource["sets"]) == 2
    assert newest(resource)["files"]["root.tgz"]["sha256"] == result.sha256
    assert maas_double.content(resource["id"]) == new.read_bytes()


def test_post_answering_a_complete_set_stops(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=MiB)
    # The same content is already in MAAS under another name: MAAS answers the POST with a
    # complete set (reference section 5, step 3), so nothing is uploaded.
    maas_double.add_uploaded("other-name", "amd64/generic", tarball.read_bytes())
    with client_for(maas_double) as client:
        result = maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
    assert result.status == "already-present"
    assert len(maas_double.posts()) == 1
    assert puts(maas_double) == []


def test_survives_injected_503s(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=9 * MiB)
    maas_double.fail_next("GET", "boot-resources/", times=1)
    maas_double.fail_next("POST", "boot-resources/", times=1)
    maas_double.fail_next("PUT", "/upload/", times=2, skip=1)
    with client_for(maas_double) as client:
        result = maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
    assert result.status == "uploaded" and result.attempts == 1
    assert [r.status for r in puts(maas_double)] == [200, 503, 503, 200, 200]
    resource = only_uploaded(maas_double)
    assert maas_double.content(resource["id"]) == tarball.read_bytes()


def test_survives_a_reset_in_the_middle_of_a_chunk(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=9 * MiB)
    maas_double.reset_next("PUT", "/upload/", skip=1, after_bytes=MiB)
    with client_for(maas_double) as client:
        result = maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
    assert result.status == "uploaded" and result.attempts == 1
    assert [r.fault for r in puts(maas_double)] == [None, "reset", None, None]
    assert maas_double.content(only_uploaded(maas_double)["id"]) == tarball.read_bytes()


@pytest.mark.parametrize("regions", [1, 3])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_a_lost_response_does_not_duplicate_the_chunk(
    maas_double_factory: Callable[..., MaasDouble],
    maas_test_image: Callable[..., Path],
    regions: int,
    which: int,
) -> None:
    # MAAS stored the chunk but the answer never came: sending it again would append it twice.
    double = maas_double_factory(regions=regions, sync_delay=0.3)
    tarball = maas_test_image(size=9 * MiB)
    double.reset_after_next("PUT", "/upload/", skip=which)
    with client_for(double) as client:
        result = maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
    assert result.status == "uploaded" and result.attempts == 1
    chunk_puts = puts(double)
    assert chunk_puts[which].fault == "reset-after"
    assert len(chunk_puts) == 3, "the stored chunk was not sent again"
    assert double.content(only_uploaded(double)["id"]) == tarball.read_bytes()


def test_single_chunk_image_with_a_lost_response(
    maas_double_factory: Callable[..., MaasDouble], maas_test_image: Callable[..., Path]
) -> None:
    double = maas_double_factory(regions=2, sync_delay=0.0)
    tarball = maas_test_image(size=MiB)
    double.reset_after_next("PUT", "/upload/")
    with client_for(double) as client:
        result = maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
    assert result.status == "uploaded"
    assert len(puts(double)) == 1


def test_unknowable_state_deletes_the_set_and_starts_over(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=9 * MiB)
    # The read after the first chunk (which tells the region count) fails, then the answer to
    # the second chunk is lost: MAAS's copy cannot be matched to a chunk, so start over.
    maas_double.fail_next("GET", "boot-resources/", skip=1, times=2)
    maas_double.reset_after_next("PUT", "/upload/", skip=1)
    with client_for(maas_double, retries=1) as client:
        result = maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
    assert result.status == "uploaded"
    assert result.attempts == 2
    deletes = [r for r in maas_double.requests if r.method == "DELETE"]
    assert len(deletes) == 1 and deletes[0].status == 204
    resource = only_uploaded(maas_double)  # the first one is gone
    assert resource["id"] == result.resource_id
    assert maas_double.content(resource["id"]) == tarball.read_bytes()


def test_too_much_data_starts_over(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=5 * MiB)
    maas_double.fail_next("PUT", "/upload/", 400, skip=1, body="Too much data received.")
    with client_for(maas_double) as client:
        result = maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
    assert result.attempts == 2
    assert len(maas_double.posts()) == 2
    assert maas_double.content(only_uploaded(maas_double)["id"]) == tarball.read_bytes()


def test_gives_up_after_bounded_attempts_and_leaves_nothing(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=5 * MiB)
    maas_double.fail_next("PUT", "/upload/", 400, times=10, body="Too much data received.")
    with client_for(maas_double) as client, pytest.raises(StepFailed) as caught:
        maas.upload_image(client, tarball, release=RELEASE, arch="x86_64", max_attempts=3)
    assert caught.value.step == "upload"
    assert "gave up after 3 attempts" in str(caught.value)
    assert "Too much data received." in str(caught.value)
    assert len(maas_double.posts()) == 3
    assert maas_double.uploaded() == []


def test_persistent_5xx_fails_and_removes_the_incomplete_set(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=5 * MiB)
    maas_double.fail_next("PUT", "/upload/", 503, times=100, skip=1)
    with client_for(maas_double, retries=2) as client, pytest.raises(StepFailed) as caught:
        maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
    message = str(caught.value)
    assert message.startswith("upload failed: MAAS is unreachable at ")
    assert "HTTP 503 on 3 tries in a row" in message
    assert "the incomplete upload was removed from MAAS" in message
    assert maas_double.uploaded() == []


def test_sha256_mismatch_reports_maas_text_and_the_cause(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=9 * MiB)
    manifest = manifest_path_for(tarball)
    data = json.loads(manifest.read_text())
    data["sha256"] = "0" * 64  # a manifest that does not belong to this tarball
    manifest.write_text(json.dumps(data))
    with client_for(maas_double) as client, pytest.raises(StepFailed) as caught:
        maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
    message = str(caught.value)
    assert "Saved content does not match given SHA256 value." in message  # MAAS's text
    assert f"its manifest {manifest} says {'0' * 64}" in message
    assert "the incomplete upload was removed from MAAS" in message
    assert [p.status for p in puts(maas_double)][-1] == 400
    assert maas_double.uploaded() == []


def test_non_admin_key_is_refused_clearly(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=MiB)
    with (
        client_for(maas_double, maas_double.user_key) as client,
        pytest.raises(maas.MaasNotAdmin) as caught,
    ):
        maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
    assert "the API key's user is not a MAAS admin" in str(caught.value)
    assert isinstance(caught.value, UsageError)
    assert maas_double.uploaded() == []


def test_unknown_key_is_rejected_clearly(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=MiB)
    with (
        client_for(maas_double, maas_double.unknown_key) as client,
        pytest.raises(maas.MaasKeyRejected, match="MAAS rejected the API key"),
    ):
        maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")


def test_unusable_architecture(
    maas_double_factory: Callable[..., MaasDouble], maas_test_image: Callable[..., Path]
) -> None:
    double = maas_double_factory(usable_architectures=("amd64/generic",))
    tarball = maas_test_image(arch="aarch64", size=MiB)
    with client_for(double) as client, pytest.raises(StepFailed) as caught:
        maas.upload_image(client, tarball, release=RELEASE, arch="aarch64")
    assert str(caught.value) == (
        "upload failed: MAAS has no boot images for arm64/generic: "
        "import Ubuntu arm64 images first"
    )
    assert double.uploaded() == []


def test_other_maas_errors_carry_maas_text(
    maas_double_factory: Callable[..., MaasDouble], maas_test_image: Callable[..., Path]
) -> None:
    # "openeuler-x" made reserved by the (stand-in) SimpleStreams list.
    double = maas_double_factory(simplestreams=("ubuntu/noble", "custom/openeuler-lab"))
    tarball = maas_test_image(size=MiB)
    with client_for(double) as client, pytest.raises(StepFailed) as caught:
        maas.upload_image(client, tarball, release=RELEASE, arch="x86_64", name="openeuler-lab")
    assert str(caught.value) == (
        "upload failed: creating boot resource custom/openeuler-lab (amd64/generic): "
        "MAAS answered HTTP 400: name: openeuler-lab is a reserved name"
    )


@pytest.mark.parametrize("version", ["3.6.2", "3.8.0"])
def test_stored_name_with_and_without_custom_prefix(
    maas_double_factory: Callable[..., MaasDouble],
    maas_test_image: Callable[..., Path],
    version: str,
) -> None:
    double = maas_double_factory(version=version)
    tarball = maas_test_image(size=2 * MiB)
    with client_for(double) as client:
        first = maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
        again = maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
        [image] = maas.list_images(client)
        assert maas.delete_image(client, "custom/openeuler-24.03-lts-sp3", "x86_64")
        assert not maas.delete_image(client, "custom/openeuler-24.03-lts-sp3", "x86_64")
    stored = "custom/openeuler-24.03-lts-sp3" if version == "3.8.0" else "openeuler-24.03-lts-sp3"
    assert first.status == "uploaded" and again.status == "already-present"
    assert image.stored_name == stored
    assert image.name == "custom/openeuler-24.03-lts-sp3"
    assert double.uploaded() == []


def test_waits_until_every_region_has_the_image(
    maas_double_factory: Callable[..., MaasDouble], maas_test_image: Callable[..., Path]
) -> None:
    double = maas_double_factory(regions=3, sync_delay=0.6)
    tarball = maas_test_image(size=5 * MiB)
    progress = Recorder()
    with client_for(double) as client:
        result = maas.upload_image(
            client, tarball, release=RELEASE, arch="x86_64", progress=progress
        )
    assert result.status == "uploaded"
    assert newest(only_uploaded(double))["complete"] is True
    syncs = progress.percents("sync")
    assert syncs[0] < 100 and syncs[-1] == 100
    assert any(33 < p < 100 for p in syncs), syncs  # the copies were followed


def test_sync_timeout_fails_but_keeps_the_uploaded_set(
    maas_double_factory: Callable[..., MaasDouble], maas_test_image: Callable[..., Path]
) -> None:
    double = maas_double_factory(regions=2, sync_delay=3600)
    tarball = maas_test_image(size=MiB)
    with client_for(double) as client, pytest.raises(StepFailed) as caught:
        maas.upload_image(client, tarball, release=RELEASE, arch="x86_64", sync_timeout=0.5)
    assert "has not copied custom/openeuler-24.03-lts-sp3 to every region controller" in str(
        caught.value
    )
    # The file is whole on one region and MAAS keeps copying: nothing is deleted.
    resource = only_uploaded(double)
    assert 50 <= newest(resource)["progress"] < 51


def test_without_a_manifest_the_file_is_hashed(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=5 * MiB, manifest=False)
    progress = Recorder()
    with client_for(maas_double) as client:
        result = maas.upload_image(
            client, tarball, release=RELEASE, arch="x86_64", progress=progress
        )
    assert result.facts_source == "hashed"
    assert result.sha256 == hashlib.sha256(tarball.read_bytes()).hexdigest()
    # Hashing reads the file once, the upload once more: with a manifest only the upload.
    assert result.bytes_read == result.size
    assert any(detail == "computing sha256" for _, _, detail in progress.reports)


def test_a_manifest_older_than_the_tarball_is_not_trusted(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=MiB)
    manifest = manifest_path_for(tarball)
    data = json.loads(manifest.read_text())
    data["sha256"] = "f" * 64
    manifest.write_text(json.dumps(data))
    later = manifest.stat().st_mtime + 60
    os.utime(tarball, (later, later))
    with client_for(maas_double) as client:
        result = maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
    assert result.facts_source == "hashed"
    assert result.sha256 == hashlib.sha256(tarball.read_bytes()).hexdigest()


def test_manifest_size_disagreeing_with_the_file_is_bad_input(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=MiB)
    with tarball.open("ab") as handle:
        handle.write(b"x")
    os.utime(manifest_path_for(tarball))  # keep the manifest the newer file
    with client_for(maas_double) as client, pytest.raises(UsageError) as caught:
        maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
    assert f"is {MiB + 1} bytes but its manifest says {MiB}" in str(caught.value)
    assert maas_double.requests == []


def test_manifest_of_another_arch_is_bad_input(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=MiB, arch="aarch64")
    with client_for(maas_double) as client, pytest.raises(UsageError, match="--arch aarch64"):
        maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
    assert maas_double.requests == []


def test_chunks_above_the_body_limit_fail_with_maas_text(
    maas_double_factory: Callable[..., MaasDouble], maas_test_image: Callable[..., Path]
) -> None:
    double = maas_double_factory(body_limit=2 * MiB)
    tarball = maas_test_image(size=5 * MiB)
    with client_for(double) as client, pytest.raises(StepFailed) as caught:
        maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
    assert "HTTP 413: 413 Request Entity Too Large" in str(caught.value)
    assert double.uploaded() == []


def test_chunk_size_is_bounded() -> None:
    with pytest.raises(UsageError, match="chunk size"):
        maas.upload_image(
            maas.MaasClient("http://127.0.0.1:9/MAAS", "a:b:c"),
            Path("/nonexistent.tar.gz"),
            release=RELEASE,
            arch="x86_64",
            chunk_size=12 * MiB,
        )


def test_cancel_during_upload_removes_the_incomplete_set(
    maas_double: MaasDouble, maas_test_image: Callable[..., Path]
) -> None:
    tarball = maas_test_image(size=9 * MiB)

    def cancel_at_half(phase: str, percent: float | None, detail: str = "") -> None:
        if phase == "upload" and percent is not None and 40 < percent < 100:
            raise KeyboardInterrupt

    with client_for(maas_double) as client, pytest.raises(KeyboardInterrupt):
        maas.upload_image(client, tarball, release=RELEASE, arch="x86_64", progress=cancel_at_half)
    assert len(maas_double.posts()) == 1
    assert maas_double.uploaded() == []


def test_the_key_appears_in_no_log_record(
    maas_double: MaasDouble,
    maas_test_image: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    tarball = maas_test_image(size=9 * MiB)
    secret = maas_double.admin_key.split(":")[2]
    maas_double.fail_next("PUT", "/upload/", skip=1)
    maas_double.reset_next("PUT", "/upload/", skip=2)
    maas_double.reset_after_next("PUT", "/upload/", skip=3)
    caplog.set_level(logging.DEBUG)  # root: requests, urllib3 and ours
    for name in ("urllib3", "requests", "openeuler_image_builder"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    errors: list[str] = []
    with client_for(maas_double) as client:
        maas.check_credentials(client)
        result = maas.upload_image(client, tarball, release=RELEASE, arch="x86_64")
        errors.append(repr(client))
    with client_for(maas_double, maas_double.user_key) as client:
        try:
            maas.upload_image(client, tarball, release=RELEASE, arch="x86_64", name="x2")
        except UsageError as error:
            errors.append(str(error))
    assert result.status == "uploaded"
    assert any(r.name.startswith("urllib3") for r in caplog.records), "urllib3 was captured"
    texts = [r.getMessage() for r in caplog.records] + [str(r.args) for r in caplog.records]
    assert texts and errors
    for text in texts + errors:
        assert secret not in text
        assert "UserSecret333" not in text
    assert "oauth_signature" not in caplog.text


def test_newest_set_compares_versions_as_numbers() -> None:
    resource = {"sets": {"20261127.9": {"v": 9}, "20261127.10": {"v": 10}, "20261126": {}}}
    assert maas.newest_set(resource) == ("20261127.10", {"v": 10})
    assert maas.newest_set({"sets": {}}) is None


def test_server_offset_decisions() -> None:
    facts = maas.ImageFacts(Path("x"), "0" * 64, 10 * MiB, "manifest")
    target = maas.UploadTarget("custom/x", "amd64/generic", "x", "rhel/9")
    uploader = maas_upload._Uploader(
        maas.MaasClient("http://127.0.0.1:9/MAAS", "a:b:c"),
        facts,
        target,
        progress=Recorder(),
        chunk_size=4 * MiB,
        sync_timeout=1,
        max_attempts=1,
    )
    size, chunk = 10 * MiB, 4 * MiB

    def progress(held: int, regions: int) -> dict:
        return {"complete": False, "progress": 100.0 * held / (size * regions)}

    offset = uploader.server_offset
    # First chunk: nothing held -> resend; held -> stored, and the region count is learnt.
    assert offset(progress(0, 3), 0, chunk, None) == (0, None)
    assert offset(progress(chunk, 3), 0, chunk, None) == (chunk, 3)
    # Known region count: exact offsets, either side of the chunk.
    assert offset(progress(chunk, 3), chunk, chunk, 3) == (chunk, 3)
    assert offset(progress(2 * chunk, 3), chunk, chunk, 3) == (2 * chunk, 3)
    # Neither side of the chunk, or region count unknown after the first chunk: unsafe.
    assert offset(progress(chunk + 5, 3), chunk, chunk, 3) == (None, 3)
    assert offset(progress(chunk, 1), chunk, chunk, None) == (None, None)
    # Last chunk stored, the other regions already copying: whole.
    held = size + size // 2
    assert offset(progress(held, 3), 2 * chunk, size - 2 * chunk, 3) == (size, 3)
    assert offset({"complete": True}, 2 * chunk, size - 2 * chunk, 3) == (size, 3)
    assert offset(progress(0, 3), chunk, chunk, 3) == (None, 3)


def test_upload_paths_are_joined_with_the_api_host(maas_double: MaasDouble) -> None:
    client = maas.MaasClient(maas_double.url + "/", maas_double.admin_key)
    assert client.endpoint(API_PREFIX + "boot-resources/1/upload/2/") == (
        maas_double.url + "/api/2.0/boot-resources/1/upload/2/"
    )
