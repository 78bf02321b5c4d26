"""Shared pytest configuration: loads every fixture plugin under ``tests/fixtures/``.

Each area keeps its fixtures (MAAS double, local mirror, disk images, stand-in installer ISO)
in its own module there, so no two areas edit the same conftest.
"""

from pathlib import Path

pytest_plugins = sorted(
    f"fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if not path.name.startswith("_")
)
