"""CLI subcommands of the maas stage (placeholder until the stage lands; owned by its stage)."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    """Register this stage's subcommands."""
