"""The in-image curtin hook against real curtin (by hand; skipped unless sources are given).

Set ``OEIB_CURTIN_SOURCES`` to checkouts of canonical/curtin separated by ``:`` (for example
``git archive 21.3 | tar -x -C /tmp/curtin/21.3`` for each version), and
``OEIB_CURTIN_PYTHON`` to a Python with curtin's dependencies (default ``/usr/bin/python3``
with Debian's python3-yaml, python3-attr, python3-apt, python3-debian, python3-packaging, as
in MAAS's ephemeral Ubuntu). Only the host access listed in tests/curtin_harness is replaced;
curtin's distro detection, package checks and boot-loader logic are its own.
Results of the runs for the issue are in docs/recipe.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from curtin_harness import bootloader_commands, run_hook
from fixtures.image_trees import make_image_tree
from test_curtin_hook import EXPECTED, SCENARIOS, render_hook

SOURCES = [Path(p) for p in os.environ.get("OEIB_CURTIN_SOURCES", "").split(":") if p]
PYTHON = os.environ.get("OEIB_CURTIN_PYTHON", "/usr/bin/python3")

pytestmark = pytest.mark.skipif(
    not SOURCES, reason="set OEIB_CURTIN_SOURCES to canonical/curtin checkouts (by hand)"
)


@pytest.mark.parametrize("release", ["20.03", "22.03", "24.03"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_hook_with_real_curtin(tmp_path: Path, source: Path, scenario: str, release: str) -> None:
    arch, uefi = SCENARIOS[scenario]
    target = make_image_tree(tmp_path / "target", arch, curtin_hook=render_hook(release, arch))
    before = (target / "usr/lib/os-release").read_bytes()
    result = run_hook(
        target / "curtin" / "curtin-hooks",
        target,
        tmp_path / "work",
        curtin_source=source,
        uefi=uefi,
        machine=arch,
        arch=arch,
        python=PYTHON,
    )
    assert result["returncode"] == 0, result["stdout"] + result["stderr"]
    commands = bootloader_commands(result)
    assert commands[: len(EXPECTED[scenario])] == EXPECTED[scenario]
    # after those, real curtin only reorders the UEFI boot entries (network boot stays first)
    assert all(command[:2] == ["efibootmgr", "-o"] for command in commands[2:])
    assert (target / "usr/lib/os-release").read_bytes() == before
    assert not (target / "curtin").exists()
    assert (target / "etc/cloud/cloud.cfg.d/50-curtin-networking.cfg").exists()
    assert ["cloud-init", "features"] in [
        [os.path.basename(c["args"][0]), *c["args"][1:]] for c in result["commands"]
    ]
