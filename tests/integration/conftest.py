"""Integration tests (pytest-operator): they need a Juju controller and a packed charm.

Every test here is skipped, with the reason, when ``juju`` is not on PATH or ``juju
controllers`` fails (no controller reachable): nothing else in this directory runs then, and
pytest-operator is not even imported.

Run them on a machine with a bootstrapped controller (e.g. ``concierge prepare -p machine``)
and charmcraft:

    charmcraft pack
    CHARM_PATH=./openeuler-image-builder_ubuntu@24.04-amd64.charm \\
        uv run --group integration --with "pytest<8.4" pytest \\
        -p pytest_asyncio.plugin -p pytest_operator.plugin \\
        tests/integration

pytest-operator pins pytest-asyncio < 0.23, which cannot load under pytest >= 8.4 (the unit
tests' pytest); pyproject's addopts therefore switch both plugins off (``-p no:...``) and this
run switches them back on with an older pytest layered over the project's environment.

``CHARM_PATH`` is the packed charm (without it pytest-operator packs one with charmcraft).
``OEIB_TEST_MIRROR`` points the build test at a reachable openEuler mirror (the build test is
skipped without it); ``OEIB_TEST_BUILD_TIMEOUT`` bounds it (seconds, default 4 h under TCG).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@functools.cache
def juju_unavailable() -> str | None:
    """Why no Juju controller can be used, or None when one answers."""
    juju = shutil.which("juju")
    if juju is None:
        return "no Juju controller reachable: `juju` is not on PATH"
    try:
        result = subprocess.run(
            [juju, "controllers", "--format=json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"no Juju controller reachable: `juju controllers` failed ({error})"
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no Juju controller reachable: `juju controllers` failed: {why}"
    if (
        '"controllers":{}' in result.stdout.replace(" ", "")
        or '"controllers": null' in result.stdout
    ):
        return "no Juju controller reachable: `juju controllers` lists none (bootstrap one)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Declare the markers these tests use, also when the plugins that define them are off.

    pyproject's addopts turn pytest-operator and pytest-asyncio off (``-p no:...``): they do not
    load with pytest >= 8.4 (pytest-operator pins pytest-asyncio < 0.23), and would break every
    other test. The integration run turns them back on; see the module docstring.
    """
    config.addinivalue_line("markers", "abort_on_fail: stop the module after a failure")
    config.addinivalue_line("markers", "asyncio: run the coroutine test on an event loop")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this directory's tests, with the reason, when no controller is reachable."""
    mine = [item for item in items if HERE in Path(str(item.fspath)).parents]
    if not mine:
        return
    reason = juju_unavailable()
    for item in mine:
        item.add_marker(pytest.mark.integration)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
