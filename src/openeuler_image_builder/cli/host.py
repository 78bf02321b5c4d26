"""CLI subcommands of the host area (placeholder until the area lands; owned by its area)."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    """Register this area's subcommands."""
