"""``python -m openeuler_image_builder`` runs the CLI (used by the charm's background jobs)."""

from openeuler_image_builder.cli import main

raise SystemExit(main())
