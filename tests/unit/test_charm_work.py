"""ops.testing tests of the charm's background work: the build-finished event, the queue of
configured releases, uploads decided after a build, the rebuild timer and the rebuild event,
and sharing the work between units over the builders peer relation.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
from fixtures.charm_env import CharmEnv, dispatched, state_path_of
from fixtures.charm_ops import make_job, make_stored_image
from fixtures.maas_double import MaasDouble
from ops import testing

from openeuler_image_builder.unit import fleet, history, inventory, jobs

APP = "openeuler-image-builder"
DAY = datetime.timedelta(days=1)
T0 = datetime.datetime(2026, 11, 20, 3, 0, tzinfo=datetime.timezone.utc)


def command_of(argv: Sequence[str]) -> list[str]:
    return list(argv[list(argv).index("--") + 1 :])


def released_by(argv: Sequence[str]) -> str:
    command = command_of(argv)
    return command[command.index("--release") + 1]


def finish_build(
    env: CharmEnv,
    argv: Sequence[str],
    *,
    built_at: datetime.datetime,
    packages: Sequence[str] = ("bash-5.2-1.oe2403.x86_64", "kernel-6.6.0-1.oe2403.x86_64"),
    result: jobs.JobResult = "succeeded",
    error: str | None = None,
) -> Path | None:
    """What a build job does at its end: the image in the store, then its final state."""
    path = state_path_of(argv)
    if result != "succeeded":
        env.runner.finish(path, result, error=error)
        return None
    tarball = make_stored_image(
        env.layout, released_by(argv), "x86_64", built_at=built_at, packages=packages
    )
    # Every build makes a different tarball (timestamps inside), even with the same packages:
    # append an empty gzip member (still a valid .tar.gz) stamped with the build time.
    with tarball.open("ab") as stream:
        stream.write(gzip.compress(b"", mtime=int(built_at.timestamp())))
    manifest_path = inventory.manifest_path_for(tarball)
    manifest = inventory.read_manifest(manifest_path)
    assert manifest is not None
    data = tarball.read_bytes()
    manifest.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    manifest_path.write_text(json.dumps(manifest))
    env.runner.finish(path, "succeeded", image=str(tarball), sha256=manifest["sha256"])
    return tarball


def records_of(env: CharmEnv) -> history.History:
    return history.History.load(history.History.path_in(env.layout.root))


def maas_config(double: MaasDouble) -> tuple[testing.Secret, dict[str, str]]:
    secret = testing.Secret(tracked_content={"key": double.admin_key})
    return secret, {"maas-api-key": secret.id, "maas-url": double.url}


# --- the queue and build-finished ------------------------------------------------------------


def test_configured_releases_are_built_one_at_a_time(charm_env: CharmEnv) -> None:
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.config_changed(), charm_env.state(config={"releases": "22.03 24.03"}))

    (first,) = charm_env.runner.started()
    assert released_by(first) == "22.03-LTS-SP4"
    assert "--upload" not in command_of(first)  # decided when the package list is known
    assert out.unit_status == testing.MaintenanceStatus(
        "building 22.03-LTS-SP4 (x86_64): starting, 0s; 1 queued"
    )
    queue = records_of(charm_env).queue
    assert [(q.release, q.reason, q.job_id is not None) for q in queue] == [
        ("22.03-LTS-SP4", "missing", True),
        ("24.03-LTS-SP4", "missing", False),
    ]
    out = ctx.run(ctx.on.update_status(), out)
    assert len(charm_env.runner.started()) == 1  # still one at a time

    finish_build(charm_env, first, built_at=T0)
    out = ctx.run(dispatched("build-finished"), out)

    second = charm_env.runner.started()[1]
    assert released_by(second) == "24.03-LTS-SP4"
    record = records_of(charm_env).records[0]
    assert (record.release, record.result, record.trigger) == (
        "22.03-LTS-SP4",
        "succeeded",
        "missing",
    )
    assert out.unit_status == testing.MaintenanceStatus(
        "building 24.03-LTS-SP4 (x86_64): starting, 0s"
    )

    finish_build(charm_env, second, built_at=T0 + DAY)
    out = ctx.run(dispatched("build-finished"), out)
    assert len(charm_env.runner.started()) == 2
    assert out.unit_status == testing.ActiveStatus(
        "ready: 22.03-LTS-SP4 (2026-11-20), 24.03-LTS-SP4 (2026-11-21) built, not in MAAS; "
        "no MAAS configured, images are kept locally"
    )


def test_failed_queued_build_is_held_not_retried(charm_env: CharmEnv) -> None:
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.config_changed(), charm_env.state(config={"releases": "22.03 24.03"}))
    (first,) = charm_env.runner.started()
    finish_build(charm_env, first, built_at=T0, result="failed", error="install failed: boom")
    out = ctx.run(dispatched("build-finished"), out)
    second = charm_env.runner.started()[1]
    assert released_by(second) == "24.03-LTS-SP4"
    finish_build(charm_env, second, built_at=T0)
    out = ctx.run(dispatched("build-finished"), out)
    out = ctx.run(ctx.on.update_status(), out)
    assert len(charm_env.runner.started()) == 2  # 22.03 is held, not retried every hook
    assert "22.03-LTS-SP4/x86_64" in records_of(charm_env).held
    assert out.unit_status.message.startswith(
        "build of 22.03-LTS-SP4 (x86_64) failed: install failed: boom"
    )

    # A change of the build settings lifts the hold.
    state = testing.State(
        config={"releases": "22.03 24.03", "extra-packages": "tmux"},
        resources=out.resources,
        stored_states=out.stored_states,
    )
    ctx.run(ctx.on.config_changed(), state)
    assert released_by(charm_env.runner.started()[2]) == "22.03-LTS-SP4"


def test_finished_queue_build_is_uploaded_when_maas_is_configured(
    charm_env: CharmEnv, maas_double: MaasDouble
) -> None:
    secret, config = maas_config(maas_double)
    ctx = charm_env.ctx()
    out = ctx.run(
        ctx.on.config_changed(),
        charm_env.state(secrets={secret}, config={**config, "releases": "24.03"}),
    )
    (build,) = charm_env.runner.started()
    finish_build(charm_env, build, built_at=T0)
    out = ctx.run(dispatched("build-finished"), out)

    upload = charm_env.runner.started()[1]
    assert command_of(upload)[3:5] == ["jobs", "run-upload"]
    assert out.unit_status.message.startswith("uploading 24.03-LTS-SP4 (x86_64):")

    # The upload job puts the image in MAAS (here: the double), then dispatches.
    maas_double.add_uploaded("openeuler-24.03-lts-sp4", "amd64/generic", b"x" * 10)
    charm_env.runner.finish(state_path_of(upload), "succeeded", uploaded=True)
    out = ctx.run(dispatched("build-finished"), out)
    assert out.unit_status == testing.ActiveStatus(
        "ready: 24.03-LTS-SP4 in MAAS (2026-11-20); MAAS 127.0.0.1 holds 1 of our image"
    )
    assert "24.03-LTS-SP4/x86_64" in records_of(charm_env).last_uploads


def finished_job_that_uploaded_itself(env: CharmEnv, double: MaasDouble) -> jobs.JobState:
    """A ``build-image upload=true`` job that ended: its image in the store and in MAAS."""
    env.layout.ensure()
    tarball = make_stored_image(env.layout, "24.03-LTS-SP4", built_at=T0, uploaded=True)
    manifest = inventory.read_manifest(inventory.manifest_path_for(tarball))
    assert manifest is not None
    double.add_uploaded("openeuler-24.03-lts-sp4", "amd64/generic", b"x" * 10)
    return make_job(
        "24.03-LTS-SP4",
        result="succeeded",
        started=T0 - datetime.timedelta(minutes=30),
        image=str(tarball),
        sha256=manifest["sha256"],
        uploaded=True,
        upload_requested=True,
        layout=env.layout,
    )


@pytest.mark.parametrize("checked_before", [True, False])
def test_maas_image_count_follows_a_job_that_uploaded_its_image_itself(
    charm_env: CharmEnv, maas_double: MaasDouble, checked_before: bool
) -> None:
    secret, config = maas_config(maas_double)
    ctx = charm_env.ctx()
    state = charm_env.state(secrets={secret}, config=config)
    if checked_before:  # config-changed checked the key while MAAS held none of our images
        state = ctx.run(ctx.on.config_changed(), state)
        assert state.unit_status.message.endswith("MAAS 127.0.0.1 holds 0 of our images")
    finished_job_that_uploaded_itself(charm_env, maas_double)

    out = ctx.run(dispatched("build-finished"), state)

    assert out.unit_status == testing.ActiveStatus(
        "ready: 24.03-LTS-SP4 in MAAS (2026-11-20); MAAS 127.0.0.1 holds 1 of our image"
    )
    assert charm_env.runner.started() == []  # nothing left to build or upload


def test_scheduled_rebuild_with_unchanged_packages_is_not_uploaded_again(
    charm_env: CharmEnv, maas_double: MaasDouble, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    secret, config = maas_config(maas_double)
    ctx = charm_env.ctx()
    state = charm_env.state(
        secrets={secret},
        config={**config, "releases": "24.03", "include-updates": False},
    )
    out = ctx.run(ctx.on.config_changed(), state)
    finish_build(charm_env, charm_env.runner.started()[0], built_at=T0)
    out = ctx.run(dispatched("build-finished"), out)
    charm_env.runner.finish(
        state_path_of(charm_env.runner.started()[1]), "succeeded", uploaded=True
    )
    out = ctx.run(dispatched("build-finished"), out)
    assert len(charm_env.runner.started()) == 2

    # The timer fires: a scheduled rebuild, forced, with include-updates on.
    out = ctx.run(dispatched("rebuild"), out)
    rebuild = charm_env.runner.started()[2]
    settings_file = Path(command_of(rebuild)[command_of(rebuild).index("--settings") + 1])
    assert settings_file.name == "settings-rebuild.json"
    assert json.loads(settings_file.read_text())["include_updates"] is True
    queued = records_of(charm_env).queue
    assert [(q.release, q.reason) for q in queued] == [("24.03-LTS-SP4", "schedule")]

    finish_build(charm_env, rebuild, built_at=T0 + DAY)  # same package list
    out = ctx.run(dispatched("build-finished"), out)
    assert len(charm_env.runner.started()) == 3  # no upload job
    assert any("package list unchanged" in r.getMessage() for r in caplog.records)

    out = ctx.run(dispatched("rebuild"), out)
    finish_build(
        charm_env,
        charm_env.runner.started()[3],
        built_at=T0 + 2 * DAY,
        packages=("bash-5.2-2.oe2403.x86_64", "kernel-6.6.0-1.oe2403.x86_64"),
    )
    out = ctx.run(dispatched("build-finished"), out)
    assert command_of(charm_env.runner.started()[4])[3:5] == ["jobs", "run-upload"]


# --- the rebuild timer -----------------------------------------------------------------------


def test_rebuild_timer_follows_the_config(charm_env: CharmEnv) -> None:
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.config_changed(), charm_env.state(config={"rebuild-schedule": "weekly"}))
    timer = charm_env.timer_dir / "openeuler-image-builder-0-rebuild.timer"
    service = charm_env.timer_dir / "openeuler-image-builder-0-rebuild.service"
    assert "OnCalendar=Mon *-*-* 00:00:00\n" in timer.read_text()  # systemd's normal form
    assert (
        "ExecStart=/usr/bin/juju-exec openeuler-image-builder/0 "
        "JUJU_DISPATCH_PATH=hooks/rebuild ./dispatch\n"
    ) in service.read_text()
    assert charm_env.timer.calls == [
        ("daemon-reload", ""),
        ("enable", "openeuler-image-builder-0-rebuild.timer"),
        ("restart", "openeuler-image-builder-0-rebuild.timer"),
    ]
    charm_env.timer.calls.clear()
    ctx.run(ctx.on.update_status(), out)
    assert charm_env.timer.calls == []  # not touched outside config changes

    state = testing.State(resources=out.resources, stored_states=out.stored_states)
    ctx.run(ctx.on.config_changed(), state)  # rebuild-schedule back to empty
    assert charm_env.timer.calls == [
        ("disable", "openeuler-image-builder-0-rebuild.timer"),
        ("daemon-reload", ""),
    ]
    assert not timer.exists()
    assert not service.exists()


def test_remove_takes_the_timer_and_the_key_away(
    charm_env: CharmEnv, maas_double: MaasDouble
) -> None:
    secret, config = maas_config(maas_double)
    ctx = charm_env.ctx()
    out = ctx.run(
        ctx.on.config_changed(),
        charm_env.state(secrets={secret}, config={**config, "rebuild-schedule": "daily"}),
    )
    ctx.run(ctx.on.action("build-image", params={"release": "24.03"}), out)
    assert charm_env.layout.maas_api_key_file.exists()
    ctx.run(ctx.on.remove(), out)
    assert not charm_env.layout.maas_api_key_file.exists()
    assert not any(charm_env.timer_dir.iterdir())
    assert ["systemctl", "stop", "openeuler-image-builder-build-24.03-lts-sp4-x86_64"] in (
        charm_env.runner.argvs
    )


# --- several units ---------------------------------------------------------------------------


def report(*, can_build: bool = True, images: Sequence[fleet.PublishedImage] = ()) -> str:
    return fleet.UnitReport("x86_64", can_build, tuple(images)).to_json()


RELEASES = "20.03 22.03-LTS-SP3 22.03 24.03-LTS 24.03-LTS-SP1 24.03-LTS-SP3 24.03"


@pytest.mark.parametrize("units", [1, 2, 3, 5])
def test_leader_assigns_and_each_unit_builds_only_its_share(
    charm_env: CharmEnv, units: int
) -> None:
    names = [f"{APP}/{i}" for i in range(units)]
    peers_data = {i: {fleet.UNIT_REPORT_KEY: report()} for i in range(1, units)}
    leader_peers = testing.PeerRelation("builders", peers_data=peers_data)
    ctx = charm_env.ctx(unit_id=0)
    out = ctx.run(
        ctx.on.leader_elected(),
        charm_env.state(leader=True, relations={leader_peers}, config={"releases": RELEASES}),
    )
    app_data = dict(out.get_relation(leader_peers.id).local_app_data)
    assignments = fleet.Assignments.from_json(app_data[fleet.ASSIGNMENTS_KEY])
    assert set(assignments.owners.values()) <= set(names)
    assert len(assignments.owners) == 7  # every configured release on x86_64, once

    leader_share = assignments.share_of(names[0], "x86_64")
    leader_started = [released_by(argv) for argv in charm_env.runner.started()]
    assert leader_started == leader_share[:1]  # its first release, one at a time
    built = dict.fromkeys(leader_started, names[0])
    for index in range(1, units):
        name = names[index]
        share = assignments.share_of(name, "x86_64")
        charm_env.runner.argvs.clear()
        others = {i: {fleet.UNIT_REPORT_KEY: report()} for i in range(units) if i != index}
        peers = testing.PeerRelation("builders", local_app_data=app_data, peers_data=others)
        # Each unit has its own machine, so its own state directory.
        charm_env.monkeypatch.setenv(
            "OPENEULER_IMAGE_BUILDER_STATE_DIR", str(charm_env.tmp_path / f"unit-{index}")
        )
        unit_ctx = charm_env.ctx(unit_id=index)
        result = unit_ctx.run(
            unit_ctx.on.config_changed(),
            charm_env.state(leader=False, relations={peers}, config={"releases": RELEASES}),
        )
        started = [released_by(argv) for argv in charm_env.runner.started()]
        if share:
            assert started == [share[0]]
            assert share[0] not in built
            built[share[0]] = name
            suffix = f"[share: {', '.join(share)} of 7 releases, {units} units]"
            assert result.unit_status.message.endswith(suffix)
        else:
            assert started == []
            assert result.unit_status.message.startswith("idle: no releases assigned")
    # Each unit builds from its own share only; together they cover the leader's plan.
    for release, unit in built.items():
        assert assignments.owners[f"{release}/x86_64"] == unit


def test_units_that_cannot_build_get_no_share(charm_env: CharmEnv) -> None:
    peers = testing.PeerRelation(
        "builders",
        peers_data={1: {fleet.UNIT_REPORT_KEY: report(can_build=False)}},
    )
    ctx = charm_env.ctx()
    out = ctx.run(
        ctx.on.leader_elected(),
        charm_env.state(leader=True, relations={peers}, config={"releases": RELEASES}),
    )
    assignments = fleet.Assignments.from_json(
        out.get_relation(peers.id).local_app_data[fleet.ASSIGNMENTS_KEY]
    )
    assert set(assignments.owners.values()) == {f"{APP}/0"}


def test_unit_publishes_its_inventory_without_secrets(
    charm_env: CharmEnv, maas_double: MaasDouble
) -> None:
    make_stored_image(charm_env.layout, "24.03-LTS-SP4", uploaded=True)
    secret, config = maas_config(maas_double)
    peers = testing.PeerRelation("builders")
    ctx = charm_env.ctx()
    out = ctx.run(
        ctx.on.update_status(),
        charm_env.state(relations={peers}, secrets={secret}, config=config),
    )
    databag = dict(out.get_relation(peers.id).local_unit_data)
    published = fleet.UnitReport.from_json(databag[fleet.UNIT_REPORT_KEY])
    assert published.arch == "x86_64"
    assert published.can_build
    ((image),) = published.images
    assert (image.release, image.uploaded) == ("24.03-LTS-SP4", True)
    assert maas_double.admin_key.split(":")[2] not in json.dumps(databag)


def test_non_leader_without_a_plan_waits_for_the_leader(charm_env: CharmEnv) -> None:
    peers = testing.PeerRelation("builders", peers_data={1: {fleet.UNIT_REPORT_KEY: report()}})
    ctx = charm_env.ctx()
    out = ctx.run(
        ctx.on.config_changed(),
        charm_env.state(leader=False, relations={peers}, config={"releases": "24.03"}),
    )
    assert charm_env.runner.started() == []
    assert out.unit_status.message.startswith("idle")


def test_config_changed_prunes_before_publishing_the_inventory(charm_env: CharmEnv) -> None:
    for days in (3, 2, 1):
        make_stored_image(charm_env.layout, "24.03-LTS-SP4", built_at=T0 - days * DAY)
    peers = testing.PeerRelation("builders")
    ctx = charm_env.ctx()
    out = ctx.run(
        ctx.on.config_changed(),
        charm_env.state(relations={peers}, config={"keep-images": 1}),
    )
    (kept,) = inventory.list_local_images(charm_env.layout)
    databag = dict(out.get_relation(peers.id).local_unit_data)
    published = fleet.UnitReport.from_json(databag[fleet.UNIT_REPORT_KEY])
    assert [image.built_at for image in published.images] == [kept.built_at]
    assert kept.built_at is not None and kept.built_at.startswith("2026-11-19")
