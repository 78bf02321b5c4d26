"""The maas_controller requirer library (lib/charms/openeuler_image_builder/v0/maas_controller.py),
tested with a minimal charm of its own, as any charm reusing it would use it.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import ops
import pytest
from charms.openeuler_image_builder.v0 import maas_controller
from charms.openeuler_image_builder.v0.maas_controller import (
    InvalidMaasEndpointError,
    MaasControllerRequirer,
    MaasEndpoint,
    parse_endpoint,
)
from ops import testing

META = {
    "name": "maas-user",
    "requires": {"maas-region": {"interface": "maas_controller", "limit": 1}},
}


class RequirerCharm(ops.CharmBase):
    """Records what the library tells it."""

    seen: ClassVar[list[MaasEndpoint | None]] = []

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.maas = MaasControllerRequirer(self)
        framework.observe(self.maas.on.endpoint_changed, self._on_endpoint_changed)
        framework.observe(self.on.collect_unit_status, self._on_collect_status)

    def _on_endpoint_changed(self, event: ops.EventBase) -> None:
        RequirerCharm.seen.append(self.maas.endpoint)

    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        if self.maas.problem:
            event.add_status(ops.WaitingStatus(self.maas.problem))
        endpoint = self.maas.endpoint
        event.add_status(ops.ActiveStatus(endpoint.api_url if endpoint else "no MAAS"))


@pytest.fixture(autouse=True)
def _fresh() -> None:
    RequirerCharm.seen.clear()


def region(data: dict[str, str]) -> testing.Relation:
    return testing.Relation("maas-region", remote_app_name="maas-region", remote_app_data=data)


def ctx() -> testing.Context[RequirerCharm]:
    return testing.Context(RequirerCharm, meta=META)


def test_library_metadata() -> None:
    assert len(maas_controller.LIBID) == 32
    assert maas_controller.LIBAPI == 0
    assert maas_controller.LIBPATCH >= 1
    assert maas_controller.PYDEPS == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, None),
        ({"api_url": ""}, None),
        (
            {"api_url": "http://10.0.0.2:5240/MAAS/", "regions": '["r1.maas", "r2.maas"]'},
            MaasEndpoint("http://10.0.0.2:5240/MAAS", ("r1.maas", "r2.maas")),
        ),
        (
            {"api_url": "https://maas.example.com/MAAS", "maas_secret_id": "secret:x"},
            MaasEndpoint("https://maas.example.com/MAAS"),
        ),
    ],
)
def test_parse_endpoint(data: dict[str, str], expected: MaasEndpoint | None) -> None:
    assert parse_endpoint(data) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"api_url": "10.0.0.2:5240/MAAS"}, "api_url '10.0.0.2:5240/MAAS' is not an http(s) URL"),
        ({"api_url": "http://m/MAAS", "regions": "r1,r2"}, "regions 'r1,r2' is not a JSON list"),
        ({"api_url": "http://m/MAAS", "regions": "[1, 2]"}, "is not a JSON list of host names"),
    ],
)
def test_parse_endpoint_refuses_bad_data(data: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidMaasEndpointError) as caught:
        parse_endpoint(data)
    assert message in str(caught.value)


def test_endpoint_host() -> None:
    assert MaasEndpoint("http://10.0.0.2:5240/MAAS").host == "10.0.0.2"
    assert MaasEndpoint("https://maas.example.com/MAAS").host == "maas.example.com"


def test_relation_changed_emits_endpoint_changed_and_publishes_nothing() -> None:
    relation = region({"api_url": "http://10.0.0.2:5240/MAAS", "regions": json.dumps(["r1"])})
    context = ctx()
    out = context.run(
        context.on.relation_changed(relation, remote_unit=0), testing.State(relations={relation})
    )
    assert RequirerCharm.seen == [MaasEndpoint("http://10.0.0.2:5240/MAAS", ("r1",))]
    assert out.unit_status == testing.ActiveStatus("http://10.0.0.2:5240/MAAS")
    after = out.get_relation(relation.id)
    assert dict(after.local_app_data) == {}
    assert dict(after.local_unit_data) == dict(testing.Relation("x").local_unit_data)


@pytest.mark.parametrize("event", ["relation_created", "relation_joined", "relation_departed"])
def test_other_relation_events_also_notify(event: str) -> None:
    relation = region({"api_url": "http://10.0.0.2:5240/MAAS"})
    context = ctx()
    make: Any = getattr(context.on, event)
    kwargs = {"remote_unit": 0} if event != "relation_created" else {}
    context.run(make(relation, **kwargs), testing.State(relations={relation}))
    assert RequirerCharm.seen == [MaasEndpoint("http://10.0.0.2:5240/MAAS")]


def test_relation_broken_means_no_endpoint() -> None:
    relation = region({"api_url": "http://10.0.0.2:5240/MAAS"})
    context = ctx()
    out = context.run(context.on.relation_broken(relation), testing.State(relations={relation}))
    assert RequirerCharm.seen == [None]
    assert out.unit_status == testing.ActiveStatus("no MAAS")


def test_problem_while_the_region_has_not_published() -> None:
    relation = region({})
    context = ctx()
    out = context.run(
        context.on.relation_changed(relation, remote_unit=0), testing.State(relations={relation})
    )
    assert out.unit_status == testing.WaitingStatus(
        "waiting for the MAAS region to publish its API URL"
    )


def test_problem_with_unusable_data_and_endpoint_none() -> None:
    relation = region({"api_url": "ftp://m/MAAS"})
    context = ctx()
    out = context.run(
        context.on.relation_changed(relation, remote_unit=0), testing.State(relations={relation})
    )
    assert RequirerCharm.seen == [None]
    assert out.unit_status == testing.WaitingStatus(
        "the MAAS region published unusable data: api_url 'ftp://m/MAAS' is not an http(s) URL"
    )


def test_no_relation_no_problem() -> None:
    context = ctx()
    out = context.run(context.on.update_status(), testing.State())
    assert out.unit_status == testing.ActiveStatus("no MAAS")
