"""The MAAS API double itself follows the reference (shared/reference/maas-api.md).

These pin the behaviours the upload tests rely on, so a change to the double that drifts from
the reference fails here and not silently in the client's tests.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from fixtures.maas_double import MaasDouble

from openeuler_image_builder import maas
from openeuler_image_builder.maas import client as maas_client

MiB = 1024 * 1024


class Api:
    """Raw signed calls to the double."""

    def __init__(self, double: MaasDouble, key: str | None = None) -> None:
        self.double = double
        self.auth = maas_client._PlaintextOAuth(maas.ApiKey.parse(key or double.admin_key))
        self.session = requests.Session()

    def url(self, path: str) -> str:
        return path if path.startswith("http") else self.double.url + "/api/2.0/" + path

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("auth", self.auth)
        return self.session.request(method, self.url(path), timeout=30, **kwargs)

    def create(self, **fields: str) -> requests.Response:
        return self.call(
            "POST", "boot-resources/", files={k: (None, v) for k, v in fields.items()}
        )

    def put(self, upload_uri: str, data: bytes) -> requests.Response:
        return self.call(
            "PUT",
            self.double.url.removesuffix("/MAAS") + upload_uri,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )


def form(data: bytes, **extra: str) -> dict[str, str]:
    fields = {
        "name": "custom/oe-test",
        "architecture": "amd64/generic",
        "title": "t",
        "filetype": "tgz",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": str(len(data)),
        "base_image": "rhel/9",
    }
    fields.update(extra)
    return {k: v for k, v in fields.items() if v != "-"}


def newest_file(resource: dict[str, Any]) -> dict[str, Any]:
    found = maas.newest_set(resource)
    assert found is not None
    file = maas.single_file(found[1])
    assert file is not None
    return file


def test_version_is_anonymous_and_the_rest_needs_a_key(maas_double: MaasDouble) -> None:
    api = Api(maas_double)
    assert api.call("GET", "version/", auth=None).json()["version"] == "3.6.2"
    assert api.call("GET", "boot-resources/", auth=None).status_code == 401
    assert api.call("GET", "boot-resources/").status_code == 200


def test_maas_style_unquoted_header_is_accepted(maas_double: MaasDouble) -> None:
    # MAAS's own curtin_install.py builds the header without quotes.
    consumer, token, secret = maas_double.admin_key.split(":")
    header = (
        f"OAuth oauth_version=1.0, oauth_signature_method=PLAINTEXT, "
        f"oauth_consumer_key={consumer}, oauth_token={token}, oauth_signature=&{secret}, "
        f"oauth_nonce=n, oauth_timestamp=1"
    )
    response = requests.get(
        maas_double.url + "/api/2.0/users/?op=whoami", headers={"Authorization": header}, timeout=9
    )
    assert response.json()["username"] == "admin"
    bad = header.replace("PLAINTEXT", "HMAC-SHA1")
    response = requests.get(
        maas_double.url + "/api/2.0/users/?op=whoami", headers={"Authorization": bad}, timeout=9
    )
    assert response.status_code == 401


def test_non_admin_may_read_but_not_change(maas_double: MaasDouble) -> None:
    user = Api(maas_double, maas_double.user_key)
    assert user.call("GET", "boot-resources/").status_code == 200
    response = user.create(**form(b"x"))
    assert (response.status_code, response.text) == (
        403,
        "This method is reserved for admin users.",
    )
    resource_id = Api(maas_double).create(**form(b"x")).json()["id"]
    assert user.call("DELETE", f"boot-resources/{resource_id}/").status_code == 403


def test_chunked_upload_protocol(maas_double: MaasDouble) -> None:
    api = Api(maas_double)
    data = bytes(range(256)) * 40000  # 10_240_000 bytes
    created = api.create(**form(data))
    assert created.status_code == 201
    rfile = newest_file(created.json())
    assert rfile["complete"] is False and rfile["progress"] == 0.0
    uri = rfile["upload_uri"]
    assert uri.startswith("/MAAS/api/2.0/boot-resources/")
    assert (api.put(uri, b"").status_code, api.put(uri, b"").text) == (400, "Missing data.")
    assert api.put(uri, data[: 4 * MiB]).status_code == 200
    assert api.put(uri, data[4 * MiB : 8 * MiB]).status_code == 200
    too_much = api.put(uri, data[8 * MiB :] + b"!")
    assert (too_much.status_code, too_much.text) == (400, "Too much data received.")
    wrong = api.put(uri, b"?" * (len(data) - 8 * MiB))
    assert (wrong.status_code, wrong.text) == (
        400,
        "Saved content does not match given SHA256 value.",
    )
    assert api.put(uri, data[8 * MiB :]).status_code == 200
    again = api.put(uri, data[8 * MiB :])
    assert (again.status_code, again.text) == (400, "Cannot upload to a complete file.")
    resource = api.call("GET", f"boot-resources/{created.json()['id']}/").json()
    assert newest_file(resource)["complete"] is True
    assert "upload_uri" not in newest_file(resource)
    assert maas_double.content(resource["id"]) == data


def test_bodies_over_10_mib_get_413(maas_double: MaasDouble) -> None:
    api = Api(maas_double)
    data = b"z" * (10 * MiB + 1)
    created = api.create(**form(data)).json()
    response = api.put(newest_file(created)["upload_uri"], data)
    assert response.status_code == 413
    assert "413 Request Entity Too Large" in response.text


def test_content_form_on_36_and_not_on_38(
    maas_double_factory: Callable[..., MaasDouble],
) -> None:
    data = b"small image" * 1000
    old = maas_double_factory(version="3.6.2")
    fields = {k: (None, v) for k, v in form(data, sha256="-", size="-").items()}
    response = Api(old).call(
        "POST", "boot-resources/", files={**fields, "content": ("root.tgz", data)}
    )
    assert response.status_code == 201
    assert newest_file(response.json())["sha256"] == hashlib.sha256(data).hexdigest()
    assert newest_file(response.json())["complete"] is True

    new = maas_double_factory(version="3.8.0")
    response = Api(new).call(
        "POST", "boot-resources/", files={**fields, "content": ("root.tgz", data)}
    )
    assert response.status_code == 400
    assert response.json() == {
        "sha256": ["This field is required."],
        "size": ["This field is required."],
    }
    # Too big for the one-shot form through the snap's nginx either way.
    big = b"b" * (11 * MiB)
    response = Api(old).call("POST", "boot-resources/", files={**fields, "content": ("r", big)})
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("version", "given", "stored"),
    [
        ("3.6.2", "custom/oe-x", "oe-x"),
        ("3.6.2", "oe-x", "oe-x"),
        ("3.8.0", "custom/oe-x", "custom/oe-x"),
        ("3.8.0", "oe-x", "custom/oe-x"),
        ("3.8.0", "rhel/oe-x", "rhel/oe-x"),
    ],
)
def test_stored_names(
    maas_double_factory: Callable[..., MaasDouble], version: str, given: str, stored: str
) -> None:
    double = maas_double_factory(version=version)
    response = Api(double).create(**form(b"x", name=given))
    assert response.json()["name"] == stored


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("custom/noble", "noble is a reserved name"),
        ("ubuntu", "ubuntu is a reserved name"),
        ("custom/centos71", "centos71 is a reserved name"),
        ("custom/rhel", "rhel is a reserved name"),
        ("debian/x", "Unsupport operating system debian"),  # codespell:ignore
    ],
)
def test_name_validation(maas_double: MaasDouble, name: str, error: str) -> None:
    response = Api(maas_double).create(**form(b"x", name=name))
    assert response.status_code == 400
    assert error in response.json()["name"][0]


@pytest.mark.parametrize(
    ("name", "base_image", "stored", "error"),
    [
        ("custom/oe-a", "-", "ubuntu/noble", None),  # defaults to the commissioning OS
        ("custom/oe-b", "rhel/9", "rhel/9", None),
        ("custom/oe-c", "rhel/anything", "rhel/anything", None),
        ("rhel/oe-d", "rhel/9", None, None),  # forced empty for rhel/ names
        ("custom/oe-e", "windows/2022", None, "valid non-custom OS type base image"),
        ("custom/oe-f", "rhel9", None, "must follow the format"),
        ("custom/oe-g", "ubuntu/warty", None, "valid base image OS and version"),
    ],
)
def test_base_image_rules(
    maas_double: MaasDouble, name: str, base_image: str, stored: str | None, error: str | None
) -> None:
    response = Api(maas_double).create(**form(b"x", name=name, base_image=base_image))
    if error:
        assert response.status_code == 400
        assert error in response.json()["base_image"][0]
    else:
        assert response.status_code == 201
        assert response.json().get("base_image") == stored


def test_usable_architectures_and_filetypes(
    maas_double_factory: Callable[..., MaasDouble],
) -> None:
    double = maas_double_factory(usable_architectures=("amd64/generic",))
    response = Api(double).create(**form(b"x", architecture="arm64/generic"))
    assert response.json()["architecture"] == [
        "'arm64/generic' is not a valid architecture.  It should be one of: 'amd64/generic'."
    ]
    response = Api(double).create(**form(b"x", filetype="tzst"))
    assert "tzst is not one of the available choices" in response.json()["filetype"][0]


def test_same_sha256_with_another_size_is_refused(maas_double: MaasDouble) -> None:
    api = Api(maas_double)
    api.create(**form(b"abc"))
    response = api.create(**form(b"abc", name="custom/oe-other", size="4"))
    assert response.json() == {
        "__all__": ["File already exists with sha256 that is of different size."]
    }


def test_repost_adds_a_set_and_drops_older_files(maas_double: MaasDouble) -> None:
    api = Api(maas_double)
    first = api.create(**form(b"one")).json()
    second = api.create(**form(b"two")).json()
    assert first["id"] == second["id"]
    assert len(second["sets"]) == 2
    older = [s for v, s in second["sets"].items() if v != maas.newest_set(second)[0]]  # type: ignore[index]
    assert older[0]["files"] == {}
    assert newest_file(second)["sha256"] == hashlib.sha256(b"two").hexdigest()


def test_completion_waits_for_every_region(
    maas_double_factory: Callable[..., MaasDouble],
) -> None:
    double = maas_double_factory(regions=2, sync_delay=0.4)
    api = Api(double)
    data = b"r" * MiB
    created = api.create(**form(data)).json()
    assert api.put(newest_file(created)["upload_uri"], data).status_code == 200
    path = f"boot-resources/{created['id']}/"
    rfile = newest_file(api.call("GET", path).json())
    assert rfile["complete"] is False and 50 <= rfile["progress"] < 100
    time.sleep(0.5)
    resource = api.call("GET", path).json()
    assert newest_file(resource)["complete"] is True
    assert maas.newest_set(resource)[1]["complete"] is True  # type: ignore[index]


def test_delete_and_missing_resources(maas_double: MaasDouble) -> None:
    api = Api(maas_double)
    resource_id = api.create(**form(b"d")).json()["id"]
    assert api.call("DELETE", f"boot-resources/{resource_id}/").status_code == 204
    missing = api.call("GET", f"boot-resources/{resource_id}/")
    assert (missing.status_code, missing.text) == (404, "No BootResource matches the given query.")
    assert api.call("GET", "boot-resources/?type=bogus").status_code == 400


def test_synced_images_are_listed_but_not_uploadable(maas_double: MaasDouble) -> None:
    api = Api(maas_double)
    synced = api.call("GET", "boot-resources/?type=synced").json()
    assert {r["architecture"] for r in synced} == {"amd64/generic", "arm64/generic"}
    assert api.call("GET", "boot-resources/?type=uploaded").json() == []


def test_fault_injection_counts_skip_and_times(maas_double: MaasDouble) -> None:
    api = Api(maas_double)
    maas_double.fail_next("GET", "version/", 503, skip=1, times=2)
    statuses = [api.call("GET", "version/").status_code for _ in range(4)]
    assert statuses == [200, 503, 503, 200]
    maas_double.reset_next("GET", "version/")
    with pytest.raises(requests.ConnectionError):
        api.call("GET", "version/")
