"""Deploy the packed charm on a real Juju model (skipped without a controller: see conftest).

What runs where: the deploy/config/secret tests need only a machine model (an LXD VM is fine,
accelerator=tcg); the build test also needs an openEuler mirror (``OEIB_TEST_MIRROR``) and hours
under TCG.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

# pytest-operator's OpsTest; typed loosely because pytest-operator is only installed (and its
# plugin only enabled) for the integration run, never for lint or the unit tests.
OpsTest = Any

APP = "openeuler-image-builder"
RELEASE = "24.03-LTS-SP1"
pytestmark = pytest.mark.asyncio


async def _charm(ops_test: OpsTest) -> Path:
    path = os.environ.get("CHARM_PATH")
    if path:
        return Path(path).resolve()
    return await ops_test.build_charm(".")


async def _wait_status(ops_test: OpsTest, pattern: str, timeout: float) -> str:
    """Wait until the unit's workload message matches ``pattern``; returns the message."""
    assert ops_test.model is not None
    unit = ops_test.model.applications[APP].units[0]
    deadline = time.monotonic() + timeout
    message = ""
    while time.monotonic() < deadline:
        message = unit.workload_status_message or ""
        if re.search(pattern, message):
            return message
        await asyncio.sleep(10)  # the model's watcher updates the unit meanwhile
    raise AssertionError(f"status never matched {pattern!r}; last: {message!r}")


@pytest.mark.abort_on_fail
async def test_deploy_becomes_active(ops_test: OpsTest, tmp_path: Path) -> None:
    """deploy -> active, no MAAS: the unit installs its tools and says it keeps images locally."""
    assert ops_test.model is not None
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")  # no offline bundle: Packer from HashiCorp's apt repository
    await ops_test.model.deploy(
        await _charm(ops_test),
        application_name=APP,
        resources={"packer": str(empty), "packer-qemu-plugin": str(empty)},
        config={"accelerator": "tcg"},
        constraints={"virt-type": "virtual-machine", "mem": 8 * 1024, "root-disk": 40 * 1024},
    )
    await ops_test.model.wait_for_idle(apps=[APP], status="active", timeout=40 * 60)
    unit = ops_test.model.applications[APP].units[0]
    assert unit.workload_status_message == "ready: no MAAS configured, images are kept locally"
    status = await ops_test.model.get_status()
    application = status.applications[APP]
    assert application is not None
    assert re.match(r"^1\.\d+\.\d+$", str(application.workload_version or ""))


async def test_bad_config_blocks_then_recovers(ops_test: OpsTest) -> None:
    """bad config -> blocked with option, value and accepted form; fixing it -> active."""
    assert ops_test.model is not None
    app = ops_test.model.applications[APP]
    await app.set_config({"disk-size": "1G"})
    await ops_test.model.wait_for_idle(apps=[APP], status="blocked", timeout=10 * 60)
    message = app.units[0].workload_status_message
    assert message.startswith("config option disk-size='1G' is invalid")
    assert "use a size in GiB or MiB of at least 4G" in message
    await app.reset_config(["disk-size"])
    await ops_test.model.wait_for_idle(apps=[APP], status="active", timeout=10 * 60)


async def test_ungranted_secret_blocks_with_the_grant_command(ops_test: OpsTest) -> None:
    """maas-api-key naming a secret the charm may not read -> blocked, says what to run."""
    assert ops_test.model is not None
    app = ops_test.model.applications[APP]
    await app.set_config({"maas-url": "http://192.0.2.1:5240/MAAS"})
    code, stdout, stderr = await ops_test.juju("add-secret", "oeib-test-key", "key=a:b:c")
    assert code == 0, stderr
    uri = stdout.strip()
    await app.set_config({"maas-api-key": uri})
    await ops_test.model.wait_for_idle(apps=[APP], status="blocked", timeout=10 * 60)
    assert f"juju grant-secret {uri} {APP}" in app.units[0].workload_status_message
    code, _, stderr = await ops_test.juju("grant-secret", "oeib-test-key", APP)
    assert code == 0, stderr
    # Granted: the key is read, and MAAS (a documentation address) is unreachable: waiting.
    await ops_test.model.wait_for_idle(apps=[APP], status="waiting", timeout=10 * 60)
    assert "MAAS unreachable at http://192.0.2.1:5240/MAAS" in (
        app.units[0].workload_status_message
    )
    await app.reset_config(["maas-url", "maas-api-key"])
    await ops_test.model.wait_for_idle(apps=[APP], status="active", timeout=10 * 60)


async def test_build_image_status_result_on_tcg(ops_test: OpsTest) -> None:
    """build-image -> status shows the phase -> the result, on a TCG unit."""
    mirror = os.environ.get("OEIB_TEST_MIRROR")
    if not mirror:
        pytest.skip("set OEIB_TEST_MIRROR to a reachable openEuler mirror to run a real build")
    timeout = float(os.environ.get("OEIB_TEST_BUILD_TIMEOUT", str(4 * 3600)))
    assert ops_test.model is not None
    app = ops_test.model.applications[APP]
    await app.set_config({"mirror-url": mirror, "accelerator": "tcg"})
    await ops_test.model.wait_for_idle(apps=[APP], status="active", timeout=10 * 60)
    unit = app.units[0]

    action = await unit.run_action("build-image", release=RELEASE)
    started: Any = await action.wait()
    assert started.status == "completed", started.results
    job_id = started.results["job-id"]
    assert started.results["release"] == RELEASE

    release = re.escape(RELEASE)
    await _wait_status(ops_test, rf"^building {release} \((x86_64|aarch64)\): ", 15 * 60)
    await _wait_status(ops_test, rf"^ready: {release}", timeout)

    action = await unit.run_action("build-status", release=RELEASE)
    result: Any = await action.wait()
    job = result.results["jobs"]["01"]
    assert job["id"] == job_id
    assert job["result"] == "succeeded", job
    assert job["sha256"]
