"""Start a command fully detached from the caller (used by ``jobs.ProcessLauncher``).

Run as ``python -m openeuler_image_builder.core.processes --log FILE --cwd DIR -- ARGV...``. This
short-lived intermediate starts ARGV in a new session with stdin from /dev/null and stdout and
stderr appended to FILE, prints ``<pid> <start time>`` of the started process, and exits at once.
The started process is then re-parented to init (or the nearest subreaper), so it outlives a
Juju hook and never becomes a zombie of a long-lived caller such as a test runner. Only the
standard library is imported, to keep the start fast.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` from field 3 (the state) on; None when ``pid`` is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its last ")".
    return text[text.rfind(")") + 2 :].split()


def start_time(fields: list[str]) -> int | None:
    """Field 22 (start time, clock ticks since boot) of :func:`proc_stat`'s fields."""
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat).

    Together with the pid it identifies a process even after the pid is reused.
    """
    fields = proc_stat(pid)
    return None if fields is None else start_time(fields)


def process_alive(pid: int, start: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, if ``start`` is given, is the same process."""
    fields = proc_stat(pid)
    if not fields or fields[0] in ("Z", "X", "x"):
        return False
    return start is None or start_time(fields) == start


def main(argv: list[str] | None = None) -> int:
    """Start the command and print its pid and start time."""
    parser = argparse.ArgumentParser(prog="openeuler-image-builder-detach")
    parser.add_argument("--log", required=True)
    parser.add_argument("--cwd", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            cwd=args.cwd,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)
    sys.stdout.write(f"{process.pid} {process_start_time(process.pid) or 0}\n")
    sys.stdout.flush()
    # Leave without waiting: the child is adopted by init; os._exit skips Popen.__del__.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
