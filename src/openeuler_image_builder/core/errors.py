"""Error types shared by every stage; the CLI maps them to exit statuses.

- ``UsageError``: bad usage or bad input (exit 2). The message says what is wrong and how to
  fix it, in one line.
- ``StepFailed``: the work itself failed (exit 1). The message names the step and why; the
  log path, when there is one, tells where to read more.
- ``Cancelled``: the work was stopped by a signal (exit 1, reported as cancelled).
"""

from __future__ import annotations

from pathlib import Path


class ImageBuilderError(Exception):
    """Base class of every error the tool reports to its user."""


class UsageError(ImageBuilderError):
    """Bad usage or bad input: nothing was changed; the message says how to fix it."""


class StepFailed(ImageBuilderError):
    """A pipeline step failed.

    Attributes:
        step: the step that failed (``fetch-iso``, ``install``, ``pack``, ``verify``, ``upload``).
        reason: one line saying why.
        log_path: where to read more, if anywhere.
    """

    def __init__(self, step: str, reason: str, log_path: Path | str | None = None) -> None:
        self.step = step
        self.reason = reason
        self.log_path = Path(log_path) if log_path else None
        text = f"{step} failed: {reason}"
        if self.log_path:
            text += f" (log: {self.log_path})"
        super().__init__(text)


class Cancelled(ImageBuilderError):
    """The work was cancelled (SIGTERM/SIGINT); everything temporary was cleaned up."""

    def __init__(self, step: str = "build") -> None:
        self.step = step
        super().__init__(f"{step} cancelled")
