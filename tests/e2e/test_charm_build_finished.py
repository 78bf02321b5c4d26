"""The charm's ``build-finished`` event fed by a real build job (ops.testing, issue 7 item 5).

The job is ``e2e_job_build`` (tests/fixtures/standin_runs.py): a real background build job
(``jobs.start_build_job`` + ``ProcessLauncher``) of the stand-in installer ISO through Packer,
QEMU, pack and upload to the MAAS double, which wrote its own job state file and put its image
and manifest in the image store. Here the charm runs under ``ops.testing`` with that state
directory as its own (``charm_env`` replaces only the host seams: apt, systemd), with MAAS
configured to the same double, and the ``build-finished`` event the job dispatches at its end
(``juju-exec <unit> JUJU_DISPATCH_PATH=hooks/build-finished ./dispatch``).

What is not real: Juju (ops.testing), and the launcher the charm uses for new jobs (recorded
``systemd-run``; systemd is not PID 1 here). The job itself, its state file, the image, the
manifest and the MAAS double's content are what the e2e run produced.
"""

from __future__ import annotations

import datetime
import logging

import pytest
from fixtures.charm_env import CharmEnv, dispatched
from fixtures.standin_iso import E2E_ARCH, E2E_RELEASE
from fixtures.standin_runs import E2EJobBuild
from ops import testing

from openeuler_image_builder import maas
from openeuler_image_builder.core.paths import STATE_DIR_ENV, StateLayout
from openeuler_image_builder.unit import jobs

pytestmark = pytest.mark.e2e


def _config(build: E2EJobBuild) -> tuple[testing.Secret, dict[str, str | bool]]:
    secret = testing.Secret(tracked_content={"key": build.maas.admin_key})
    return secret, {
        "maas-api-key": secret.id,
        "maas-url": build.maas.url,
        "releases": E2E_RELEASE.line,
        "accelerator": "tcg",
    }


def test_build_finished_reports_the_real_job_and_its_image_in_maas(
    charm_env: CharmEnv,
    e2e_job_build: E2EJobBuild,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    # The charm's state directory is the one the real job ran in.
    monkeypatch.setenv(STATE_DIR_ENV, str(e2e_job_build.state_dir))
    layout = StateLayout(e2e_job_build.state_dir)
    (job,) = jobs.list_jobs(layout)
    assert job.result == "succeeded"
    secret, config = _config(e2e_job_build)
    ctx = charm_env.ctx()

    out = ctx.run(dispatched("build-finished"), charm_env.state(secrets={secret}, config=config))

    built = datetime.datetime.fromisoformat(
        e2e_job_build.manifest["built_at"].replace("Z", "+00:00")
    ).date()
    # The job uploaded its image itself; this hook is the charm's first: it checks the key and
    # counts our images in MAAS (the same count the MAAS API gives).
    with maas.MaasClient(e2e_job_build.maas.url, e2e_job_build.maas.admin_key) as client:
        ours = maas.list_images(client)
    assert any(image.name == E2E_RELEASE.maas_name() for image in ours)
    noun = "image" if len(ours) == 1 else "images"
    assert out.unit_status == testing.ActiveStatus(
        f"ready: {E2E_RELEASE.name} in MAAS ({built.isoformat()}); "
        f"MAAS 127.0.0.1 holds {len(ours)} of our {noun}"
    )
    messages = [record.getMessage() for record in caplog.records]
    assert f"build of {E2E_RELEASE.name} ({E2E_ARCH}) succeeded" in messages
    assert any("already uploaded by its build job" in message for message in messages)
    # The image the job built is already in MAAS: no new build or upload job was started.
    assert charm_env.runner.started() == []

    ctx.run(ctx.on.action("build-status"), out)
    result = str(ctx.action_results or {})
    assert job.id in result
    assert "succeeded" in result
