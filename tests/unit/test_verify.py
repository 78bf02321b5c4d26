"""The image verifier on good and broken synthetic images, as trees and as tarballs."""

from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path

import pytest
from fixtures.image_trees import BREAKS, NOT_APPLICABLE, make_image_tree, write_image_tarball

from openeuler_image_builder.cli import main
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.pipeline import verify

BROKEN = [
    (code, arch)
    for arch in ("x86_64", "aarch64")
    for code in BREAKS
    if code not in NOT_APPLICABLE[arch]
]


def test_good_tree_has_no_problem(good_image_tree: tuple[Path, str]) -> None:
    root, arch = good_image_tree
    assert verify.verify_tree(root, arch) == []  # type: ignore[arg-type]


def test_good_tarball_has_no_problem(good_image_tree: tuple[Path, str], tmp_path: Path) -> None:
    root, arch = good_image_tree
    tarball = write_image_tarball(root, tmp_path / "image.tar.gz")
    assert verify.verify_tarball(tarball, arch) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(("code", "arch"), BROKEN, ids=[f"{c}-{a}" for c, a in BROKEN])
def test_each_problem_is_reported_alone_in_a_tree(tmp_path: Path, code: str, arch: str) -> None:
    root = make_image_tree(tmp_path / "root", arch, breaks=[code])
    problems = verify.verify_tree(root, arch)  # type: ignore[arg-type]
    assert [problem.code for problem in problems] == [code]
    assert problems[0].message and "\n" not in problems[0].message


@pytest.mark.parametrize(("code", "arch"), BROKEN, ids=[f"{c}-{a}" for c, a in BROKEN])
def test_each_problem_is_reported_alone_in_a_tarball(tmp_path: Path, code: str, arch: str) -> None:
    root = make_image_tree(tmp_path / "root", arch, breaks=[code])
    tarball = write_image_tarball(root, tmp_path / "image.tar.gz")
    assert [problem.code for problem in verify.verify_tarball(tarball, arch)] == [code]  # type: ignore[arg-type]


def test_every_problem_at_once_is_reported_in_a_stable_order(tmp_path: Path) -> None:
    codes = [
        code
        for code in BREAKS
        if code
        not in ("kernel-missing", "root-password-empty", "shadow-missing", "curtin-hook-missing")
    ]
    root = make_image_tree(tmp_path / "root", "x86_64", breaks=codes)
    found = [problem.code for problem in verify.verify_tree(root, "x86_64")]
    assert sorted(found) == sorted(codes)
    assert found == [problem.code for problem in verify.verify_tree(root, "x86_64")]


def test_wrong_architecture_is_caught(tmp_path: Path) -> None:
    root = make_image_tree(tmp_path / "root", "aarch64")
    codes = [problem.code for problem in verify.verify_tree(root, "x86_64")]
    assert codes == ["efi-binaries-missing", "bios-grub-missing"]


def test_rescue_kernel_is_not_a_second_kernel(tmp_path: Path) -> None:
    root = make_image_tree(tmp_path / "root", "x86_64")
    (root / "boot/vmlinuz-0-rescue-0123456789abcdef").write_text("rescue\n")
    assert verify.verify_tree(root, "x86_64") == []


def test_locked_root_with_a_kept_hash_is_a_problem(tmp_path: Path) -> None:
    root = make_image_tree(tmp_path / "root", "x86_64")
    shadow = root / "etc/shadow"
    shadow.write_text(shadow.read_text().replace("root:!:", "root:!$6$salt$hash:"))
    assert [p.code for p in verify.verify_tree(root, "x86_64")] == ["root-password-set"]


def test_symlinked_hook_to_an_executable_counts(tmp_path: Path) -> None:
    root = make_image_tree(tmp_path / "root", "x86_64")
    hook = root / "curtin/curtin-hooks"
    (root / "curtin/curtin-hooks.py").write_text(hook.read_text())
    (root / "curtin/curtin-hooks.py").chmod(0o755)
    hook.unlink()
    hook.symlink_to("curtin-hooks.py")
    assert verify.verify_tree(root, "x86_64") == []


def test_absolute_symlinks_resolve_inside_the_image(tmp_path: Path) -> None:
    root = make_image_tree(tmp_path / "root", "x86_64")
    (root / "etc/os-release").unlink()
    (root / "etc/os-release").symlink_to("/usr/lib/os-release")  # absolute, as some images do
    assert verify.verify_tree(root, "x86_64") == []
    tarball = write_image_tarball(root, tmp_path / "image.tar.gz")
    assert verify.verify_tarball(tarball, "x86_64") == []


def test_hardlinked_shadow_in_a_tarball_is_read(tmp_path: Path) -> None:
    root = make_image_tree(tmp_path / "root", "x86_64", breaks=["root-password-set"])
    (root / "etc/shadow-").hardlink_to(root / "etc/shadow")
    tarball = tmp_path / "image.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(root / "etc/shadow-", arcname="./etc/shadow-")  # first: the regular file
        archive.add(
            root, arcname=".", filter=lambda info: None if info.name == "./etc/shadow-" else info
        )
    assert "root-password-set" in [p.code for p in verify.verify_tarball(tarball, "x86_64")]


def test_unreadable_tarball(tmp_path: Path) -> None:
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(gzip.compress(b"not a tar archive at all" * 100)[:-20])
    problems = verify.verify_tarball(broken, "x86_64")
    assert [problem.code for problem in problems] == ["tarball-unreadable"]


def test_missing_paths_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a directory"):
        verify.verify_tree(tmp_path / "missing", "x86_64")
    with pytest.raises(UsageError, match="does not exist"):
        verify.verify_tarball(tmp_path / "missing.tar.gz", "x86_64")


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_verify_image_finds_the_architecture(tmp_path: Path, arch: str) -> None:
    root = make_image_tree(tmp_path / "root", arch)
    assert verify.verify_image(root) == (arch, [])
    tarball = write_image_tarball(root, tmp_path / "image.tar.gz")
    assert verify.verify_image(tarball) == (arch, [])


def test_cli_verify_good_and_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_image_tarball(
        make_image_tree(tmp_path / "good", "aarch64"), tmp_path / "good.tar.gz"
    )
    assert main(["verify", str(good)]) == 0
    assert "no problems (aarch64)" in capsys.readouterr().out
    bad = make_image_tree(
        tmp_path / "bad", "x86_64", breaks=["ssh-host-keys-present", "machine-id-not-empty"]
    )
    assert main(["verify", str(bad), "--arch", "amd64", "--json"]) == 1
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["ok"] is False
    assert data["arch"] == "x86_64"
    assert [p["code"] for p in data["problems"]] == [
        "machine-id-not-empty",
        "ssh-host-keys-present",
    ]
    assert captured.err == f"error: verify failed: 2 problem(s) in {bad}\n"


def test_cli_verify_missing_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path / "nothing.tar.gz")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unreadable_file_in_a_tree_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_image_tree(tmp_path / "root", "x86_64")
    real_open = Path.open

    def deny_shadow(self: Path, *args, **kwargs):
        if self.name == "shadow":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny_shadow)
    with pytest.raises(UsageError, match="verify an image tree as root"):
        verify.verify_tree(root, "x86_64")
