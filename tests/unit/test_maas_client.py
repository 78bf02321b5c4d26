"""MaasClient: API key handling, OAuth header, retries, credentials check, TLS."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import pytest
from fixtures.maas_double import MaasDouble

from openeuler_image_builder import maas
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.maas import client as maas_client

KEY = "Consumer1:Token22:Secret333"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- API key ----------------------------------------------------------------------------------


def test_api_key_parse_and_repr_hide_the_secret() -> None:
    key = maas.ApiKey.parse(f"  {KEY}\n")
    assert (key.consumer_key, key.token_key, key.token_secret) == (
        "Consumer1",
        "Token22",
        "Secret333",
    )
    assert "Secret333" not in repr(key)
    assert "Token22" not in repr(key)


@pytest.mark.parametrize(
    "text", ["Consumer1:Token22", "a:b:c:d", "Consumer1::Secret333", "", "a:b c:d"]
)
def test_malformed_keys_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        maas.ApiKey.parse(text)
    message = str(caught.value)
    assert "maas apikey --username ADMIN" in message
    for part in text.split(":"):
        if len(part) > 2:
            assert part not in message


def test_key_from_environment_variable() -> None:
    assert maas.api_key_from_environment({"MAAS_API_KEY": f" {KEY} "}) == KEY
    assert maas.api_key_from_environment({}) is None


def test_key_from_a_private_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    assert maas.api_key_from_environment({"MAAS_API_KEY_FILE": str(key_file)}) == KEY
    # The variable wins over the file.
    env = {"MAAS_API_KEY": "x:y:z", "MAAS_API_KEY_FILE": str(key_file)}
    assert maas.api_key_from_environment(env) == "x:y:z"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_a_key_file_other_users_can_access_is_refused(tmp_path: Path, mode: int) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    key_file.chmod(mode)
    with pytest.raises(UsageError) as caught:
        maas.api_key_from_environment({"MAAS_API_KEY_FILE": str(key_file)})
    assert f"(mode {mode:04o}): run `chmod 600 {key_file}`" in str(caught.value)
    assert "Secret333" not in str(caught.value)


def test_key_file_problems(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(UsageError, match=r"cannot read the MAAS API key file .*missing"):
        maas.read_api_key_file(missing)
    several = tmp_path / "several"
    several.write_text(f"{KEY}\nother:key:here\n")
    several.chmod(0o600)
    with pytest.raises(UsageError, match=r"exactly one key .* 2 non-empty lines"):
        maas.read_api_key_file(several)
    with pytest.raises(UsageError, match="not a regular file"):
        maas.read_api_key_file(tmp_path)


# -- URL and header ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://10.0.0.2:5240/MAAS", "http://10.0.0.2:5240/MAAS"),
        ("http://10.0.0.2:5240/MAAS/", "http://10.0.0.2:5240/MAAS"),
        ("http://10.0.0.2:5240/MAAS/api/2.0/", "http://10.0.0.2:5240/MAAS"),
        ("https://maas.example:5443", "https://maas.example:5443/MAAS"),
        (" http://maas/MAAS ", "http://maas/MAAS"),
    ],
)
def test_url_normalisation(given: str, expected: str) -> None:
    assert maas.normalise_maas_url(given) == expected


@pytest.mark.parametrize("bad", ["maas.example:5240", "ftp://maas/MAAS", "http:///MAAS", ""])
def test_bad_urls_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError, match="invalid MAAS URL"):
        maas.normalise_maas_url(bad)


def test_oauth_plaintext_header() -> None:
    auth = maas_client._PlaintextOAuth(maas.ApiKey.parse(KEY))
    header = auth.header()
    assert header.startswith("OAuth ")
    params = {
        name: unquote(value.strip('"'))
        for name, value in (item.split("=", 1) for item in header[6:].split(", "))
    }
    assert params["oauth_version"] == "1.0"
    assert params["oauth_signature_method"] == "PLAINTEXT"
    assert params["oauth_consumer_key"] == "Consumer1"
    assert params["oauth_token"] == "Token22"  # noqa: S105 - a test key
    assert params["oauth_signature"] == "&Secret333"
    assert 'oauth_signature="%26Secret333"' in header  # RFC 5849 encoding of "&"
    assert params["oauth_timestamp"].isdigit()
    assert params["oauth_nonce"] != dict(
        item.split("=", 1) for item in auth.header()[6:].split(", ")
    )["oauth_nonce"].strip('"')
    assert "Secret333" not in repr(auth)


def test_client_repr_and_errors_never_show_the_key() -> None:
    client = maas.MaasClient("http://127.0.0.1:1/MAAS", KEY, retries=0)
    assert "Secret333" not in repr(client)
    with pytest.raises(maas.MaasUnreachable) as caught:
        client.version()
    assert "Secret333" not in str(caught.value)


# -- retries ----------------------------------------------------------------------------------


def test_5xx_and_connection_errors_are_retried_with_backoff(maas_double: MaasDouble) -> None:
    client = maas.MaasClient(maas_double.url, maas_double.admin_key, retries=3, backoff=0.5)
    delays: list[float] = []
    client.sleep = delays.append
    maas_double.fail_next("GET", "boot-resources/", 503, times=2)
    maas_double.reset_next("GET", "boot-resources/", skip=2)
    assert client.boot_resources() != []
    statuses = [r.status for r in maas_double.requests]
    assert statuses == [503, 503, -1, 200]
    # Exponential: 0.5, 1, 2 seconds, each with +-20 % jitter.
    assert len(delays) == 3
    for delay, base in zip(delays, [0.5, 1, 2], strict=True):
        assert 0.8 * base <= delay <= 1.2 * base


def test_4xx_is_not_retried(maas_double: MaasDouble) -> None:
    client = maas.MaasClient(maas_double.url, maas_double.admin_key, retries=5)
    client.sleep = lambda _: pytest.fail("no retry on 4xx")
    maas_double.fail_next("GET", "boot-resources/", 404, times=5, body="nope")
    with pytest.raises(maas.MaasApiError) as caught:
        client.boot_resources()
    assert caught.value.status == 404 and caught.value.maas_text == "nope"
    assert len(maas_double.requests) == 1


def test_retries_are_bounded(maas_double: MaasDouble) -> None:
    client = maas.MaasClient(maas_double.url, maas_double.admin_key, retries=2, backoff=0)
    maas_double.fail_next("GET", "boot-resources/", 503, times=10)
    with pytest.raises(maas.MaasApiError, match="HTTP 503"):
        client.boot_resources()
    assert len(maas_double.requests) == 3


def test_connection_refused_is_unreachable_with_the_url() -> None:
    port = free_port()
    client = maas.MaasClient(f"http://127.0.0.1:{port}/MAAS", KEY, retries=1, backoff=0)
    with pytest.raises(maas.MaasUnreachable) as caught:
        maas.check_credentials(client)
    assert str(caught.value) == (
        f"maas failed: MAAS is unreachable at http://127.0.0.1:{port}/MAAS: connection refused"
    )
    assert isinstance(caught.value, StepFailed)


def test_every_call_has_a_timeout() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)  # accepts the connection but never answers
        port = server.getsockname()[1]
        client = maas.MaasClient(f"http://127.0.0.1:{port}/MAAS", KEY, timeout=0.3, retries=0)
        with pytest.raises(maas.MaasUnreachable, match="timed out"):
            client.version()


# -- credentials ------------------------------------------------------------------------------


def test_check_credentials_admin(maas_double: MaasDouble) -> None:
    with maas.MaasClient(maas_double.url, maas_double.admin_key) as client:
        check = maas.check_credentials(client)
    assert check.version == "3.6.2"
    assert check.user == "admin"
    assert check.is_admin is True
    assert check.to_json()["url"] == maas_double.url
    # Cheap: two small GETs, one of them anonymous.
    assert [(r.path.rsplit("/", 2)[-2], r.user) for r in maas_double.requests] == [
        ("version", None),
        ("users", "admin"),
    ]


def test_check_credentials_non_admin(maas_double: MaasDouble) -> None:
    with maas.MaasClient(maas_double.url, maas_double.user_key) as client:
        with pytest.raises(maas.MaasNotAdmin) as caught:
            maas.check_credentials(client)
        assert "(user) is not a MAAS admin" in str(caught.value)
        check = maas.check_credentials(client, require_admin=False)
    assert (check.user, check.is_admin) == ("user", False)


def test_check_credentials_rejected_key(maas_double: MaasDouble) -> None:
    with (
        maas.MaasClient(maas_double.url, maas_double.unknown_key) as client,
        pytest.raises(maas.MaasKeyRejected) as caught,
    ):
        maas.check_credentials(client)
    assert str(caught.value).startswith(
        f"MAAS rejected the API key (HTTP 401 from {maas_double.url})"
    )


def test_wrong_secret_is_rejected(maas_double: MaasDouble) -> None:
    consumer, token, _ = maas_double.admin_key.split(":")
    with (
        maas.MaasClient(maas_double.url, f"{consumer}:{token}:WrongSecret") as client,
        pytest.raises(maas.MaasKeyRejected),
    ):
        client.whoami()


def test_maas_38_version(maas_double_factory: Callable[..., MaasDouble]) -> None:
    double = maas_double_factory(version="3.8.0")
    with maas.MaasClient(double.url, double.admin_key) as client:
        assert maas.check_credentials(client).version == "3.8.0"


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 it signed (openssl CLI)."""
    directory = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
        str(ca_cert), "-days", "2", "-subj", "/CN=test MAAS CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return ca_cert, cert, key


def test_tls_with_the_maas_ca_certificate(
    maas_double_factory: Callable[..., MaasDouble], tls_files: tuple[Path, Path, Path]
) -> None:
    ca_cert, cert, key = tls_files
    double = maas_double_factory(tls=(cert, key))
    assert double.url.startswith("https://")
    pem = ca_cert.read_text()
    with maas.MaasClient(double.url, double.admin_key, ca_certificate=pem) as client:
        assert maas.check_credentials(client).user == "admin"
    # Without the CA the certificate is not trusted; TLS failures are not retried.
    with maas.MaasClient(double.url, double.admin_key, retries=3) as client:
        client.sleep = lambda _: pytest.fail("no retry on TLS failure")
        with pytest.raises(maas.MaasUnreachable, match="TLS certificate verification failed"):
            maas.check_credentials(client)


def test_invalid_ca_certificate_is_bad_input() -> None:
    with pytest.raises(UsageError, match="CA certificate is not valid PEM"):
        maas.MaasClient("https://maas:5443/MAAS", KEY, ca_certificate="not a certificate")


# -- error text -------------------------------------------------------------------------------


def test_maas_error_text_shapes(maas_double: MaasDouble) -> None:
    with maas.MaasClient(maas_double.url, maas_double.admin_key) as client:
        response = client.request(
            "POST", "boot-resources/", fields={"name": "noble", "architecture": "i386/generic"}
        )
    assert response.status_code == 400
    text = maas.maas_error_text(response)
    assert "architecture: 'i386/generic' is not a valid architecture." in text
    assert "name: noble is a reserved name" in text


def test_proxy_environment_is_read_once_per_client(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    client = maas.MaasClient("http://maas.example:5240/MAAS", KEY)
    assert client.session.proxies.get("http") == "http://proxy.invalid:3128"
    assert client.session.trust_env is False
    monkeypatch.setenv("no_proxy", "maas.example")
    assert "http" not in maas.MaasClient("http://maas.example:5240/MAAS", KEY).session.proxies


def test_a_redirect_says_which_url_to_use(maas_double: MaasDouble) -> None:
    maas_double.fail_next("GET", "boot-resources/", 301, body="")
    with maas.MaasClient(maas_double.url, maas_double.admin_key) as client:
        response = client.request("GET", "boot-resources/")
        response.headers["Location"] = "https://maas.example:5443/MAAS/api/2.0/boot-resources/"
        assert maas.maas_error_text(response) == (
            "redirected to https://maas.example:5443/MAAS/api/2.0/boot-resources/: "
            "give that URL instead"
        )
