"""The build lock: one build per release x arch; the second caller is told who holds it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.pipeline import locks

HOLDER = """
import sys, time
from pathlib import Path
from openeuler_image_builder.pipeline import locks
from openeuler_image_builder.core.paths import StateLayout
layout = StateLayout(Path(sys.argv[1]))
with locks.build_lock(layout, sys.argv[2], sys.argv[3], job_id=sys.argv[4]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def layout(tmp_path: Path) -> StateLayout:
    return StateLayout(tmp_path / "state")


def hold_in_child(
    layout: StateLayout, release: str, arch: str, job_id: str
) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(layout.root), release, arch, job_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    return child


def stop(child: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    child.kill()
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


def test_second_caller_is_refused_with_holder_pid_and_job(layout: StateLayout) -> None:
    child = hold_in_child(layout, "24.03-LTS-SP3", "x86_64", "build-24.03-LTS-SP3-x86_64-1")
    try:
        with (
            pytest.raises(UsageError) as refused,
            locks.build_lock(layout, "24.03-LTS-SP3", "x86_64"),
        ):
            pytest.fail("the lock was granted twice")
        message = str(refused.value)
        assert f"pid {child.pid}" in message
        assert "job build-24.03-LTS-SP3-x86_64-1" in message
        assert "jobs cancel build-24.03-LTS-SP3-x86_64-1" in message
        assert "\n" not in message
        holder = locks.lock_holder(layout, "24.03-LTS-SP3", "x86_64")
        assert holder is not None and holder.pid == child.pid
    finally:
        stop(child)


def test_other_release_or_arch_is_not_blocked(layout: StateLayout) -> None:
    child = hold_in_child(layout, "24.03-LTS-SP3", "x86_64", "job-a")
    try:
        with locks.build_lock(layout, "24.03-LTS-SP3", "aarch64"):
            pass
        with locks.build_lock(layout, "22.03-LTS-SP4", "x86_64"):
            pass
    finally:
        stop(child)


def test_lock_is_released_when_the_holder_is_killed(layout: StateLayout) -> None:
    child = hold_in_child(layout, "22.03-LTS-SP4", "x86_64", "job-b")
    os.kill(child.pid, signal.SIGKILL)
    stop(child)
    assert locks.lock_holder(layout, "22.03-LTS-SP4", "x86_64") is None
    with locks.build_lock(layout, "22.03-LTS-SP4", "x86_64", job_id="job-c") as path:
        assert path == layout.locks / "22.03-LTS-SP4-x86_64.lock"
        holder = locks.lock_holder(layout, "22.03-LTS-SP4", "x86_64")
        assert holder is not None
        assert holder == locks.LockHolder(pid=os.getpid(), job_id="job-c", started=holder.started)
    # Released: free again, and the stale holder is forgotten.
    assert locks.lock_holder(layout, "22.03-LTS-SP4", "x86_64") is None
    assert path.read_text() == ""


def test_same_process_cannot_take_it_twice(layout: StateLayout) -> None:
    with (
        locks.build_lock(layout, "24.03-LTS", "x86_64", job_id="outer"),
        pytest.raises(UsageError, match="job outer"),
        locks.build_lock(layout, "24.03-LTS", "x86_64"),
    ):
        pytest.fail("granted twice")


def test_lock_fd_is_not_inherited_by_children(layout: StateLayout) -> None:
    # Packer and QEMU must not keep the lock alive after the build process is gone.
    with locks.build_lock(layout, "24.03-LTS", "x86_64"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 5
        while locks.lock_holder(layout, "24.03-LTS", "x86_64") is not None:
            assert time.monotonic() < deadline, "the child kept the lock"
            time.sleep(0.05)
    finally:
        stop(child)


def test_message_without_job_names_the_pid_to_stop() -> None:
    message = locks.lock_refusal_message(
        "24.03-LTS", "x86_64", locks.LockHolder(pid=4242, job_id=None, started=None)
    )
    assert message == (
        "a build of 24.03-LTS x86_64 is already running (pid 4242): "
        "wait for it to finish, or stop it (kill 4242)"
    )
