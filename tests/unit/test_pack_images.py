"""pack on disk images made in the test (root: loop devices, mounts).

Round trips (GPT and MBR, ext4 and xfs, raw and qcow2, kernel and FUSE mounts) compared file by
file with the source tree; root detection and refusals; the verifier blocking the manifest;
cleanup after errors, timeouts and signals (checked in /proc/mounts and with losetup).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.disk_images import (
    DiskImage,
    Entry,
    PartitionSpec,
    RootTree,
    allocated_bytes,
    leftover_mounts,
    loop_devices_of,
    make_root_tree,
    snapshot_tree,
)

from openeuler_image_builder.cli import main
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.image_names import manifest_path_for
from openeuler_image_builder.pipeline import pack, verify
from openeuler_image_builder.pipeline.manifest import Manifest

pytestmark = [
    pytest.mark.needs_root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices and mounts"),
]

Factory = Callable[..., DiskImage]
NAME = "openeuler-24.03-LTS-SP1-x86_64.tar.gz"
SRC = Path(__file__).resolve().parents[2] / "src"


class Reports(list[tuple[str, "float | None", str]]):
    """A progress reporter that keeps every report."""

    def __call__(self, phase: str, percent: float | None, detail: str = "") -> None:
        self.append((phase, percent, detail))


@pytest.fixture(autouse=True)
def private_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pack's mount points go under the test's own TMPDIR, so leftovers can be checked."""
    directory = tmp_path / "tmpdir"
    directory.mkdir()
    monkeypatch.setenv("TMPDIR", str(directory))
    monkeypatch.setattr("tempfile.tempdir", None)
    return directory


def assert_nothing_left(image: Path, tmpdir: Path, output_dir: Path | None = None) -> None:
    assert leftover_mounts(str(tmpdir)) == []
    assert loop_devices_of(image) == ""
    assert list(tmpdir.iterdir()) == [], "pack's temporary directory was not removed"
    if output_dir is not None:
        hidden = [p.name for p in output_dir.iterdir() if p.name.startswith(".")]
        assert hidden == [], "temporary output files were left behind"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert str(tmpdir).encode() not in command, f"process {pid} still uses {tmpdir}"


def whole_seconds(entries: dict[str, Entry]) -> dict[str, Entry]:
    return {
        path: dataclasses.replace(entry, mtime_ns=entry.mtime_ns // 10**9 * 10**9)
        for path, entry in entries.items()
    }


def extract(tarball: Path, destination: Path) -> None:
    destination.mkdir()
    subprocess.run(
        [
            "tar",
            "--extract",
            "--file",
            str(tarball),
            "--directory",
            str(destination),
            "--preserve-permissions",
            "--same-owner",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "--selinux",
            "--sparse",
        ],
        check=True,
        timeout=120,
    )


def check_tarball(tarball: Path, manifest: Manifest, tree: RootTree) -> None:
    data = tarball.read_bytes()
    assert data[:2] == b"\x1f\x8b"
    assert manifest.sha256 == hashlib.sha256(data).hexdigest()
    assert manifest.size == len(data)
    assert manifest.image == tarball.name
    assert manifest.kernel == tree.kernel
    assert manifest.packages == tree.packages
    assert manifest.cloud_init == tree.cloud_init
    names = subprocess.run(
        ["tar", "--list", "--file", str(tarball)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.splitlines()
    assert all(name == "./" or name.startswith("./") for name in names)
    # The ESP's content stayed out (another filesystem), and the image verifies as a tarball.
    assert not any("BOOTX64.EFI" in name for name in names)
    assert verify.verify_tarball(tarball, "x86_64") == []
    on_disk = json.loads(manifest_path_for(tarball).read_text())
    assert on_disk == manifest.to_json()


@pytest.mark.parametrize(
    ("table", "fs", "fmt", "method"),
    [
        ("gpt", "ext4", "raw", "kernel"),
        ("mbr", "xfs", "raw", "kernel"),
        ("gpt", "xfs", "qcow2", "kernel"),
        ("mbr", "ext4", "qcow2", "kernel"),
        ("gpt", "ext4", "raw", "fuse"),
        ("mbr", "ext4", "qcow2", "fuse"),
    ],
)
def test_round_trip_file_by_file(
    table: str,
    fs: str,
    fmt: str,
    method: str,
    root_tree: RootTree,
    disk_image_factory: Factory,
    tmp_path: Path,
    private_tmpdir: Path,
) -> None:
    image = disk_image_factory(f"disk.{fmt}", root_tree.path, table=table, fs=fs, fmt=fmt)
    output = tmp_path / "out" / NAME
    reports = Reports()

    manifest = pack.pack_disk_image(
        image.path,
        output,
        arch="x86_64",
        manifest_extra={"release": "24.03-LTS-SP1"},
        mount_method=method,  # type: ignore[arg-type]
        progress=reports,
    )

    check_tarball(output, manifest, root_tree)
    assert manifest.release == "24.03-LTS-SP1"
    assert reports[-1][:2] == ("pack", 100)
    assert any(phase == "verify" for phase, _, _ in reports)
    extracted = tmp_path / "extracted"
    extract(output, extracted)
    expected = snapshot_tree(root_tree.path)
    actual = snapshot_tree(extracted)
    if method == "fuse":
        # fuse2fs (1.47.0) reports whole seconds: the FUSE path loses sub-second mtimes.
        expected, actual = whole_seconds(expected), whole_seconds(actual)
    assert sorted(actual) == sorted(expected)
    different = {
        path: (expected[path], actual[path]) for path in expected if expected[path] != actual[path]
    }
    assert different == {}
    # Holes stayed holes.
    assert allocated_bytes(extracted / root_tree.sparse_file) < 1024 * 1024
    assert_nothing_left(image.path, private_tmpdir, output.parent)


def test_root_is_the_partition_with_os_release(
    root_tree: RootTree, disk_image_factory: Factory, tmp_path: Path, private_tmpdir: Path
) -> None:
    data = tmp_path / "data"
    (data / "srv").mkdir(parents=True)
    (data / "srv/marker-of-the-data-partition").write_text("not the root\n")
    image = disk_image_factory(
        "disk.raw",
        root_tree.path,
        extra=[PartitionSpec("data", "ext4", 200, data), PartitionSpec("swap", "swap", 8)],
    )
    output = tmp_path / NAME

    manifest = pack.pack_disk_image(image.path, output, arch="x86_64")

    check_tarball(output, manifest, root_tree)
    assert_nothing_left(image.path, private_tmpdir, tmp_path)


def test_root_partition_option(
    root_tree: RootTree, disk_image_factory: Factory, tmp_path: Path, private_tmpdir: Path
) -> None:
    data = tmp_path / "data"
    (data / "srv").mkdir(parents=True)
    image = disk_image_factory(
        "disk.raw", root_tree.path, extra=[PartitionSpec("data", "ext4", 64, data)]
    )
    output = tmp_path / "out" / NAME

    manifest = pack.pack_disk_image(
        image.path, output, arch="x86_64", root_partition=image.root_partition
    )
    check_tarball(output, manifest, root_tree)

    # The data partition has no kernel, no os-release...: the verifier stops it.
    with pytest.raises(StepFailed) as failure:
        pack.pack_disk_image(
            image.path, tmp_path / "other" / NAME, arch="x86_64", root_partition=3
        )
    assert failure.value.step == "verify"
    assert "kernel-missing" in failure.value.reason
    with pytest.raises(UsageError, match=r"partition 1 \(vfat, EFI system, 32 MiB\)"):
        pack.pack_disk_image(image.path, tmp_path / NAME, arch="x86_64", root_partition=1)
    with pytest.raises(UsageError, match=r"has no partition 7 \(partitions: 1 \(vfat"):
        pack.pack_disk_image(image.path, tmp_path / NAME, arch="x86_64", root_partition=7)
    assert_nothing_left(image.path, private_tmpdir, tmp_path)


def test_root_in_a_logical_partition(
    root_tree: RootTree, disk_image_factory: Factory, tmp_path: Path, private_tmpdir: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    image = disk_image_factory(
        "disk.raw",
        None,
        table="mbr",
        extra=[
            PartitionSpec("data", "ext4", 16, empty),
            PartitionSpec("swap", "swap", 8),
            PartitionSpec("system", "ext4", 128, root_tree.path),
        ],
    )
    assert image.partitions[6] == "system"
    output = tmp_path / NAME
    manifest = pack.pack_disk_image(image.path, output, arch="x86_64")
    check_tarball(output, manifest, root_tree)
    assert_nothing_left(image.path, private_tmpdir, tmp_path)


def test_separate_boot_partition_is_refused(
    tmp_path: Path, disk_image_factory: Factory, private_tmpdir: Path
) -> None:
    tree = make_root_tree(tmp_path / "tree")
    boot = tmp_path / "boot"
    boot.mkdir()
    for entry in sorted(tree.path.joinpath("boot").iterdir()):
        if entry.name.startswith(("vmlinuz-", "initramfs-")):
            entry.rename(boot / entry.name)
    image = disk_image_factory(
        "disk.raw", tree.path, extra=[PartitionSpec("boot", "ext4", 32, boot)]
    )
    with pytest.raises(UsageError) as failure:
        pack.pack_disk_image(image.path, tmp_path / NAME, arch="x86_64")
    assert "keeps /boot on partition 3" in str(failure.value)
    assert "single root partition" in str(failure.value)
    assert not (tmp_path / NAME).exists()
    assert_nothing_left(image.path, private_tmpdir, tmp_path)


def test_image_without_a_linux_filesystem(
    disk_image_factory: Factory, tmp_path: Path, private_tmpdir: Path
) -> None:
    image = disk_image_factory(
        "disk.raw", None, with_root=False, extra=[PartitionSpec("swap", "swap", 8)]
    )
    with pytest.raises(UsageError) as failure:
        pack.pack_disk_image(image.path, tmp_path / NAME, arch="x86_64")
    assert str(failure.value) == (
        f"{image.path} has no ext4 or xfs partition to pack (partitions: "
        "1 (vfat, EFI system, 32 MiB), 2 (swap, swap, 8 MiB))"
    )
    assert_nothing_left(image.path, private_tmpdir, tmp_path)


def test_xfs_cannot_use_the_fuse_path(
    root_tree: RootTree, disk_image_factory: Factory, tmp_path: Path, private_tmpdir: Path
) -> None:
    image = disk_image_factory("disk.raw", root_tree.path, fs="xfs")
    with pytest.raises(UsageError, match="is xfs, which can only be mounted by the kernel"):
        pack.pack_disk_image(image.path, tmp_path / NAME, arch="x86_64", mount_method="fuse")
    assert_nothing_left(image.path, private_tmpdir, tmp_path)


@pytest.mark.parametrize("method", ["kernel", "fuse"])
def test_dirty_journal_is_not_replayed(
    method: str,
    root_tree: RootTree,
    disk_image_factory: Factory,
    tmp_path: Path,
    private_tmpdir: Path,
) -> None:
    image = disk_image_factory("disk.raw", root_tree.path, dirty_journal=True)
    before = hashlib.sha256(image.path.read_bytes()).hexdigest()
    output = tmp_path / NAME

    manifest = pack.pack_disk_image(image.path, output, arch="x86_64", mount_method=method)  # type: ignore[arg-type]

    check_tarball(output, manifest, root_tree)
    assert hashlib.sha256(image.path.read_bytes()).hexdigest() == before, "image was written"
    assert_nothing_left(image.path, private_tmpdir, tmp_path)


def test_rpmdb_in_sysimage_and_none(
    tmp_path: Path, disk_image_factory: Factory, private_tmpdir: Path
) -> None:
    tree = make_root_tree(tmp_path / "tree", rpmdb_dir="usr/lib/sysimage/rpm")
    (tree.path / "var/lib/rpm").symlink_to("../../usr/lib/sysimage/rpm")
    image = disk_image_factory("disk.raw", tree.path)
    manifest = pack.pack_disk_image(image.path, tmp_path / "a" / NAME, arch="x86_64")
    assert manifest.packages == tree.packages
    assert manifest.cloud_init == tree.cloud_init  # from the rpm database

    bare = make_root_tree(tmp_path / "bare", rpmdb_dir=None)
    image = disk_image_factory("bare.raw", bare.path)
    manifest = pack.pack_disk_image(image.path, tmp_path / "b" / NAME, arch="x86_64")
    assert manifest.packages == []
    assert manifest.cloud_init == bare.cloud_init  # from cloudinit/version.py
    assert_nothing_left(image.path, private_tmpdir)


def test_unreadable_rpm_database_fails_cleanly(
    tmp_path: Path, disk_image_factory: Factory, private_tmpdir: Path
) -> None:
    tree = make_root_tree(tmp_path / "tree")
    for entry in (tree.path / "var/lib/rpm").iterdir():
        entry.unlink()
    (tree.path / "var/lib/rpm/rpmdb.sqlite").write_bytes(b"damaged" * 1000)
    image = disk_image_factory("disk.raw", tree.path)
    with pytest.raises(StepFailed, match=r"cannot read the image's rpm database \(sqlite\)"):
        pack.pack_disk_image(image.path, tmp_path / "out" / NAME, arch="x86_64")
    assert list((tmp_path / "out").iterdir()) == []
    assert_nothing_left(image.path, private_tmpdir)


def test_verifier_failure_blocks_the_manifest_and_keeps_the_previous_image(
    tmp_path: Path, root_tree: RootTree, disk_image_factory: Factory, private_tmpdir: Path
) -> None:
    output = tmp_path / "out" / NAME
    good = disk_image_factory("good.raw", root_tree.path)
    pack.pack_disk_image(good.path, output, arch="x86_64")
    previous_tarball = output.read_bytes()
    previous_manifest = manifest_path_for(output).read_bytes()

    bad = make_root_tree(tmp_path / "bad")
    (bad.path / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (bad.path / "etc/ssh/ssh_host_ed25519_key").write_text("private\n")
    (bad.path / "curtin/curtin-hooks").unlink()
    image = disk_image_factory("bad.raw", bad.path)

    with pytest.raises(StepFailed) as failure:
        pack.pack_disk_image(image.path, output, arch="x86_64")

    assert failure.value.step == "verify"
    reason = failure.value.reason
    assert "3 problems" in reason
    for code in ("machine-id-not-empty", "ssh-host-keys-present", "curtin-hook-missing"):
        assert code in reason
    assert "\n" not in str(failure.value)
    assert output.read_bytes() == previous_tarball
    assert manifest_path_for(output).read_bytes() == previous_manifest
    assert sorted(p.name for p in output.parent.iterdir()) == sorted(
        [NAME, manifest_path_for(output).name]
    )
    assert_nothing_left(image.path, private_tmpdir, output.parent)


def test_compressor_failure_cleans_up(
    root_tree: RootTree,
    disk_image_factory: Factory,
    tmp_path: Path,
    private_tmpdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = disk_image_factory("disk.raw", root_tree.path)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pigz").write_text(
        "#!/bin/sh\nhead -c 1000 >/dev/null\necho 'pigz: out of cheese' >&2\nexit 3\n"
    )
    (fake / "pigz").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")

    with pytest.raises(StepFailed, match="pigz failed: pigz: out of cheese"):
        pack.pack_disk_image(image.path, tmp_path / "out" / NAME, arch="x86_64")
    assert list((tmp_path / "out").iterdir()) == []
    assert_nothing_left(image.path, private_tmpdir)


def start_pack(image: Path, output: Path, method: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openeuler_image_builder",
            "pack",
            str(image),
            "--output",
            str(output),
            "--arch",
            "x86_64",
            "--mount-method",
            method,
        ],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_writing(process: subprocess.Popen[str], output_dir: Path) -> None:
    """Wait until the tarball is being written: mounts, loop devices, tar and pigz all live."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        partial = [p for p in output_dir.iterdir() if p.name.endswith(".partial")]
        if partial and partial[0].stat().st_size > 1024 * 1024:
            return
        time.sleep(0.05)
    raise AssertionError(f"pack never got to writing: {process.poll()} {process.communicate()}")


def test_full_output_filesystem(
    root_tree: RootTree, disk_image_factory: Factory, tmp_path: Path, private_tmpdir: Path
) -> None:
    image = disk_image_factory("disk.raw", root_tree.path)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(StepFailed, match="cannot write the tarball: No space left on device"):
            pack.pack_disk_image(image.path, small / NAME, arch="x86_64")
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert_nothing_left(image.path, private_tmpdir)


@pytest.fixture
def big_image(tmp_path: Path, disk_image_factory: Factory) -> Callable[..., DiskImage]:
    """An image whose packing takes seconds (incompressible data), for signals and timeouts."""

    def make(fmt: str = "raw") -> DiskImage:
        tree = make_root_tree(tmp_path / f"big-tree-{fmt}")
        with (tree.path / "var/lib/noise.bin").open("wb") as stream:
            for _ in range(320):
                stream.write(os.urandom(1024 * 1024))
        return disk_image_factory(f"big.{fmt}", tree.path, fmt=fmt, root_size_mib=448)

    return make


def test_timeout_stops_tar_and_cleans_up(
    big_image: Callable[..., DiskImage], tmp_path: Path, private_tmpdir: Path
) -> None:
    image = big_image()
    with pytest.raises(StepFailed, match="did not finish before the pack timeout"):
        pack.pack_disk_image(image.path, tmp_path / "out" / NAME, arch="x86_64", timeout=1.0)
    assert list((tmp_path / "out").iterdir()) == []
    assert_nothing_left(image.path, private_tmpdir)


@pytest.mark.parametrize(
    ("signum", "fmt", "method"),
    [
        (signal.SIGTERM, "raw", "kernel"),
        (signal.SIGINT, "qcow2", "kernel"),
        (signal.SIGTERM, "qcow2", "fuse"),
    ],
)
def test_signal_during_pack_leaves_nothing(
    signum: int,
    fmt: str,
    method: str,
    big_image: Callable[..., DiskImage],
    tmp_path: Path,
    private_tmpdir: Path,
) -> None:
    image = big_image(fmt)
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    previous = output_dir / NAME
    previous.write_bytes(b"previous good image")
    process = start_pack(image.path, previous, method)
    try:
        wait_until_writing(process, output_dir)
        assert process.poll() is None, process.communicate()
        assert leftover_mounts(str(private_tmpdir)), "pack should be mounted at this point"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1
    assert stderr.strip().splitlines()[-1] == "error: pack cancelled"
    assert previous.read_bytes() == b"previous good image"
    assert [p.name for p in output_dir.iterdir()] == [NAME]
    assert_nothing_left(image.path, private_tmpdir, output_dir)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_next_pack_cleans_up_after_sigkill(
    fmt: str, big_image: Callable[..., DiskImage], tmp_path: Path, private_tmpdir: Path
) -> None:
    image = big_image(fmt)
    output = tmp_path / "out" / NAME
    output.parent.mkdir()
    process = start_pack(image.path, output, "kernel")
    wait_until_writing(process, output.parent)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    # SIGKILL cannot be caught: the mounts and the partial tarball are still there...
    assert leftover_mounts(str(private_tmpdir))
    assert [p.name for p in output.parent.iterdir() if p.name.endswith(".partial")]

    # ...until the next pack, which finds them orphaned and takes them down first.
    manifest = pack.pack_disk_image(image.path, output, arch="x86_64")

    assert manifest.size == output.stat().st_size
    assert sorted(p.name for p in output.parent.iterdir()) == sorted(
        [NAME, manifest_path_for(output).name]
    )
    assert_nothing_left(image.path, private_tmpdir, output.parent)


def test_cli_pack_json(
    root_tree: RootTree,
    disk_image_factory: Factory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = disk_image_factory("disk.qcow2", root_tree.path, fmt="qcow2")
    output = tmp_path / NAME
    status = main(
        [
            "pack",
            str(image.path),
            "--output",
            str(output),
            "--release",
            "24.03-sp1",
            "--arch",
            "amd64",
            "--json",
        ]
    )
    assert status == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tarball_path"] == str(output)
    assert data["manifest_path"] == str(tmp_path / "openeuler-24.03-LTS-SP1-x86_64.manifest.json")
    assert data["release"] == "24.03-LTS-SP1"
    assert data["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    with gzip.open(output) as stream:
        assert stream.read(512)[:2] == b"./"


def test_cli_pack_verifier_failure(
    tmp_path: Path, disk_image_factory: Factory, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = make_root_tree(tmp_path / "bad")
    (bad.path / "etc/fstab").write_text("UUID=1234 / ext4 defaults 0 1\n")
    image = disk_image_factory("bad.raw", bad.path)
    status = main(["pack", str(image.path), "--output", str(tmp_path / NAME)])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1
    assert err.startswith("error: verify failed: the image is not fit for MAAS (1 problem)")
    assert "fstab-not-empty" in err
