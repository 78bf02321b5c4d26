"""Local image inventory: listing from manifests, digests, and deleting images safely."""

from __future__ import annotations

import datetime
import hashlib
import json
import threading
from pathlib import Path

import pytest
from fixtures.charm_ops import NOW, make_job, make_stored_image

from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.pipeline import images
from openeuler_image_builder.unit.inventory import (
    delete_local_image,
    list_local_images,
    manifest_path_for,
    newest_images,
    package_list_digest,
)

DAY = datetime.timedelta(days=1)


def new_dir(layout: StateLayout, release: str) -> Path:
    directory = images.next_image_dir(layout, release, "x86_64", now=NOW)
    directory.mkdir(parents=True)
    return directory


def test_empty_or_missing_store_lists_nothing(tmp_path: Path) -> None:
    assert list_local_images(StateLayout(tmp_path / "nowhere")) == []


def test_lists_images_with_manifest_facts_newest_first(ops_layout: StateLayout) -> None:
    old = make_stored_image(ops_layout, "24.03-LTS-SP2", built_at=NOW - DAY, uploaded=True)
    new = make_stored_image(ops_layout, "24.03-LTS-SP2", built_at=NOW)
    other = make_stored_image(ops_layout, "22.03-LTS-SP4", "aarch64", built_at=NOW - 2 * DAY)
    found = list_local_images(ops_layout)
    assert [image.path for image in found] == [new, old, other]
    first = found[0]
    assert first.release == "24.03-LTS-SP2"
    assert first.arch == "x86_64"
    assert first.sha256 == hashlib.sha256(new.read_bytes()).hexdigest()
    assert first.size == new.stat().st_size
    assert first.built_at == "2026-11-27T07:12:13Z"
    assert first.uploaded is False
    assert found[1].uploaded is True  # maas-upload.json beside it
    assert first.manifest_path == manifest_path_for(new)
    assert list_local_images(ops_layout, arch="aarch64")[0].path == other
    assert [i.path for i in list_local_images(ops_layout, release="22.03-LTS-SP4")] == [other]


def test_uploaded_checksums_from_history_count_as_uploaded(ops_layout: StateLayout) -> None:
    tarball = make_stored_image(ops_layout, "24.03-LTS-SP2")
    sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert list_local_images(ops_layout, uploaded_sha256s={sha})[0].uploaded is True


def test_build_in_progress_and_broken_manifests_are_not_images(ops_layout: StateLayout) -> None:
    in_progress = new_dir(ops_layout, "24.03-LTS-SP2")
    (in_progress / "openeuler-24.03-LTS-SP2-x86_64.tar.gz.partial").write_bytes(b"x")
    broken = new_dir(ops_layout, "22.03-LTS-SP4")
    (broken / images.tarball_name("22.03-LTS-SP4", "x86_64")).write_bytes(b"x")
    (broken / images.manifest_name("22.03-LTS-SP4", "x86_64")).write_text("{not json")
    no_sha = new_dir(ops_layout, "20.03-LTS-SP4")
    (no_sha / images.tarball_name("20.03-LTS-SP4", "x86_64")).write_bytes(b"x")
    (no_sha / images.manifest_name("20.03-LTS-SP4", "x86_64")).write_text(
        json.dumps({"release": "20.03-LTS-SP4", "arch": "x86_64"})
    )
    assert list_local_images(ops_layout) == []


def test_package_digest_ignores_order_and_duplicates() -> None:
    assert package_list_digest(["b", "a", "a"]) == package_list_digest(["a", "b"])
    assert package_list_digest(["a"]) != package_list_digest(["a", "b"])


def test_image_digest_follows_its_package_list(ops_layout: StateLayout) -> None:
    make_stored_image(ops_layout, "24.03-LTS-SP2", packages=["x-1", "y-2"], built_at=NOW - DAY)
    make_stored_image(ops_layout, "24.03-LTS-SP2", packages=["y-2", "x-1"])
    make_stored_image(ops_layout, "22.03-LTS-SP4", packages=["x-1", "y-3"])
    found = list_local_images(ops_layout)
    sp2 = [image.packages_digest for image in found if image.release == "24.03-LTS-SP2"]
    sp4 = [image.packages_digest for image in found if image.release == "22.03-LTS-SP4"]
    assert sp2 == [package_list_digest(["x-1", "y-2"])] * 2
    assert sp4 == [package_list_digest(["x-1", "y-3"])]


def test_newest_images_picks_one_per_release_and_arch(ops_layout: StateLayout) -> None:
    make_stored_image(ops_layout, "24.03-LTS-SP2", built_at=NOW - DAY)
    newest = make_stored_image(ops_layout, "24.03-LTS-SP2", built_at=NOW)
    picked = newest_images(list_local_images(ops_layout))
    assert list(picked) == [("24.03-LTS-SP2", "x86_64")]
    assert picked[("24.03-LTS-SP2", "x86_64")].path == newest


def test_manifest_path_for_tarball_names() -> None:
    assert manifest_path_for("/a/openeuler-x-x86_64.tar.gz") == Path(
        "/a/openeuler-x-x86_64.manifest.json"
    )
    assert manifest_path_for("/a/b.tgz") == Path("/a/b.manifest.json")


def test_delete_removes_every_version_of_one_release_only(ops_layout: StateLayout) -> None:
    first = make_stored_image(ops_layout, "24.03-LTS-SP2", built_at=NOW - DAY)
    second = make_stored_image(ops_layout, "24.03-LTS-SP2", built_at=NOW)
    kept = make_stored_image(ops_layout, "22.03-LTS-SP4")
    other_arch = make_stored_image(ops_layout, "24.03-LTS-SP2", "aarch64")
    deleted = delete_local_image(ops_layout, "24.03-LTS-SP2", "x86_64")
    assert {image.path for image in deleted} == {first, second}
    assert not first.parent.exists() and not second.parent.exists()
    assert {i.path for i in list_local_images(ops_layout)} == {kept, other_arch}
    # Nothing left behind: no trash directory, and the release's store directory is gone.
    assert sorted(p.name for p in ops_layout.images.iterdir()) == sorted(
        [kept.parent.parent.name, other_arch.parent.parent.name]
    )


def test_delete_accepts_an_alias_and_one_checksum(ops_layout: StateLayout) -> None:
    old = make_stored_image(ops_layout, "24.03-LTS-SP4", built_at=NOW - DAY)
    new = make_stored_image(ops_layout, "24.03-LTS-SP4", built_at=NOW, packages=["z-1"])
    sha = hashlib.sha256(old.read_bytes()).hexdigest()
    deleted = delete_local_image(ops_layout, "24.03", "amd64", sha256=sha)
    assert [image.path for image in deleted] == [old]
    assert [image.path for image in list_local_images(ops_layout)] == [new]


def test_delete_of_missing_image_lists_what_exists(ops_layout: StateLayout) -> None:
    make_stored_image(ops_layout, "22.03-LTS-SP4")
    with pytest.raises(
        UsageError,
        match=r"no local image of 24\.03-LTS-SP2 \(x86_64\).*"
        r"local images: 22\.03-LTS-SP4 \(x86_64\)",
    ):
        delete_local_image(ops_layout, "24.03-LTS-SP2", "x86_64")


def test_delete_of_unknown_release_names_valid_ones(ops_layout: StateLayout) -> None:
    with pytest.raises(UsageError, match=r"unknown openEuler release '99\.99'"):
        delete_local_image(ops_layout, "99.99", "x86_64")


def test_delete_refuses_while_an_upload_of_it_runs(ops_layout: StateLayout) -> None:
    tarball = make_stored_image(ops_layout, "24.03-LTS-SP2")
    upload = make_job(kind="upload", phase="upload", image=str(tarball))
    with pytest.raises(UsageError, match=f"running upload job {upload.id}.*cancel-build"):
        delete_local_image(ops_layout, "24.03-LTS-SP2", "x86_64", jobs=[upload])
    assert tarball.exists()
    finished = make_job(kind="upload", result="succeeded", image=str(tarball))
    assert delete_local_image(ops_layout, "24.03-LTS-SP2", "x86_64", jobs=[finished])


def test_delete_refuses_an_image_held_by_another_process(ops_layout: StateLayout) -> None:
    tarball = make_stored_image(ops_layout, "24.03-LTS-SP2")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with images.hold_image(tarball.parent):
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        with pytest.raises(UsageError, match="in use by a build or upload"):
            delete_local_image(ops_layout, "24.03-LTS-SP2", "x86_64")
        assert tarball.exists()
    finally:
        release.set()
        holder.join(10)
    assert delete_local_image(ops_layout, "24.03-LTS-SP2", "x86_64")
    assert not tarball.exists()
