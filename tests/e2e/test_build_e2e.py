"""End-to-end: a real ``packer build`` of the stand-in installer ISO, then pack, verify, upload.

The installer is a stand-in for anaconda (tests/fixtures/standin_iso.py, docs/testing.md);
everything else is production code run as a user runs it: the CLI as a child process, the
recipe's Packer template with the real Packer (Debian's 1.6.6 here) and QEMU under TCG, the
boot keystrokes typed into the stand-in's copy of openEuler's GRUB menu, the kickstart served
by Packer's HTTP server, fetch-iso from a loopback mirror, pack with loop devices, the
verifier, the manifest, and the chunked upload to the MAAS double.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from pathlib import Path

import pytest
from fixtures.local_mirror import LocalMirror
from fixtures.maas_double import MaasDouble
from fixtures.standin_iso import E2E_ARCH, E2E_RELEASE
from fixtures.standin_runs import E2EBuild, E2EJobBuild, leftovers

from e2e.standin.builder import DEFAULT_CLOUD_INIT
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.pipeline import render, verify
from openeuler_image_builder.unit import retention

pytestmark = pytest.mark.e2e


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _members(tarball: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(tarball, "r:gz") as archive:
        return {member.name.removeprefix("./"): member for member in archive.getmembers()}


def _read_member(tarball: Path, name: str) -> bytes:
    with tarfile.open(tarball, "r:gz") as archive:
        stream = archive.extractfile("./" + name)
        assert stream is not None, name
        return stream.read()


def _stored_name(double: MaasDouble, name: str) -> str:
    # MAAS up to 3.7 stores custom/<x> as <x> (maas-api.md section 8).
    return name if double.config.keeps_custom_prefix else name.removeprefix("custom/")


def _serial_log(build: E2EBuild) -> str:
    return Path(build.result["logs"]["serial"]).read_text(errors="replace")


def test_build_succeeds_and_reports_json(e2e_cli_build: E2EBuild) -> None:
    assert e2e_cli_build.returncode == 0, e2e_cli_build.stderr[-3000:]
    result = e2e_cli_build.result
    assert result["release"] == E2E_RELEASE.name
    assert result["arch"] == E2E_ARCH
    assert Path(result["image"]) == e2e_cli_build.tarball
    assert result["upload"]["status"] == "uploaded"


def test_installer_was_driven_through_grub_and_kickstart(e2e_cli_build: E2EBuild) -> None:
    assert e2e_cli_build.returncode == 0, e2e_cli_build.stderr[-3000:]
    serial = _serial_log(e2e_cli_build)
    # The keystrokes reached the Install entry (not the default media check) and appended the
    # kickstart URL of Packer's HTTP server and the serial console.
    assert "Checking media" not in serial
    assert "Kickstart fetched from http://10.0.2.2:" in serial
    assert "Installation source: cdrom (/dev/sr0)" in serial
    # The kickstart's update repository (on the loopback mirror) was reachable from the guest.
    assert "Repository oeib-updates: metadata downloaded from http://10.0.2.2:" in serial
    assert "Disk vda: gpt partition table (firmware: UEFI)" in serial
    assert "End action from the kickstart: poweroff" in serial
    assert "ERROR" not in serial


def test_image_passes_the_verifier_and_holds_the_expected_tree(e2e_cli_build: E2EBuild) -> None:
    assert e2e_cli_build.returncode == 0, e2e_cli_build.stderr[-3000:]
    tarball = e2e_cli_build.tarball
    assert verify.verify_tarball(tarball, E2E_ARCH) == []
    members = _members(tarball)
    kernel = e2e_cli_build.manifest["kernel"]
    assert kernel.endswith(f".{E2E_ARCH}")
    for path in (
        f"boot/vmlinuz-{kernel}",
        f"boot/initramfs-{kernel}.img",
        "boot/efi/EFI/openEuler/shimx64.efi",
        "boot/efi/EFI/openEuler/grubx64.efi",
        "usr/lib/grub/i386-pc/normal.mod",
        "usr/bin/cloud-init",
        "etc/machine-id",
        "etc/fstab",
        "root/anaconda-ks.cfg",
    ):
        assert path in members, path
    assert members["bin"].issym() and members["bin"].linkname == "usr/bin"
    assert members["etc/machine-id"].size == 0
    assert members["etc/shadow"].mode == 0
    hook = members["curtin/curtin-hooks"]
    assert hook.isfile() and hook.mode & 0o111
    assert not [name for name in members if name.startswith("etc/ssh/ssh_host_")]


def test_curtin_hook_travelled_from_the_kickstart_byte_for_byte(
    e2e_cli_build: E2EBuild, tmp_path: Path
) -> None:
    assert e2e_cli_build.returncode == 0, e2e_cli_build.stderr[-3000:]
    recipe = render.render_recipe(
        E2E_RELEASE,
        E2E_ARCH,
        Settings(),
        tmp_path / "recipe",
        iso_path=None,
        accelerator="tcg",
        packer_version="1.6.6",
    )
    tarball = e2e_cli_build.tarball
    assert _read_member(tarball, "curtin/curtin-hooks") == recipe.curtin_hook.read_bytes()
    kickstart = _read_member(tarball, "root/anaconda-ks.cfg").decode()
    first_line = kickstart.splitlines()[0]
    assert first_line.startswith(
        f"# openeuler-image-builder kickstart release={E2E_RELEASE.name} arch={E2E_ARCH} "
    )


def test_manifest_describes_the_tarball(e2e_cli_build: E2EBuild) -> None:
    assert e2e_cli_build.returncode == 0, e2e_cli_build.stderr[-3000:]
    manifest = e2e_cli_build.manifest
    tarball = e2e_cli_build.tarball
    assert manifest["release"] == E2E_RELEASE.name
    assert manifest["arch"] == E2E_ARCH
    assert manifest["image"] == tarball.name
    assert manifest["sha256"] == _sha256(tarball)
    assert manifest["size"] == tarball.stat().st_size
    assert manifest["tools"]["packer"] == "1.6.6"
    assert manifest["cloud_init"] == (E2E_RELEASE.cloud_init or DEFAULT_CLOUD_INIT)
    # pack read the image's rpm database (rpm -qa): the stand-in's package set.
    expected = _read_member(tarball, "var/lib/standin/packages").decode().split()
    assert manifest["packages"] == expected
    assert f"kernel-{manifest['kernel']}" in manifest["packages"]
    for step in ("fetch-iso", "install", "pack"):
        assert manifest["durations"][step] >= 0
    assert len(manifest["template_hash"]) == 64


def test_image_is_complete_in_maas_with_the_manifest_sha256(e2e_cli_build: E2EBuild) -> None:
    assert e2e_cli_build.returncode == 0, e2e_cli_build.stderr[-3000:]
    double = e2e_cli_build.maas
    manifest = e2e_cli_build.manifest
    name = E2E_RELEASE.maas_name("custom")
    resource = double.find(_stored_name(double, name), "amd64/generic")
    assert resource is not None, [r["name"] for r in double.uploaded()]
    newest = max(resource["sets"].values(), key=lambda s: s["version"])
    assert newest["complete"] is True
    (root_file,) = newest["files"].values()
    assert root_file["sha256"] == manifest["sha256"]
    assert root_file["size"] == manifest["size"]
    assert root_file["filename"] == "root.tgz"
    assert double.content(resource["id"]) == e2e_cli_build.tarball.read_bytes()
    (post,) = [p for p in double.posts() if p.fields.get("name") == name]
    assert post.fields["base_image"] == E2E_RELEASE.maas_base_image
    assert post.fields["filetype"] == "tgz"
    assert post.fields["sha256"] == manifest["sha256"]
    assert "content" not in post.fields


def test_fetch_iso_went_through_the_mirror(
    e2e_cli_build: E2EBuild, local_mirror: LocalMirror
) -> None:
    assert e2e_cli_build.returncode == 0, e2e_cli_build.stderr[-3000:]
    (iso,) = local_mirror.isos
    iso_path = "/" + local_mirror.iso_path(iso)
    assert local_mirror.server.requests_for(iso_path + ".sha256sum", "GET")
    assert local_mirror.server.bytes_served(iso_path) >= iso.size
    cached = StateLayout(e2e_cli_build.state_dir).iso_cache / iso.release.iso_name(E2E_ARCH)
    assert _sha256(cached) == iso.sha256


def test_build_leaves_nothing_behind(e2e_cli_build: E2EBuild) -> None:
    assert e2e_cli_build.returncode == 0, e2e_cli_build.stderr[-3000:]
    found = leftovers(e2e_cli_build.state_dir, [e2e_cli_build.pid])
    assert found.empty(), found
    assert sorted(p.name for p in e2e_cli_build.output_dir.iterdir()) == sorted(
        [e2e_cli_build.tarball.name, e2e_cli_build.manifest_path.name]
    )
    # Every log the build left is one retention.prune_jobs knows (foreground build logs).
    logs = sorted((e2e_cli_build.state_dir / "logs").iterdir())
    assert logs, "the build left no logs"
    for log in logs:
        match = retention.JOB_LOG_NAME.match(log.name)
        assert match is not None, f"{log.name} would never be pruned"
        assert match.group("release") == E2E_RELEASE.name


def test_background_job_build_records_its_state(e2e_job_build: E2EJobBuild) -> None:
    state = e2e_job_build.job_state
    assert state["result"] == "succeeded"
    assert state["error"] is None
    assert state["launcher"] == "process"
    assert state["image"] == str(e2e_job_build.tarball)
    assert state["sha256"] == e2e_job_build.manifest["sha256"] == _sha256(e2e_job_build.tarball)
    assert state["uploaded"] is True
    log = Path(state["log_path"]).read_text()
    # Progress parsed from the installer's console, then pack and upload, as the job logged it.
    assert re.search(r" install \d+% package \d+ of \d+", log), log
    assert " pack " in log and " upload " in log
    double = e2e_job_build.maas
    resource = double.find(_stored_name(double, E2E_RELEASE.maas_name("custom")), "amd64/generic")
    assert resource is not None
    shas = [f["sha256"] for s in resource["sets"].values() for f in s["files"].values()]
    assert e2e_job_build.manifest["sha256"] in shas
    assert json.loads(e2e_job_build.manifest_path.read_text()) == e2e_job_build.manifest
    # Every file the job left under jobs/ and logs/ is one retention.prune_jobs removes with it.
    layout = StateLayout(e2e_job_build.state_dir)
    job_id = state["id"]
    left = {p.name for p in layout.jobs.iterdir() if not p.name.startswith(".")}
    assert left <= {f"{job_id}.json", f"{job_id}.env"}, left
    logs = {p.name for p in layout.logs.iterdir()}
    assert logs == {f"{job_id}{suffix}" for suffix in retention.LOG_SUFFIXES} & logs, logs
    assert {f"{job_id}.log", f"{job_id}.packer.log", f"{job_id}.serial.log"} <= logs, logs
