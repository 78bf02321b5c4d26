"""The unit's work at each hook (``work.advance``) and ``delete-image`` (``work.delete_images``),
called directly with plain values: the real jobs, history, inventory and retention code on a
temporary state directory; only ``systemd-run``/``systemctl`` are recorded (``SystemdRunner``).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from fixtures.charm_env import SystemdRunner, state_path_of
from fixtures.charm_ops import NOW, make_job, make_stored_image
from fixtures.maas_double import MaasDouble

from openeuler_image_builder import maas
from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.unit import history, jobs, work

SP4, SP3 = "24.03-LTS-SP4", "22.03-LTS-SP4"
HOUR = datetime.timedelta(hours=1)


@pytest.fixture
def runner() -> SystemdRunner:
    return SystemdRunner()


@pytest.fixture
def starter(ops_layout: StateLayout, runner: SystemdRunner) -> jobs.JobStarter:
    return jobs.JobStarter(
        ops_layout,
        jobs.SystemdLauncher(runner=runner),
        dispatch=jobs.DispatchTarget("openeuler-image-builder/0", Path("/var/lib/juju/charm")),
        settings_file=ops_layout.job_settings,
    )


def with_maas(layout: StateLayout, url: str = "http://10.0.0.2:5240/MAAS") -> Settings:
    """Settings with a MAAS URL, written where jobs read them, and a key file."""
    layout.maas_api_key_file.write_text("a:b:c\n")
    settings = Settings(maas_url=url)
    jobs.write_settings_file(layout.job_settings, settings)
    return settings


def advance(starter: jobs.JobStarter, settings: Settings, **changes: object) -> work.WorkDone:
    options: dict[str, object] = {
        "arch": "x86_64",
        "share": [],
        "can_build": True,
        "maas_usable": False,
        **changes,
    }
    return work.advance(starter, settings, **options)  # type: ignore[arg-type]


def command(argv: list[str]) -> list[str]:
    return argv[argv.index("--") + 1 :]


def records(layout: StateLayout) -> history.History:
    return history.History.load(history.History.path_in(layout.root))


def test_missing_releases_are_queued_and_built_one_at_a_time(
    starter: jobs.JobStarter, runner: SystemdRunner, ops_layout: StateLayout
) -> None:
    settings = Settings()
    jobs.write_settings_file(ops_layout.job_settings, settings)
    done = advance(starter, settings, share=[SP3, SP4])
    assert done.build is not None and done.build.release == SP3
    (argv,) = runner.started()
    assert command(argv)[3:8] == ["build", "--release", SP3, "--arch", "x86_64"]
    assert "--upload" not in argv  # decided once the package list is known
    assert [(q.release, q.job_id) for q in records(ops_layout).queue] == [
        (SP3, done.build.id),
        (SP4, None),
    ]
    assert advance(starter, settings, share=[SP3, SP4]).build is None  # one at a time
    assert len(runner.started()) == 1


def test_nothing_starts_on_a_unit_that_cannot_build(
    starter: jobs.JobStarter, runner: SystemdRunner
) -> None:
    done = advance(starter, Settings(), share=[SP4], can_build=False)
    assert done == work.WorkDone()
    assert runner.started() == []


def test_a_queued_build_that_cannot_start_is_held(
    starter: jobs.JobStarter, runner: SystemdRunner, ops_layout: StateLayout
) -> None:
    runner.fail_start = "Unit openeuler-image-builder-build-x already exists."
    done = advance(starter, Settings(), share=[SP4])
    assert done.build is None
    held = records(ops_layout).held[f"{SP4}/x86_64"]
    assert "systemd-run exited with 1" in held.reason
    runner.fail_start = None
    assert advance(starter, Settings(), share=[SP4]).build is None  # held, not retried


def test_a_scheduled_rebuild_runs_with_updates_and_force(
    starter: jobs.JobStarter, runner: SystemdRunner, ops_layout: StateLayout
) -> None:
    settings = Settings(include_updates=False)
    make_stored_image(ops_layout, SP4, settings={"include_updates": False, "extra_packages": []})
    with history.History.locked(history.History.path_in(ops_layout.root)) as queue:
        queue.request_rebuild([SP4], "x86_64")
    done = advance(starter, settings, share=[SP4])
    assert done.build is not None  # forced: an image with the same settings exists
    argv = command(runner.started()[0])
    settings_file = Path(argv[argv.index("--settings") + 1])
    assert settings_file == ops_layout.rebuild_settings
    assert json.loads(settings_file.read_text())["include_updates"] is True


def test_a_finished_queue_build_is_recorded_and_uploaded(
    starter: jobs.JobStarter, runner: SystemdRunner, ops_layout: StateLayout
) -> None:
    settings = with_maas(ops_layout)
    build = advance(starter, settings, share=[SP4], maas_usable=True).build
    assert build is not None
    tarball = make_stored_image(ops_layout, SP4)
    runner.finish(state_path_of(runner.started()[0]), image=str(tarball))

    done = advance(starter, settings, share=[SP4], maas_usable=True)

    assert [(r.job_id, r.result, r.trigger) for r in done.recorded] == [
        (build.id, "succeeded", "missing")
    ]
    (upload,) = done.uploads
    assert command(runner.started()[1])[3:5] == ["jobs", "run-upload"]
    assert upload.image == str(tarball)
    assert done.build is None and not done.maas_changed
    # The same job is never recorded twice.
    runner.finish(state_path_of(runner.started()[1]), uploaded=True)
    again = advance(starter, settings, share=[SP4], maas_usable=True)
    assert [r.kind for r in again.recorded] == ["upload"]
    assert again.maas_changed


def test_without_usable_maas_a_finished_build_stays_local(
    starter: jobs.JobStarter, runner: SystemdRunner, ops_layout: StateLayout
) -> None:
    settings = with_maas(ops_layout)
    advance(starter, settings, share=[SP4])
    runner.finish(
        state_path_of(runner.started()[0]), image=str(make_stored_image(ops_layout, SP4))
    )
    done = advance(starter, settings, share=[SP4], maas_usable=False)
    assert len(done.recorded) == 1 and done.uploads == ()
    assert len(runner.started()) == 1


def test_a_job_that_uploaded_its_image_changes_what_maas_holds(
    starter: jobs.JobStarter, ops_layout: StateLayout
) -> None:
    make_job(SP4, result="succeeded", uploaded=True, layout=ops_layout)
    done = advance(starter, Settings())
    assert done.maas_changed
    assert done.uploads == ()  # the build job uploaded it itself


def test_old_jobs_are_pruned_once_recorded(
    starter: jobs.JobStarter, ops_layout: StateLayout
) -> None:
    made = [
        make_job(SP4, result="failed", error="x", started=NOW + n * HOUR, layout=ops_layout)
        for n in range(3)
    ]
    done = advance(starter, Settings(), keep_jobs=1)
    assert len(done.recorded) == 3
    assert [job.id for job in jobs.list_jobs(ops_layout)] == [made[2].id]
    assert sorted(p.name for p in ops_layout.logs.iterdir()) == [f"{made[2].id}.log"]
    assert records(ops_layout).is_recorded(made[2].id)


# --- delete-image ----------------------------------------------------------------------------

RELEASE = catalogue.resolve(SP4)


def test_delete_local_images(ops_layout: StateLayout) -> None:
    tarball = make_stored_image(ops_layout, SP4)
    result = work.delete_images(ops_layout, RELEASE, "x86_64", running=[])
    assert result == {"release": SP4, "arch": "x86_64", "deleted-local": str(tarball)}
    assert not tarball.exists()
    with pytest.raises(UsageError, match=f"no local image of {SP4}"):
        work.delete_images(ops_layout, RELEASE, "x86_64", running=[])


def test_delete_from_maas_also_without_a_local_image(
    ops_layout: StateLayout, maas_double: MaasDouble
) -> None:
    maas_double.add_uploaded("openeuler-24.03-lts-sp4", "amd64/generic", b"x" * 10)
    with history.History.locked(history.History.path_in(ops_layout.root)) as uploads:
        uploads.record_finished(make_job(SP4, kind="upload", result="succeeded", sha256="ab"))
    assert f"{SP4}/x86_64" in records(ops_layout).last_uploads

    def client() -> maas.MaasClient:
        return maas.MaasClient(maas_double.url, maas_double.admin_key)

    result = work.delete_images(ops_layout, RELEASE, "x86_64", running=[], maas_client=client)
    assert result["deleted-local"] == "none"
    assert result["deleted-from-maas"] == "custom/openeuler-24.03-lts-sp4"
    assert maas_double.find("openeuler-24.03-lts-sp4", "amd64/generic") is None
    assert records(ops_layout).last_uploads == {}
    again = work.delete_images(ops_layout, RELEASE, "x86_64", running=[], maas_client=client)
    assert again["deleted-from-maas"] == "none (custom/openeuler-24.03-lts-sp4 not in MAAS)"


def test_delete_says_what_went_locally_when_maas_fails(ops_layout: StateLayout) -> None:
    tarball = make_stored_image(ops_layout, SP4)

    def unreachable() -> maas.MaasClient:
        return maas.MaasClient("http://127.0.0.1:9/MAAS", "a:b:c", timeout=2, retries=0)

    with pytest.raises(UsageError, match=rf"^local images deleted \({tarball}\); MAAS: "):
        work.delete_images(ops_layout, RELEASE, "x86_64", running=[], maas_client=unreachable)
    assert not tarball.exists()
