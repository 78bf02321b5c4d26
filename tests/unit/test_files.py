"""``files.py``: atomic writes (whole files or nothing, modes, private temporaries), hashing;
and ``progress.ByteProgress``, which reports the hashing.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from openeuler_image_builder.core import files, progress
from openeuler_image_builder.core.progress import ByteProgress


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_atomic_replaces_the_file_with_the_given_mode(tmp_path: Path) -> None:
    target = tmp_path / "settings.json"
    target.write_text("old\n")
    files.write_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert mode_of(target) == files.PUBLIC
    files.write_atomic(target, b"\x00secret", mode=files.PRIVATE)
    assert target.read_bytes() == b"\x00secret"
    assert mode_of(target) == files.PRIVATE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "history.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), files.atomic_writer(target) as stream:
        stream.write(b"half of the new")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]


def test_the_temporary_file_is_private_while_it_is_written(tmp_path: Path) -> None:
    target = tmp_path / "maas-api-key"
    with files.atomic_writer(target, mode=files.PUBLIC) as stream:
        (temporary,) = [p for p in tmp_path.iterdir() if p.name != "maas-api-key"]
        assert temporary.name.startswith(".maas-api-key.")
        assert mode_of(temporary) == 0o600
        stream.write(b"x")
    assert mode_of(target) == files.PUBLIC


def test_write_json_atomic_writes_sorted_indented_json(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    files.write_json_atomic(target, {"b": 1, "a": [1, 2]}, indent=1)
    assert target.read_text() == '{\n "a": [\n  1,\n  2\n ],\n "b": 1\n}\n'
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}


def test_write_if_changed_rewrites_only_on_new_content_or_mode(tmp_path: Path) -> None:
    target = tmp_path / "key"
    assert files.write_if_changed(target, "a:b:c\n", mode=files.PRIVATE)
    inode = target.stat().st_ino
    assert not files.write_if_changed(target, "a:b:c\n", mode=files.PRIVATE)
    assert target.stat().st_ino == inode  # untouched
    os.chmod(target, 0o644)
    assert files.write_if_changed(target, "a:b:c\n", mode=files.PRIVATE)
    assert mode_of(target) == files.PRIVATE
    assert files.write_if_changed(target, b"d:e:f\n", mode=files.PRIVATE)
    assert target.read_text() == "d:e:f\n"


def test_staged_file_is_removed_unless_the_caller_renamed_it(tmp_path: Path) -> None:
    first, second = tmp_path / "a.tar.gz", tmp_path / "a.manifest.json"
    with files.staged_file(first) as (one, one_path), files.staged_file(second) as (two, two_path):
        one.write(b"tarball")
        two.write(b"{}")
        files.finish(one)
        files.finish(two, files.PRIVATE)
        os.replace(one_path, first)
        assert mode_of(two_path) == files.PRIVATE
    assert first.read_bytes() == b"tarball"
    assert not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]


def test_staged_file_name(tmp_path: Path) -> None:
    target = tmp_path / "a.tar.gz"
    with files.staged_file(target) as (_, default):
        assert default.name.startswith(".a.tar.gz.") and default.name.endswith(".tmp")
    with files.staged_file(target, prefix=".a.tar.gz.42.", suffix=".partial") as (_, named):
        assert named.parent == tmp_path
        assert named.name.startswith(".a.tar.gz.42.") and named.name.endswith(".partial")
    assert list(tmp_path.iterdir()) == []


def test_the_parent_directory_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        files.write_atomic(tmp_path / "gone" / "maas-upload.json", "{}")
    assert not (tmp_path / "gone").exists()


def test_hash_file_reads_once_and_reports_each_block(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 + 17)
    path = tmp_path / "image.tar.gz"
    path.write_bytes(data)
    reports: list[tuple[int, int]] = []
    digest, size = files.hash_file(
        path, block_size=1024, report=lambda done, total: reports.append((done, total))
    )
    assert (digest, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert reports == [(1024, size), (2048, size), (3072, size), (size, size)]
    (tmp_path / "empty").write_bytes(b"")
    assert files.hash_file(tmp_path / "empty") == (hashlib.sha256(b"").hexdigest(), 0)


def test_byte_progress_is_throttled_but_always_reports_the_end() -> None:
    seen: list[tuple[str, float | None, str]] = []

    def reporter(phase: str, percent: float | None, detail: str = "") -> None:
        seen.append((phase, percent, detail))

    report = ByteProgress(reporter, "fetch-iso", interval=3600)
    for done in range(1, 11):
        report(done * 2**20, 10 * 2**20)
    assert seen == [("fetch-iso", 10.0, "1/10 MiB"), ("fetch-iso", 100.0, "10/10 MiB")]
    fixed = ByteProgress(reporter, "upload", "computing sha256", interval=0)
    fixed(5, None)
    assert seen[-1] == ("upload", None, "computing sha256")


def test_byte_progress_reports_first_even_just_after_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    # The monotonic clock may count from boot: 5 s after it, a 60 s interval has not passed
    # since 0, yet nothing was reported before, so the first report must go out.
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: 5.0))
    seen: list[tuple[str, float | None, str]] = []

    def reporter(phase: str, percent: float | None, detail: str = "") -> None:
        seen.append((phase, percent, detail))

    report = ByteProgress(reporter, "fetch-iso", interval=60)
    report(2**20, 10 * 2**20)
    report(2 * 2**20, 10 * 2**20)  # throttled: the same instant
    assert seen == [("fetch-iso", 10.0, "1/10 MiB")]
