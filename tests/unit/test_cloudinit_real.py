"""The cloud-init probe/fix against real cloud-init (by hand; skipped unless sources given).

Set ``OEIB_CLOUDINIT_SOURCES`` to ``SOURCE=VARIANT`` pairs separated by ``:`` (a checkout of
canonical/cloud-init and the variant its cloud.cfg is rendered for), e.g.
``/tmp/ci/19.4=rhel:/tmp/ci/21.4=openEuler:/tmp/ci/23.4.1=openeuler:/tmp/ci/26.2=openeuler``.
Each run happens in an overlay chroot shaped like an openEuler image (tests/cloudinit_harness);
needs root, overlayfs and Debian's python3-yaml, -jinja2, -configobj, -jsonschema, -jsonpatch,
-oauthlib, -requests, -netifaces, -six, -serial. Results for the issue are in docs/recipe.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cloudinit_harness import available, run

FIX = Path(__file__).resolve().parents[2] / "templates" / "cloudinit" / "oeib-cloudinit-fix.py"
SOURCES = [
    tuple(item.split("=", 1))
    for item in os.environ.get("OEIB_CLOUDINIT_SOURCES", "").split(":")
    if "=" in item
]

pytestmark = [
    pytest.mark.needs_root,
    pytest.mark.skipif(
        not SOURCES, reason="set OEIB_CLOUDINIT_SOURCES to cloud-init checkouts (by hand)"
    ),
]


@pytest.mark.parametrize("legacy", [False, True], ids=["nm-only", "legacy-scripts-installed"])
@pytest.mark.parametrize(("source", "variant"), SOURCES, ids=[s for s, _ in SOURCES])
def test_fix_with_real_cloud_init(tmp_path: Path, source: str, variant: str, legacy: bool) -> None:
    reason = available()
    if reason:
        pytest.skip(reason)
    report = run(
        Path(source), FIX, tmp_path / "run", variant=variant, legacy_network_scripts=legacy
    )
    assert report["returncode"] == 0, report["output"] + report["stderr"]
    assert report["problems"] == []
    assert report["renderer"] == "sysconfig"
    assert report["applied_by"] == "NetworkManager (ifcfg-rh plugin)"
    ifcfg = {p: t for p, t in report["rendered"].items() if "/ifcfg-" in p}
    assert len(ifcfg) == 5
    assert not any("NM_CONTROLLED" in text for text in ifcfg.values())
    eno1 = ifcfg["etc/sysconfig/network-scripts/ifcfg-eno1"]
    assert "IPADDR=10.20.0.15" in eno1 and "GATEWAY=10.20.0.1" in eno1
    assert "IPADDR=10.30.0.15" in ifcfg["etc/sysconfig/network-scripts/ifcfg-bond0.100"]
