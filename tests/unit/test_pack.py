"""pack without root: the manifest, partition tables and probes, facts read from a tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fixtures.disk_images import Package, build_rpmdb

from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.image_names import manifest_path_for
from openeuler_image_builder.pipeline import diskimage, pack, partitions, tarball
from openeuler_image_builder.pipeline.manifest import (
    Manifest,
    RpmFacts,
    cloud_init_from_source,
    kernel_version,
    read_rpmdb,
)
from openeuler_image_builder.pipeline.verify import resolve_in_root

SHA = "ab" * 32


def run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout


def parted_view(path: Path) -> dict[int, tuple[int, int]]:
    """number -> (start, size) as parted prints them."""
    found = {}
    for line in run("parted", "-m", "-s", str(path), "unit", "B", "print").splitlines():
        fields = line.rstrip(";").split(":")
        if fields[0].isdigit():
            found[int(fields[0])] = (int(fields[1][:-1]), int(fields[3][:-1]))
    return found


def blank(path: Path, mib: int) -> Path:
    with path.open("wb") as stream:
        stream.truncate(mib * 1024 * 1024)
    return path


# -- manifest ----------------------------------------------------------------------------------


def manifest_data() -> dict[str, object]:
    return {
        "schema": 1,
        "image": "openeuler-24.03-LTS-SP3-x86_64.tar.gz",
        "release": "24.03-LTS-SP3",
        "arch": "x86_64",
        "sha256": SHA,
        "size": 712345678,
        "kernel": "6.6.0-72.0.0.76.oe2403sp1.x86_64",
        "packages": ["bash-5.2.15-9.oe2403sp1.x86_64"],
        "cloud_init": "23.4.1",
        "built_at": "2026-11-27T07:05:13Z",
        "build_duration": 1234.5,
        "durations": {"fetch-iso": 1.2, "pack": 60.1},
        "tools": {"tar": "1.35"},
        "template_hash": "cd" * 32,
        "settings": {"include_updates": True, "extra_packages": []},
    }


def test_manifest_round_trip_keeps_unknown_keys(tmp_path: Path) -> None:
    data = {**manifest_data(), "upload": {"name": "custom/openeuler"}}
    path = tmp_path / "m.manifest.json"
    path.write_text(json.dumps(data))

    manifest = Manifest.from_file(path)
    assert manifest.release == "24.03-LTS-SP3"
    assert manifest.extra == {"upload": {"name": "custom/openeuler"}}
    manifest.kernel = "other"
    manifest.write(path)

    again = json.loads(path.read_text())
    assert again == {**data, "kernel": "other"}
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sha256": "xyz"}, "'sha256' is not 64 lowercase hexadecimal digits"),
        ({"size": "12"}, "'size' is missing or not a int"),
        ({"size": True}, "'size' is missing or not a int"),
        ({"image": None}, "'image' is missing or not a str"),
        ({"packages": "bash"}, "'packages' is not a list"),
    ],
)
def test_invalid_manifest(tmp_path: Path, change: dict[str, object], message: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({**manifest_data(), **change}))
    with pytest.raises(UsageError) as failure:
        Manifest.from_file(path)
    assert str(failure.value) == f"manifest {path} is not a valid manifest: {message}"


def test_unreadable_manifests(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        Manifest.from_file(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UsageError, match="is not readable JSON"):
        Manifest.from_file(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(UsageError, match="is not a JSON object"):
        Manifest.from_file(tmp_path / "list.json")


@pytest.mark.parametrize(
    ("tarball", "manifest"),
    [
        ("openeuler-24.03-LTS-x86_64.tar.gz", "openeuler-24.03-LTS-x86_64.manifest.json"),
        ("image.tgz", "image.manifest.json"),
        ("image.tar", "image.tar.manifest.json"),
    ],
)
def test_manifest_path_for(tarball: str, manifest: str) -> None:
    assert manifest_path_for(Path("/x") / tarball) == Path("/x") / manifest


def test_output_name_must_be_tar_gz(tmp_path: Path) -> None:
    image = blank(tmp_path / "disk.raw", 1)
    with pytest.raises(UsageError, match=r"must end in \.tar\.gz"):
        pack.pack_disk_image(image, tmp_path / "out.tar.zst", arch="x86_64")
    (tmp_path / "dir.tar.gz").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        pack.pack_disk_image(image, tmp_path / "dir.tar.gz", arch="x86_64")


# -- image formats and partition tables --------------------------------------------------------


def test_detect_format(tmp_path: Path) -> None:
    run("qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "a.qcow2"), "16M")
    run("qemu-img", "create", "-q", "-f", "vmdk", str(tmp_path / "a.vmdk"), "16M")
    blank(tmp_path / "a.raw", 1)
    (tmp_path / "empty.raw").touch()
    assert partitions.detect_format(tmp_path / "a.qcow2") == "qcow2"
    assert partitions.detect_format(tmp_path / "a.raw") == "raw"
    with pytest.raises(UsageError, match=r"is a vmdk image: .*qemu-img convert -O raw"):
        partitions.detect_format(tmp_path / "a.vmdk")
    with pytest.raises(UsageError, match="is empty"):
        partitions.detect_format(tmp_path / "empty.raw")
    with pytest.raises(UsageError, match="no such file"):
        partitions.detect_format(tmp_path / "missing.raw")


def test_gpt_as_parted_sees_it(tmp_path: Path) -> None:
    image = blank(tmp_path / "gpt.raw", 64)
    run(
        "sgdisk",
        "--new=1:2048:+8M",
        "--typecode=1:ef00",
        "--change-name=1:EFI system",
        "--new=2:0:+4M",
        "--typecode=2:ef02",
        "--new=3:0:+8M",
        "--typecode=3:8200",
        "--new=5:0:0",
        "--typecode=5:8304",
        "--change-name=5:root",
        str(image),
    )
    table = partitions.read_partition_table(image)
    assert table.scheme == "gpt"
    assert {p.number: (p.start, p.size) for p in table.partitions} == parted_view(image)
    assert [p.role for p in table.partitions] == ["esp", "bios-boot", "swap", "data"]
    assert table.partitions[0].name == "EFI system"
    assert table.get(5) is not None
    assert table.get(4) is None


def test_gpt_with_damaged_primary_header_uses_the_backup(tmp_path: Path) -> None:
    image = blank(tmp_path / "gpt.raw", 16)
    run("sgdisk", "--new=1:2048:0", "--typecode=1:8300", str(image))
    expected = parted_view(image)
    with image.open("r+b") as stream:
        stream.seek(512 + 24)  # inside the primary header: its CRC no longer matches
        stream.write(b"\xff\xff")
    table = partitions.read_partition_table(image)
    assert {p.number: (p.start, p.size) for p in table.partitions} == expected


def test_gpt_with_both_headers_damaged(tmp_path: Path) -> None:
    image = blank(tmp_path / "gpt.raw", 16)
    run("sgdisk", "--new=1:2048:0", str(image))
    size = image.stat().st_size
    with image.open("r+b") as stream:
        for offset in (512 + 24, size - 512 + 24):
            stream.seek(offset)
            stream.write(b"\xff\xff")
    with pytest.raises(UsageError, match="no valid GPT header"):
        partitions.read_partition_table(image)


def test_mbr_with_logical_partitions(tmp_path: Path) -> None:
    image = blank(tmp_path / "mbr.raw", 64)
    run(
        "parted", "-s", str(image), "mklabel", "msdos",
        "mkpart", "primary", "fat32", "1MiB", "9MiB", "set", "1", "esp", "on",
        "mkpart", "primary", "ext4", "9MiB", "17MiB",
        "mkpart", "extended", "17MiB", "63MiB",
        "mkpart", "logical", "linux-swap", "18MiB", "26MiB",
        "mkpart", "logical", "ext4", "27MiB", "40MiB",
        "mkpart", "logical", "xfs", "41MiB", "62MiB",
    )  # fmt: skip
    table = partitions.read_partition_table(image)
    assert table.scheme == "mbr"
    assert {p.number: (p.start, p.size) for p in table.partitions} == parted_view(image)
    roles = {p.number: p.role for p in table.partitions}
    assert roles == {1: "esp", 2: "data", 3: "extended", 5: "swap", 6: "data", 7: "data"}


def test_bare_filesystem_without_a_table(tmp_path: Path) -> None:
    image = blank(tmp_path / "fs.raw", 16)
    run("mkfs.ext4", "-q", "-F", str(image))
    table = partitions.read_partition_table(image)
    assert table.scheme == "none"
    assert table.partitions == (partitions.Partition(0, 0, 16 * 1024 * 1024, "", "none"),)


def test_neither_table_nor_filesystem(tmp_path: Path) -> None:
    image = blank(tmp_path / "zero.raw", 1)
    with pytest.raises(UsageError, match="no partition table"):
        partitions.read_partition_table(image)


def test_truncated_image(tmp_path: Path) -> None:
    image = blank(tmp_path / "mbr.raw", 32)
    run("parted", "-s", str(image), "mklabel", "msdos", "mkpart", "primary", "1MiB", "31MiB")
    with image.open("r+b") as stream:
        stream.truncate(8 * 1024 * 1024)
    with pytest.raises(UsageError, match="beyond the end of the image"):
        partitions.read_partition_table(image)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["mkfs.ext4", "-q", "-F"], "ext4"),
        (["mkfs.ext4", "-q", "-F", "-t", "ext2"], "ext4"),
        (["mkfs.xfs", "-q", "-f"], "xfs"),
        (["mkfs.fat"], "vfat"),
        (["mkswap"], "swap"),
        ([], None),
    ],
)
def test_probe_filesystem(tmp_path: Path, command: list[str], expected: str | None) -> None:
    image = blank(tmp_path / "part.raw", 320)
    if command:
        run(*command, str(image))
    whole = partitions.Partition(1, 0, image.stat().st_size, "0x83", "mbr")
    assert partitions.probe_filesystem(image, whole) == expected


# -- facts from a tree -------------------------------------------------------------------------


def test_resolve_in_root_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/modules").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "etc").mkdir()
    (root / "etc/abs").symlink_to("/usr/lib")
    (root / "etc/escape").symlink_to("../../../../../../etc")
    (root / "etc/loop").symlink_to("loop")
    assert resolve_in_root(root, "lib/modules") == root / "usr/lib/modules"
    assert resolve_in_root(root, "etc/abs/modules") == root / "usr/lib/modules"
    # ".." stops at the image's root: the host's /etc is never reached.
    assert resolve_in_root(root, "etc/escape") == root / "etc"
    assert resolve_in_root(root, "etc/loop") is None
    assert resolve_in_root(root, "nothing/here") is None


def test_kernel_version(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    assert kernel_version(root) is None
    (root / "boot/vmlinuz-0-rescue-abcdef").touch()
    (root / "boot/vmlinuz-5.10.0-216.0.0.115.oe2203sp4.x86_64").touch()
    assert kernel_version(root) == "5.10.0-216.0.0.115.oe2203sp4.x86_64"
    for version in ("6.6.0-9.0.0.1.oe2403.x86_64", "6.6.0-72.0.0.76.oe2403sp1.x86_64"):
        (root / "usr/lib/modules" / version).mkdir(parents=True)
        (root / "usr/lib/modules" / version / "modules.dep").touch()
    (root / "usr/lib/modules/extra").mkdir()  # no modules.dep: not a kernel
    (root / "lib").symlink_to("usr/lib")
    assert kernel_version(root) == "6.6.0-72.0.0.76.oe2403sp1.x86_64"


def test_cloud_init_from_source(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert cloud_init_from_source(root) is None
    version_py = root / "usr/lib/python3.9/site-packages/cloudinit/version.py"
    version_py.parent.mkdir(parents=True)
    version_py.write_text('__VERSION__ = "21.4"\n_PACKAGED_VERSION = "@@PACKAGED_VERSION@@"\n')
    assert cloud_init_from_source(root) == "21.4"


@pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="needs rpmbuild (package rpm)")
def test_read_rpmdb(tmp_path: Path) -> None:
    root = tmp_path / "root"
    packages = [
        Package("kernel", "6.6.0", "72.0.0.76.oe2403sp1", "x86_64"),
        Package("cloud-init", "23.4.1", "5.oe2403sp1", "noarch"),
        Package("bash", "5.2.15", "9.oe2403sp1", "x86_64"),
    ]
    build_rpmdb(root / "usr/lib/sysimage/rpm", packages, tmp_path / "work")
    (root / "var/lib").mkdir(parents=True)
    (root / "var/lib/rpm").symlink_to("/usr/lib/sysimage/rpm")  # absolute, as on Fedora
    before = sorted(os.listdir(root / "usr/lib/sysimage/rpm"))
    workdir = tmp_path / "scratch"
    workdir.mkdir()

    facts = read_rpmdb(root, workdir)

    assert facts.packages == sorted(p.nvra for p in packages)
    assert facts.cloud_init == "23.4.1"
    assert facts.rpm_version
    assert sorted(os.listdir(root / "usr/lib/sysimage/rpm")) == before


def test_no_rpmdb_is_an_empty_list(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    assert read_rpmdb(tmp_path / "root", tmp_path) == RpmFacts([], None, None)


def test_rpmdb_without_rpm_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "root/var/lib/rpm").mkdir(parents=True)
    (tmp_path / "root/var/lib/rpm/rpmdb.sqlite").write_bytes(b"")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(StepFailed, match=r"no rpm command .*package rpm"):
        read_rpmdb(tmp_path / "root", tmp_path)


def test_unreadable_rpmdb(tmp_path: Path) -> None:
    (tmp_path / "root/var/lib/rpm").mkdir(parents=True)
    (tmp_path / "root/var/lib/rpm/rpmdb.sqlite").write_bytes(b"not a database" * 100)
    (tmp_path / "work").mkdir()
    with pytest.raises(StepFailed, match=r"cannot read the image's rpm database \(sqlite\)"):
        read_rpmdb(tmp_path / "root", tmp_path / "work")


# -- tar | pigz --------------------------------------------------------------------------------


def test_pipeline_that_cannot_start_pigz_stops_tar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree/data").write_bytes(os.urandom(4 * 1024 * 1024))
    started: list[subprocess.Popen[Any]] = []
    real_popen = subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        process = real_popen(*args, **kwargs)
        started.append(process)
        return process

    monkeypatch.setattr(tarball.subprocess, "Popen", recording_popen)
    monkeypatch.setattr(tarball, "compressor_command", lambda: [str(tmp_path / "no-pigz")])
    with pytest.raises(FileNotFoundError):
        tarball._Pipeline(tmp_path / "tree", deadline=1e12)
    assert len(started) == 1, "tar was not started"
    assert started[0].returncode is not None, "tar was left running"


def test_tool_version_of_a_tool_that_hangs_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(command, 1)

    monkeypatch.setattr(diskimage, "run_command", hang)
    assert diskimage.tool_version(["pigz", "--version"]) == ""
