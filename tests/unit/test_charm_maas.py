"""ops.testing tests of the charm's MAAS side: the maas-region relation, the maas-api-key secret,
the key file, the credential check against the MAAS API double, and the key's secrecy.

The MAAS API double (tests/fixtures/maas_double.py) is a stand-in that follows the reference;
the charm talks to it with the real ``maas.MaasClient`` over loopback HTTP.
"""

from __future__ import annotations

import json
import logging
import stat
from typing import Any

import pytest
from fixtures.charm_env import CharmEnv
from fixtures.job_environment import environment_file_of, job_environment
from fixtures.maas_double import MaasDouble
from ops import testing

from openeuler_image_builder.unit import jobs

APP = "openeuler-image-builder"
UNREACHABLE = "http://127.0.0.1:9/MAAS"  # discard port: connection refused


def region(api_url: str | None = None, regions: list[str] | None = None) -> testing.Relation:
    data = {}
    if api_url is not None:
        data["api_url"] = api_url
    if regions is not None:
        data["regions"] = json.dumps(regions)
    return testing.Relation(
        endpoint="maas-region",
        interface="maas_controller",
        remote_app_name="maas-region",
        remote_app_data=data,
    )


def region_changed(
    env: CharmEnv, relation: testing.Relation, secret: testing.Secret | None = None
) -> tuple[testing.Context, testing.State]:
    """The region's relation-changed (the key ``secret`` configured, if given): context, state."""
    ctx = env.ctx()
    keyed: dict[str, Any] = {}
    if secret is not None:
        keyed = {"secrets": {secret}, "config": {"maas-api-key": secret.id}}
    state = env.state(relations={relation}, **keyed)
    return ctx, ctx.run(ctx.on.relation_changed(relation, remote_unit=0), state)


def api_key(key: str) -> testing.Secret:
    return testing.Secret(tracked_content={"key": key})


def key_file_text(env: CharmEnv) -> str | None:
    path = env.layout.maas_api_key_file
    return path.read_text().strip() if path.exists() else None


# --- the relation ----------------------------------------------------------------------------


def test_url_from_relation_and_nothing_published(
    charm_env: CharmEnv, maas_double: MaasDouble
) -> None:
    relation = region(maas_double.url, ["region-1.maas", "region-2.maas"])
    secret = api_key(maas_double.admin_key)
    _, out = region_changed(charm_env, relation, secret)

    assert out.unit_status == testing.ActiveStatus("ready: MAAS 127.0.0.1 holds 0 of our images")
    # The region would take a unit publishing "url" for a rack controller: publish nothing.
    published = out.get_relation(relation.id)
    assert dict(published.local_unit_data) == dict(testing.Relation("x").local_unit_data)
    assert dict(published.local_app_data) == {}
    # The check used the relation's URL with the key.
    users = [r for r in maas_double.requests if r.query.get("op") == "whoami"]
    assert users and users[-1].user == "admin"
    assert key_file_text(charm_env) == maas_double.admin_key


def test_maas_url_config_overrides_the_relation(
    charm_env: CharmEnv, maas_double: MaasDouble
) -> None:
    relation = region(UNREACHABLE)
    secret = api_key(maas_double.admin_key)
    ctx = charm_env.ctx()
    state = charm_env.state(
        relations={relation},
        secrets={secret},
        config={"maas-api-key": secret.id, "maas-url": maas_double.url},
    )
    out = ctx.run(ctx.on.config_changed(), state)
    assert out.unit_status == testing.ActiveStatus("ready: MAAS 127.0.0.1 holds 0 of our images")
    settings = json.loads((charm_env.layout.root / "settings.json").read_text())
    assert settings["maas_url"] == maas_double.url  # what background jobs upload to


def test_relation_without_url_waits(charm_env: CharmEnv) -> None:
    relation = region()
    _, out = region_changed(charm_env, relation)
    assert out.unit_status == testing.WaitingStatus(
        "waiting for the MAAS region to publish its API URL"
    )


def test_relation_with_unusable_data_waits_and_says_why(charm_env: CharmEnv) -> None:
    relation = region("maas.example:5240")
    _, out = region_changed(charm_env, relation)
    assert out.unit_status == testing.WaitingStatus(
        "the MAAS region published unusable data: api_url 'maas.example:5240' is not an "
        "http(s) URL"
    )


def test_url_without_key_blocks_with_the_commands_to_run(charm_env: CharmEnv) -> None:
    relation = region("http://10.0.0.2:5240/MAAS")
    _, out = region_changed(charm_env, relation)
    assert out.unit_status == testing.BlockedStatus(
        "MAAS at 10.0.0.2 needs an admin API key: run 'juju add-secret maas-api key=<key>', "
        f"'juju grant-secret maas-api {APP}' and 'juju config {APP} maas-api-key=<secret URI>'"
    )
    assert key_file_text(charm_env) is None


def test_key_without_url_blocks(charm_env: CharmEnv, maas_double: MaasDouble) -> None:
    secret = api_key(maas_double.admin_key)
    ctx = charm_env.ctx()
    out = ctx.run(
        ctx.on.config_changed(),
        charm_env.state(secrets={secret}, config={"maas-api-key": secret.id}),
    )
    assert out.unit_status == testing.BlockedStatus(
        "maas-api-key is set but there is no MAAS URL: integrate with maas-region "
        "('juju integrate <this app> maas-region') or set maas-url"
    )
    assert key_file_text(charm_env) is None


def test_relation_broken_removes_the_key_file(
    charm_env: CharmEnv, maas_double: MaasDouble
) -> None:
    relation = region(maas_double.url)
    secret = api_key(maas_double.admin_key)
    ctx, out = region_changed(charm_env, relation, secret)
    assert key_file_text(charm_env) == maas_double.admin_key

    out = ctx.run(ctx.on.relation_broken(relation), out)
    assert key_file_text(charm_env) is None
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "there is no MAAS URL" in out.unit_status.message


# --- the secret ------------------------------------------------------------------------------


def test_secret_not_granted_blocks_with_grant_command(charm_env: CharmEnv) -> None:
    relation = region("http://10.0.0.2:5240/MAAS")
    ctx = charm_env.ctx()
    # The config names a secret this unit cannot see (not granted, or gone).
    missing = "secret:d1rp9qfmp25c77d2gts0"
    out = ctx.run(
        ctx.on.config_changed(),
        charm_env.state(relations={relation}, config={"maas-api-key": missing}),
    )
    assert out.unit_status == testing.BlockedStatus(
        f"cannot read secret {missing} (maas-api-key): it does not exist or is not granted to "
        f"{APP}: run 'juju grant-secret {missing} {APP}'"
    )
    assert key_file_text(charm_env) is None


def test_secret_without_key_field(charm_env: CharmEnv) -> None:
    relation = region("http://10.0.0.2:5240/MAAS")
    secret = testing.Secret(tracked_content={"apikey": "a:b:c"})
    ctx = charm_env.ctx()
    out = ctx.run(
        ctx.on.config_changed(),
        charm_env.state(
            relations={relation}, secrets={secret}, config={"maas-api-key": secret.id}
        ),
    )
    assert out.unit_status == testing.BlockedStatus(
        f"secret {secret.id} (maas-api-key) has no 'key' field: run "
        f"'juju update-secret {secret.id} key=<MAAS API key>'"
    )


def test_malformed_key_blocks_without_showing_it(charm_env: CharmEnv) -> None:
    relation = region("http://10.0.0.2:5240/MAAS")
    secret = api_key("only-two:fields-SECRETVALUE")
    ctx = charm_env.ctx()
    out = ctx.run(
        ctx.on.config_changed(),
        charm_env.state(
            relations={relation}, secrets={secret}, config={"maas-api-key": secret.id}
        ),
    )
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "consumer_key:token_key:token_secret" in out.unit_status.message
    assert "SECRETVALUE" not in out.unit_status.message


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("unknown_key", "MAAS at 127.0.0.1 rejected the API key in {id}: get an admin's key"),
        ("user_key", "the API key in {id} is not a MAAS admin's, MAAS at 127.0.0.1 refuses"),
    ],
)
def test_rejected_or_non_admin_key_blocks_with_the_fix(
    charm_env: CharmEnv, maas_double: MaasDouble, which: str, expected: str
) -> None:
    relation = region(maas_double.url)
    secret = api_key(getattr(maas_double, which))
    _, out = region_changed(charm_env, relation, secret)
    assert isinstance(out.unit_status, testing.BlockedStatus)
    message = out.unit_status.message
    assert message.startswith(expected.format(id=secret.id))
    assert "juju run maas-region/leader get-api-key username=<admin>" in message
    assert f"juju update-secret {secret.id} key=<key>" in message


def test_unreachable_maas_waits_and_update_status_checks_again(
    charm_env: CharmEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    import charm_state  # src/ module, patched where the charm looks it up

    calls: list[str] = []
    real = charm_state.check_maas

    def counting(*args: Any, **kwargs: Any) -> charm_state.MaasCheck:
        result = real(*args, **kwargs)
        calls.append(result.kind)
        return result

    monkeypatch.setattr(charm_state, "check_maas", counting)
    relation = region(UNREACHABLE)
    secret = api_key("a:b:c")
    ctx, out = region_changed(charm_env, relation, secret)
    assert isinstance(out.unit_status, testing.WaitingStatus)
    assert out.unit_status.message.startswith(f"MAAS unreachable at {UNREACHABLE}")
    assert out.unit_status.message.endswith("checking again at the next update-status")
    assert calls == ["unreachable"]

    out = ctx.run(ctx.on.update_status(), out)  # a MAAS that did not answer is asked again
    assert calls == ["unreachable", "unreachable"]
    out = ctx.run(ctx.on.leader_elected(), out)  # other hooks do not ask
    assert calls == ["unreachable", "unreachable"]


def test_credentials_checked_once_not_on_update_status(
    charm_env: CharmEnv, maas_double: MaasDouble
) -> None:
    relation = region(maas_double.url)
    secret = api_key(maas_double.admin_key)
    ctx, out = region_changed(charm_env, relation, secret)
    made = len(maas_double.requests)
    assert made > 0
    out = ctx.run(ctx.on.update_status(), out)
    out = ctx.run(ctx.on.config_changed(), out)  # nothing MAAS-related changed
    assert len(maas_double.requests) == made
    assert out.unit_status == testing.ActiveStatus("ready: MAAS 127.0.0.1 holds 0 of our images")


def test_status_counts_our_images_in_maas(charm_env: CharmEnv, maas_double: MaasDouble) -> None:
    maas_double.add_uploaded("openeuler-24.03-lts-sp2", "amd64/generic", b"x" * 10)
    maas_double.add_uploaded("rhel/openeuler-22.03-lts-sp4", "amd64/generic", b"y" * 10)
    maas_double.add_uploaded("custom/something-else", "amd64/generic", b"z" * 10)
    relation = region(maas_double.url)
    secret = api_key(maas_double.admin_key)
    _, out = region_changed(charm_env, relation, secret)
    assert out.unit_status == testing.ActiveStatus("ready: MAAS 127.0.0.1 holds 2 of our images")


def test_secret_rotation_is_picked_up(charm_env: CharmEnv, maas_double: MaasDouble) -> None:
    relation = region(maas_double.url)
    secret = testing.Secret(
        tracked_content={"key": maas_double.user_key},
        latest_content={"key": maas_double.user_key},
    )
    ctx, out = region_changed(charm_env, relation, secret)
    assert isinstance(out.unit_status, testing.BlockedStatus)  # non-admin key

    rotated = testing.Secret(
        id=secret.id,
        tracked_content={"key": maas_double.user_key},
        latest_content={"key": maas_double.admin_key},
    )
    state = testing.State(
        relations={relation},
        secrets={rotated},
        config={"maas-api-key": secret.id},
        resources=out.resources,
        stored_states=out.stored_states,
    )
    out = ctx.run(ctx.on.secret_changed(rotated), state)
    assert out.unit_status == testing.ActiveStatus("ready: MAAS 127.0.0.1 holds 0 of our images")
    assert key_file_text(charm_env) == maas_double.admin_key


def test_key_file_is_root_only_and_removed_with_the_key(
    charm_env: CharmEnv, maas_double: MaasDouble
) -> None:
    relation = region(maas_double.url)
    secret = api_key(maas_double.admin_key)
    ctx, out = region_changed(charm_env, relation, secret)
    path = charm_env.layout.maas_api_key_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    state = testing.State(
        relations={relation},
        resources=out.resources,
        stored_states=out.stored_states,
    )  # maas-api-key unset again
    out = ctx.run(ctx.on.config_changed(), state)
    assert not path.exists()
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "needs an admin API key" in out.unit_status.message


# --- the key never leaks ---------------------------------------------------------------------


def test_the_key_appears_in_no_log_argv_result_or_databag(
    charm_env: CharmEnv, maas_double: MaasDouble, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = maas_double.admin_key
    token_secret = key.split(":")[2]
    relation = region(maas_double.url)
    secret = api_key(key)
    ctx = charm_env.ctx()
    state = charm_env.state(
        relations={relation}, secrets={secret}, config={"maas-api-key": secret.id}
    )
    out = ctx.run(
        ctx.on.install(),
        charm_env.state(
            installed=False,
            relations={relation},
            secrets={secret},
            config={"maas-api-key": secret.id},
        ),
    )
    out = ctx.run(ctx.on.relation_changed(relation, remote_unit=0), state)
    out = ctx.run(ctx.on.action("build-image", params={"release": "24.03", "upload": True}), out)
    results = [dict(ctx.action_results or {})]
    out = ctx.run(ctx.on.action("list-images"), out)
    results.append(dict(ctx.action_results or {}))
    out = ctx.run(ctx.on.action("build-status"), out)
    results.append(dict(ctx.action_results or {}))
    out = ctx.run(ctx.on.update_status(), out)

    assert out.unit_status.name == "maintenance"  # the upload build runs
    for record in caplog.records:
        text = record.getMessage()
        assert token_secret not in text, record.name
    for argv in charm_env.runner.argvs:
        assert not any(token_secret in arg for arg in argv)
    # The job gets the key by file only.
    (start,) = charm_env.runner.started()
    environment = job_environment(start)
    assert environment["MAAS_API_KEY_FILE"] == str(charm_env.layout.maas_api_key_file)
    assert token_secret not in environment_file_of(start).read_text()
    assert token_secret not in json.dumps(results)
    for relation_out in out.relations:
        for databag in (relation_out.local_app_data, relation_out.local_unit_data):
            assert token_secret not in json.dumps(dict(databag))
    for path in charm_env.layout.root.rglob("*"):
        if path.is_file() and path != charm_env.layout.maas_api_key_file:
            assert token_secret.encode() not in path.read_bytes(), path
    job = charm_env.job_states()[0]
    assert job.upload_requested
    assert isinstance(job, jobs.JobState)


@pytest.mark.parametrize(
    ("stored", "force", "retry", "due"),
    [
        (None, False, False, False),  # a plain hook never checks
        (None, True, False, True),  # config, secret or relation changed: a new key
        (None, False, True, True),  # update-status: never checked yet
        ("ok", True, False, False),  # a good check is not repeated
        ("ok", False, True, False),
        ("rejected", True, False, True),  # the operator may have fixed the user in MAAS
        ("rejected", False, True, False),  # update-status does not hammer a refusing MAAS
        ("unreachable", False, True, True),  # ... but retries one that did not answer
        ("unreachable", False, False, False),
    ],
)
def test_when_the_credentials_are_checked(
    stored: str | None, force: bool, retry: bool, due: bool
) -> None:
    import charm_state

    current = None if stored is None else charm_state.MaasCheck("f", stored)  # type: ignore[arg-type]
    assert charm_state.check_due(current, force=force, retry=retry) is due
