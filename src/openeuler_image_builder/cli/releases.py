"""``releases [--json]``: the release catalogue with aliases and end-of-life flags."""

from __future__ import annotations

import argparse
from typing import Any

from openeuler_image_builder.cli import add_json_option, emit
from openeuler_image_builder.core import catalogue


def register(subparsers: Any) -> None:
    """Register the ``releases`` subcommand."""
    parser = subparsers.add_parser(
        "releases", help="list the openEuler releases that can be built"
    )
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List the catalogue."""
    data = [release.to_json() for release in catalogue.RELEASES]
    rows = [f"{'release':<15} {'aliases':<18} {'released':<11} {'end of life':<25} arches"]
    for release in catalogue.RELEASES:
        eol = release.end_of_life.isoformat() if release.end_of_life else "not published"
        if release.is_end_of_life():
            eol += " (EOL)"
        rows.append(
            f"{release.name:<15} {', '.join(catalogue.aliases_of(release)) or '-':<18} "
            f"{release.released.isoformat():<11} {eol:<25} {' '.join(release.architectures)}"
        )
    emit(args, data, "\n".join(rows))
    return 0
