# Copyright 2026 openeuler-image-builder contributors
# Licensed under the Apache License, Version 2.0.
"""Requirer side of the ``maas_controller`` interface: the MAAS API URL from a region charm.

The maas-region charm (tracks 3.4 to 3.6; the endpoint was removed in 3.7) provides the
``maas-region`` endpoint with interface ``maas_controller``. Its leader publishes, in its
**application** databag, to every related application:

==================  =========================================================================
key                 meaning
==================  =========================================================================
``api_url``         the MAAS API URL (the region's ``maas_url`` config, else its haproxy or
                    bind address), e.g. ``http://10.0.0.2:5240/MAAS``
``regions``         JSON list of the region hosts' FQDNs
``maas_secret_id``  a Juju secret with the region↔rack RPC secret, meant for rack controllers;
                    **not read here** (it is not an API credential)
==================  =========================================================================

This requirer **publishes nothing** in its own databags: the region treats related units that
publish a ``url`` as rack controllers (it switches to region+rack mode when one matches its own
host). A charm that only needs the API URL must stay silent. No track of the region charm hands
out an API key over the relation; get one with the region's ``get-api-key`` action and pass it
to your charm through a ``type: secret`` config option.

Usage::

    from charms.openeuler_image_builder.v0.maas_controller import MaasControllerRequirer

    class MyCharm(ops.CharmBase):
        def __init__(self, framework: ops.Framework):
            super().__init__(framework)
            self.maas_region = MaasControllerRequirer(self, "maas-region")
            framework.observe(self.maas_region.on.endpoint_changed, self._on_maas_changed)

        def _on_maas_changed(self, event: ops.EventBase):
            endpoint = self.maas_region.endpoint  # MaasEndpoint or None
            ...

``charmcraft.yaml``::

    requires:
      maas-region:
        interface: maas_controller
        optional: true
        limit: 1
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from urllib.parse import urlsplit

import ops

# The unique Charmhub library identifier, never change it
LIBID = "337d9f1703144833924cd0cd95c71251"

# Increment this major API version when introducing breaking changes
LIBAPI = 0

# Increment this PATCH version before using `charmcraft publish-lib` or reset
# to 0 if you are raising the major API version
LIBPATCH = 1

PYDEPS: list[str] = []

logger = logging.getLogger(__name__)

DEFAULT_RELATION_NAME = "maas-region"
_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")


@dataclasses.dataclass(frozen=True)
class MaasEndpoint:
    """What the region publishes: the API URL and the region hosts.

    Attributes:
        api_url: the MAAS API URL, without a trailing slash (``http://host:5240/MAAS``).
        regions: FQDNs of the region controllers (may be empty).
    """

    api_url: str
    regions: tuple[str, ...] = ()

    @property
    def host(self) -> str:
        """The host name (or address) of ``api_url``."""
        return urlsplit(self.api_url).hostname or self.api_url


class InvalidMaasEndpointError(ValueError):
    """The region published data this library cannot use (the message says which key)."""


def parse_endpoint(data: dict[str, str] | ops.RelationDataContent) -> MaasEndpoint | None:
    """Read a ``maas_controller`` provider application databag.

    Returns:
        The endpoint, or None when the region has not published ``api_url`` yet.

    Raises:
        InvalidMaasEndpointError: ``api_url`` is not an http(s) URL, or ``regions`` is not a
            JSON list of strings.
    """
    api_url = (data.get("api_url") or "").strip()
    if not api_url:
        return None
    if not _URL.match(api_url):
        raise InvalidMaasEndpointError(f"api_url {api_url!r} is not an http(s) URL")
    regions: tuple[str, ...] = ()
    raw_regions = data.get("regions")
    if raw_regions:
        try:
            parsed = json.loads(raw_regions)
        except ValueError:
            parsed = None
        if not isinstance(parsed, list) or not all(isinstance(r, str) for r in parsed):
            raise InvalidMaasEndpointError(
                f"regions {raw_regions!r} is not a JSON list of host names"
            )
        regions = tuple(parsed)
    return MaasEndpoint(api_url=api_url.rstrip("/"), regions=regions)


class MaasEndpointChangedEvent(ops.EventBase):
    """The region's published endpoint may have changed (read ``endpoint`` again)."""


class MaasControllerRequirerEvents(ops.ObjectEvents):
    """Events of ``MaasControllerRequirer``."""

    endpoint_changed = ops.EventSource(MaasEndpointChangedEvent)


class MaasControllerRequirer(ops.Object):
    """Reads the MAAS API URL and region list a maas-region charm publishes; writes nothing."""

    on = MaasControllerRequirerEvents()  # pyright: ignore[reportAssignmentType]

    def __init__(self, charm: ops.CharmBase, relation_name: str = DEFAULT_RELATION_NAME):
        super().__init__(charm, relation_name)
        self.charm = charm
        self.relation_name = relation_name
        events = charm.on[relation_name]
        for event in (
            events.relation_created,
            events.relation_joined,
            events.relation_changed,
            events.relation_departed,
            events.relation_broken,
        ):
            self.framework.observe(event, self._on_relation_event)

    def _on_relation_event(self, event: ops.RelationEvent) -> None:
        self.on.endpoint_changed.emit()

    @property
    def relation(self) -> ops.Relation | None:
        """The relation to the region (``limit: 1``), or None (during relation-broken too)."""
        return self.model.get_relation(self.relation_name)

    @property
    def endpoint(self) -> MaasEndpoint | None:
        """The published endpoint; None without a relation, before publication, or if invalid.

        Invalid data is logged; ``problem`` says what is wrong with it.
        """
        try:
            return self._read()
        except InvalidMaasEndpointError as error:
            logger.warning("maas-region relation: %s", error)
            return None

    @property
    def problem(self) -> str | None:
        """Why there is no endpoint although the relation exists, or None."""
        relation = self.relation
        if relation is None:
            return None
        try:
            endpoint = self._read()
        except InvalidMaasEndpointError as error:
            return f"the MAAS region published unusable data: {error}"
        if endpoint is None:
            return "waiting for the MAAS region to publish its API URL"
        return None

    def _read(self) -> MaasEndpoint | None:
        relation = self.relation
        if relation is None or relation.app is None:
            return None
        return parse_endpoint(relation.data[relation.app])
