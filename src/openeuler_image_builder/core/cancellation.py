"""Cancellation by signal: SIGTERM/SIGINT become an exception that unwinds the work.

Raising in the main thread (as Python does for SIGINT with KeyboardInterrupt) makes every
``finally`` and context manager on the way run: Packer and QEMU are stopped, packing unmounts
and detaches its loop devices, work directories are removed. Repeated signals while that cleanup
runs are ignored, so a second Ctrl-C or systemd's repeated SIGTERM cannot cut it short.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

logger = logging.getLogger(__name__)


class Interrupted(BaseException):
    """A SIGTERM or SIGINT arrived; raised where the main thread was, to unwind cleanly.

    A BaseException (like KeyboardInterrupt) so that no ``except Exception`` swallows it.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def interrupt_on_signals(
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
) -> Iterator[None]:
    """Turn the first SIGTERM/SIGINT into ``Interrupted``; ignore repeats while cleaning up.

    Does nothing outside the main thread (Python delivers signals only there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            logger.warning("%s again: still cleaning up", signal.Signals(signum).name)
            return
        fired = True
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in signals}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
