"""The ``openeuler-image-builder`` command line: one subcommand per pipeline stage.

Each submodule registers its subcommands with ``register(subparsers)``; every handler takes the
parsed arguments and returns an exit status. Errors are turned into exit statuses here:
0 done; 2 bad usage or bad input (one line on stderr saying what and how to fix it); 1 the work
failed (one line naming the step and why, and the log path).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from openeuler_image_builder import __version__
from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.catalogue import Arch
from openeuler_image_builder.core.errors import Cancelled, StepFailed, UsageError
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.unit.jobs import load_settings_file  # (cli.jobs shadows `jobs`)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]

# CLI flag of each settings field a flag can override (for error messages).
SETTINGS_FLAGS = {
    "mirror_url": "--mirror",
    "disk_size": "--disk-size",
    "build_memory": "--memory",
    "build_cpus": "--cpus",
    "extra_packages": "--extra-packages",
    "include_updates": "--no-updates",
    "maas_name_scheme": "--name-scheme",
    "maas_url": "--maas-url",
}


class OneLineArgumentParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Report a usage error in one line."""
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--release`` (required) and ``--arch`` (default: this machine's)."""
    parser.add_argument("--release", required=True, help="release name or alias, e.g. 24.03")
    parser.add_argument("--arch", default=None, help="x86_64 or aarch64 (default: this machine's)")


def target_arch(args: argparse.Namespace) -> Arch:
    """``--arch`` resolved, or this machine's architecture."""
    return catalogue.resolve_arch(args.arch) if args.arch else catalogue.host_arch()


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--json`` (machine-readable output on stdout)."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON when ``--json`` was given, else ``text``."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    elif text:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def load_settings(settings_file: Path | None, overrides: Mapping[str, Any]) -> Settings:
    """The ``--settings`` file (else the defaults) with the options' ``overrides`` applied.

    Raises:
        UsageError: a bad file or value, naming the option and the accepted form.
    """
    base = load_settings_file(settings_file) if settings_file else Settings()
    if not overrides:
        return base
    try:
        return Settings.from_mapping({**base.model_dump(), **overrides})
    except UsageError as error:
        message = str(error)
        for field in overrides:
            if field in SETTINGS_FLAGS:
                message = message.replace(
                    f"config option {field.replace('_', '-')}=", f"{SETTINGS_FLAGS[field]} "
                )
        raise UsageError(message) from None


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every subcommand registered."""
    # Imported here: the submodules import helpers from this package.
    from openeuler_image_builder.cli import build, host, iso, jobs, maas, pack, recipe, releases  # noqa: PLC0415

    parser = OneLineArgumentParser(
        prog="openeuler-image-builder",
        description="Build openEuler images that MAAS can deploy, and register them in MAAS.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages to stderr"
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=OneLineArgumentParser
    )
    for module in (releases, recipe, iso, build, pack, maas, jobs, host):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler: Handler = args.func
    try:
        return handler(args)
    except UsageError as error:
        sys.stderr.write(f"error: {error}\n")
        return EXIT_USAGE
    except (StepFailed, Cancelled) as error:
        sys.stderr.write(f"error: {error}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); don't print a traceback for that.
        sys.stderr.close()
        return EXIT_OK
