"""fetch-iso against a loopback HTTP server: download, resume, checksum, errors, cache reuse."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fixtures.http_server import LoopbackHTTPServer

from openeuler_image_builder.cli import main
from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.pipeline import iso

RELEASE = catalogue.resolve("24.03-LTS-SP1")
ARCH: catalogue.Arch = "x86_64"
ISO_NAME = RELEASE.iso_name(ARCH)
ISO_URL_PATH = f"/openEuler-{RELEASE.name}/ISO/{ARCH}/{ISO_NAME}"
SIZE = 3 * 1024 * 1024 + 12345  # not a multiple of the chunk size


def _payload(size: int = SIZE, seed: int = 1) -> bytes:
    # Deterministic, incompressible-looking content.
    blocks = []
    counter = 0
    while sum(map(len, blocks)) < size:
        blocks.append(hashlib.sha256(f"{seed}-{counter}".encode()).digest() * 64)
        counter += 1
    return b"".join(blocks)[:size]


def publish(
    server: LoopbackHTTPServer,
    data: bytes,
    *,
    checksum_text: str | None = None,
    with_checksum: bool = True,
) -> str:
    """Put the ISO (and its .sha256sum) in the mirror tree; returns the sha256."""
    digest = hashlib.sha256(data).hexdigest()
    server.add_file(ISO_URL_PATH, data)
    if with_checksum:
        text = checksum_text if checksum_text is not None else f"{digest}  {ISO_NAME}\n"
        server.add_file(ISO_URL_PATH + ".sha256sum", text.encode())
    return digest


def fetch(server_url: str, cache: Path, **kwargs: Any) -> iso.IsoInfo:
    kwargs.setdefault("retry_delay", 0)
    kwargs.setdefault("timeout", 10)
    return iso.fetch_iso(RELEASE, ARCH, mirror=server_url, cache_dir=cache, **kwargs)


# -- checksum file parsing ---------------------------------------------------------------------

HEX = "ab" * 32
OTHER = "cd" * 32


@pytest.mark.parametrize(
    "text",
    [
        f"{HEX}  {ISO_NAME}\n",
        f"{HEX} {ISO_NAME}",
        f"{HEX} *{ISO_NAME}\n",
        f"{HEX.upper()}  {ISO_NAME}\r\n",
        f"{HEX}\n",
        f"  {HEX}  \n",
        f"{OTHER}  other.iso\n{HEX}  {ISO_NAME}\n",
        f"{HEX}  ./{ISO_NAME}\n",
        f"{HEX}  ISO/x86_64/{ISO_NAME}\n",
        f"# comment\n\n{HEX}  {ISO_NAME}\n",
        f"SHA256 ({ISO_NAME}) = {HEX}\n",
        f"\ufeff{HEX}  {ISO_NAME}\n",
    ],
)
def test_checksum_file_forms(text: str) -> None:
    assert iso.parse_checksum_file(text, ISO_NAME) == HEX


@pytest.mark.parametrize(
    "text",
    [
        "",
        f"{OTHER}  other.iso\n",
        f"{HEX}\n{OTHER}\n",  # two bare hashes: ambiguous
        "not a checksum\n",
        f"{HEX[:-1]}  {ISO_NAME}\n",  # 63 digits
    ],
)
def test_checksum_file_without_entry(text: str) -> None:
    assert iso.parse_checksum_file(text, ISO_NAME) is None


# -- downloads ---------------------------------------------------------------------------------


def test_download_verifies_and_records(http_server: LoopbackHTTPServer, tmp_path: Path) -> None:
    data = _payload()
    digest = publish(http_server, data)
    reports: list[tuple[str, float | None, str]] = []

    info = fetch(http_server.url, tmp_path / "cache", progress=lambda *a: reports.append(tuple(a)))

    assert info.path == tmp_path / "cache" / ISO_NAME
    assert info.sha256 == digest
    assert info.size == SIZE
    assert info.path.read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        ISO_NAME,
        ISO_NAME + ".sha256",
    ]
    record = json.loads((tmp_path / "cache" / (ISO_NAME + ".sha256")).read_text())
    assert record["sha256"] == digest
    assert record["size"] == SIZE
    assert record["mtime_ns"] == info.path.stat().st_mtime_ns
    assert reports[-1][0] == "fetch-iso"
    assert reports[-1][1] == 100
    assert http_server.bytes_served(ISO_URL_PATH) == SIZE


def test_resume_after_cut_downloads_each_byte_once(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    data = _payload()
    digest = publish(http_server, data)
    cut_at = 1024 * 1024 + 777
    http_server.cut(ISO_URL_PATH, after_bytes=cut_at)

    info = fetch(http_server.url, tmp_path)

    assert info.sha256 == digest
    assert info.path.read_bytes() == data
    gets = http_server.requests_for(ISO_URL_PATH, "GET")
    assert [(r.range, r.bytes_sent) for r in gets] == [
        (None, cut_at),
        (f"bytes={cut_at}-", SIZE - cut_at),
    ]
    # The resume carried a validator so a changed file would be sent whole.
    assert gets[1].if_range is not None
    assert http_server.bytes_served(ISO_URL_PATH) == SIZE


def test_partial_download_is_kept_and_resumed_by_the_next_run(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    data = _payload()
    digest = publish(http_server, data)
    cut_at = 2 * 1024 * 1024 + 5
    http_server.cut(ISO_URL_PATH, after_bytes=cut_at)

    with pytest.raises(StepFailed) as failure:
        fetch(http_server.url, tmp_path, retries=0)
    partial = tmp_path / (ISO_NAME + ".partial")
    assert failure.value.step == "fetch-iso"
    assert str(partial) in failure.value.reason
    assert partial.read_bytes() == data[:cut_at]
    assert not (tmp_path / ISO_NAME).exists()

    info = fetch(http_server.url, tmp_path)
    assert info.sha256 == digest
    assert not partial.exists()
    assert [r.range for r in http_server.requests_for(ISO_URL_PATH, "GET")] == [
        None,
        f"bytes={cut_at}-",
    ]
    assert http_server.bytes_served(ISO_URL_PATH) == SIZE


def test_server_without_range_support_restarts_cleanly(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    data = _payload()
    digest = publish(http_server, data)
    (tmp_path / (ISO_NAME + ".partial")).write_bytes(data[:1000])
    http_server.ignore_ranges(ISO_URL_PATH)

    info = fetch(http_server.url, tmp_path)

    assert info.sha256 == digest
    assert info.path.read_bytes() == data


def test_stale_partial_longer_than_the_file_is_discarded(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    data = _payload()
    digest = publish(http_server, data)
    (tmp_path / (ISO_NAME + ".partial")).write_bytes(b"x" * (SIZE + 10))

    info = fetch(http_server.url, tmp_path)

    assert info.sha256 == digest
    statuses = [r.status for r in http_server.requests_for(ISO_URL_PATH, "GET")]
    assert statuses == [416, 200]


def test_transient_server_errors_are_retried(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    digest = publish(http_server, _payload())
    http_server.fail(ISO_URL_PATH, 503, times=2)
    http_server.fail(ISO_URL_PATH + ".sha256sum", 502, times=1)

    assert fetch(http_server.url, tmp_path).sha256 == digest
    assert [r.status for r in http_server.requests_for(ISO_URL_PATH, "GET")] == [503, 503, 200]


def test_persistent_server_errors_give_up_after_the_retries(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    publish(http_server, _payload())
    http_server.fail(ISO_URL_PATH, 500)

    with pytest.raises(StepFailed, match=r"failed 3 times in a row.*HTTP 500"):
        fetch(http_server.url, tmp_path, retries=2)
    assert len(http_server.requests_for(ISO_URL_PATH, "GET")) == 3


def test_stalled_transfer_times_out_and_resumes(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    data = _payload()
    digest = publish(http_server, data)
    http_server.stall(ISO_URL_PATH, after_bytes=500_000, seconds=3)

    info = fetch(http_server.url, tmp_path, timeout=0.5)

    assert info.sha256 == digest
    gets = http_server.requests_for(ISO_URL_PATH, "GET")
    assert len(gets) == 2
    assert gets[1].range is not None
    resumed_at = int(gets[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 500_000


def test_checksum_mismatch_deletes_the_download(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    data = _payload()
    actual = hashlib.sha256(data).hexdigest()
    publish(http_server, data, checksum_text=f"{OTHER}  {ISO_NAME}\n")

    with pytest.raises(StepFailed) as failure:
        fetch(http_server.url, tmp_path)

    message = str(failure.value)
    assert failure.value.step == "fetch-iso"
    assert f"expected {OTHER}" in message
    assert f"got {actual}" in message
    assert list(tmp_path.iterdir()) == []


def test_missing_iso_names_the_url_and_the_mirror_option(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    with pytest.raises(StepFailed) as failure:
        fetch(http_server.url, tmp_path)
    message = str(failure.value)
    assert http_server.url_for(ISO_URL_PATH + ".sha256sum") in message
    assert "404" in message
    assert "mirror-url" in message
    assert "--mirror" in message


def test_missing_iso_with_a_published_checksum(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    publish(http_server, _payload())
    (http_server.root / ISO_URL_PATH.lstrip("/")).unlink()
    with pytest.raises(StepFailed) as failure:
        fetch(http_server.url, tmp_path)
    assert http_server.url_for(ISO_URL_PATH) + " was not found (HTTP 404)" in str(failure.value)
    assert "mirror-url" in str(failure.value)
    assert (
        not (tmp_path / (ISO_NAME + ".partial")).exists()
        or not (tmp_path / (ISO_NAME + ".partial")).stat().st_size
    )


def test_checksum_file_not_listing_the_iso(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    publish(http_server, _payload(), checksum_text=f"{OTHER}  other.iso\n")
    with pytest.raises(StepFailed, match=f"lists no sha256 for {ISO_NAME}"):
        fetch(http_server.url, tmp_path)
    assert http_server.requests_for(ISO_URL_PATH) == []


# -- the cache ---------------------------------------------------------------------------------


def test_cached_iso_is_reused_without_reading_or_downloading_it(
    http_server: LoopbackHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = publish(http_server, _payload())
    first = fetch(http_server.url, tmp_path)
    served_before = len(http_server.requests_for(ISO_URL_PATH))

    opened: list[str] = []
    real_open = builtins.open
    real_os_open = os.open

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(os.fspath(file) if not isinstance(file, int) else str(file))
        return real_open(file, *args, **kwargs)

    def spy_os_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(os.fspath(path))
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    second = fetch(http_server.url, tmp_path)
    monkeypatch.undo()

    assert second == first
    assert second.sha256 == digest
    assert len(http_server.requests_for(ISO_URL_PATH)) == served_before
    assert str(first.path) not in opened
    # Only the small checksum file was fetched again (to notice a republished ISO).
    assert len(http_server.requests_for(ISO_URL_PATH + ".sha256sum")) == 2


def test_cached_iso_is_used_when_the_mirror_is_unreachable(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    digest = publish(http_server, _payload())
    fetch(http_server.url, tmp_path)
    url = http_server.url
    http_server.close()

    assert fetch(url, tmp_path, retries=0, timeout=2).sha256 == digest


def test_unreachable_mirror_without_cache(tmp_path: Path) -> None:
    with LoopbackHTTPServer(tmp_path / "www") as server:
        url = server.url
    with pytest.raises(StepFailed, match=r"cannot reach http://127\.0\.0\.1"):
        fetch(url, tmp_path / "cache", retries=1, timeout=2)


def test_republished_iso_is_downloaded_again(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    publish(http_server, _payload(seed=1))
    fetch(http_server.url, tmp_path)
    new = _payload(seed=2)
    digest = publish(http_server, new)

    info = fetch(http_server.url, tmp_path)

    assert info.sha256 == digest
    assert info.path.read_bytes() == new


def test_cached_iso_without_valid_record_is_hashed_once(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    data = _payload()
    digest = publish(http_server, data)
    first = fetch(http_server.url, tmp_path)
    os.utime(first.path, ns=(0, 10**18))  # the record no longer matches the mtime

    info = fetch(http_server.url, tmp_path)

    assert info.sha256 == digest
    assert len(http_server.requests_for(ISO_URL_PATH)) == 1  # only the first download
    record = json.loads((tmp_path / (ISO_NAME + ".sha256")).read_text())
    assert record["mtime_ns"] == 10**18


def test_cached_iso_that_changed_is_downloaded_again(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    data = _payload()
    digest = publish(http_server, data)
    first = fetch(http_server.url, tmp_path)
    first.path.write_bytes(b"damaged")

    info = fetch(http_server.url, tmp_path)

    assert info.sha256 == digest
    assert info.path.read_bytes() == data


def test_cache_files_lists_what_belongs_to_one_iso(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    publish(http_server, _payload())
    fetch(http_server.url, tmp_path)
    (tmp_path / "unrelated.iso").write_bytes(b"")
    assert sorted(p.name for p in iso.cache_files(tmp_path, RELEASE, ARCH)) == [
        ISO_NAME,
        ISO_NAME + ".sha256",
    ]


def test_proxy_from_the_environment_is_used(
    http_server: LoopbackHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = publish(http_server, _payload())
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", http_server.url)
    monkeypatch.setenv("http_proxy", http_server.url)

    info = fetch("http://mirror.example.invalid/", tmp_path)

    assert info.sha256 == digest
    targets = [r.target for r in http_server.requests_for(ISO_URL_PATH)]
    assert targets == [f"http://mirror.example.invalid{ISO_URL_PATH}"]


def test_tls_errors_are_not_retried(http_server: LoopbackHTTPServer, tmp_path: Path) -> None:
    # The loopback server speaks plain HTTP: the TLS handshake fails.
    mirror = http_server.url.replace("http://", "https://")
    with pytest.raises(StepFailed) as failure:
        fetch(mirror, tmp_path, retries=3, retry_delay=30)
    assert "TLS error talking to https://127.0.0.1" in str(failure.value)
    assert "REQUESTS_CA_BUNDLE" in str(failure.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_full_cache_filesystem_keeps_what_was_written(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    publish(http_server, _payload())
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(cache)], check=True)
    try:
        with pytest.raises(StepFailed, match=r"cannot write .*No space left on device"):
            fetch(http_server.url, cache)
        partial = cache / (ISO_NAME + ".partial")
        assert 0 < partial.stat().st_size <= 1024 * 1024
        assert not (cache / ISO_NAME).exists()
    finally:
        subprocess.run(["umount", str(cache)], check=True)


def test_release_without_the_architecture(tmp_path: Path) -> None:
    release = catalogue.Release(**{**RELEASE.__dict__, "architectures": ("x86_64",)})
    with pytest.raises(UsageError, match="has no aarch64 ISO"):
        iso.fetch_iso(release, "aarch64", mirror="http://127.0.0.1:9/", cache_dir=tmp_path)


# -- a local ISO (--iso) -----------------------------------------------------------------------


def _iso_image(label: str, size: int = 64 * 1024) -> bytes:
    """Bytes with an ISO 9660 primary volume descriptor carrying ``label``."""
    data = bytearray(_payload(size))
    descriptor = bytearray(2048)
    descriptor[0:7] = b"\x01CD001\x01"
    descriptor[40:72] = label.encode().ljust(32)
    data[16 * 2048 : 17 * 2048] = descriptor
    return bytes(data)


def test_local_iso_with_sha256(tmp_path: Path) -> None:
    data = _iso_image(RELEASE.iso_volume_label(ARCH))
    path = tmp_path / "dvd.iso"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()

    info = iso.use_local_iso(path, RELEASE, ARCH, sha256=digest.upper())

    assert info == iso.IsoInfo(path.resolve(), digest, len(data))


def test_local_iso_with_wrong_sha256(tmp_path: Path) -> None:
    data = _iso_image(RELEASE.iso_volume_label(ARCH))
    path = tmp_path / "dvd.iso"
    path.write_bytes(data)
    with pytest.raises(UsageError) as failure:
        iso.use_local_iso(path, RELEASE, ARCH, sha256=HEX)
    assert f"expected {HEX}" in str(failure.value)
    assert f"got {hashlib.sha256(data).hexdigest()}" in str(failure.value)
    assert path.exists()


def test_local_iso_with_malformed_sha256(tmp_path: Path) -> None:
    path = tmp_path / "dvd.iso"
    path.write_bytes(b"x")
    with pytest.raises(UsageError, match="64 hexadecimal digits"):
        iso.use_local_iso(path, RELEASE, ARCH, sha256="1234")


def test_local_iso_of_another_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dvd.iso"
    path.write_bytes(_iso_image("openEuler-22.03-LTS-SP4-x86_64"))
    with pytest.raises(UsageError, match=r"is the ISO of openEuler-22\.03-LTS-SP4-x86_64"):
        iso.use_local_iso(path, RELEASE, ARCH, sha256=HEX)


def test_local_iso_verified_against_the_mirror(
    http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    data = _iso_image(RELEASE.iso_volume_label(ARCH))
    digest = publish(http_server, data)
    path = tmp_path / "dvd.iso"
    path.write_bytes(data)

    info = iso.use_local_iso(path, RELEASE, ARCH, mirror=http_server.url)

    assert info.sha256 == digest
    # Only the checksum file was fetched, never the ISO.
    assert http_server.requests_for(ISO_URL_PATH) == []


def test_local_iso_when_the_mirror_is_unreachable(tmp_path: Path) -> None:
    with LoopbackHTTPServer(tmp_path / "www") as server:
        url = server.url
    path = tmp_path / "dvd.iso"
    path.write_bytes(b"x")
    with pytest.raises(UsageError) as failure:
        iso.use_local_iso(path, RELEASE, ARCH, mirror=url, timeout=2)
    message = str(failure.value)
    assert "cannot reach" in message
    assert "pass --sha256" in message


def test_local_iso_missing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        iso.use_local_iso(tmp_path / "nope.iso", RELEASE, ARCH, sha256=HEX)


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_fetch_iso_json(
    http_server: LoopbackHTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = publish(http_server, _payload())
    status = main(
        [
            "fetch-iso",
            "--release",
            "24.03-sp1",
            "--arch",
            "amd64",
            "--mirror",
            http_server.url,
            "--cache",
            str(tmp_path),
            "--json",
        ]
    )
    assert status == 0
    output = json.loads(capsys.readouterr().out)
    assert output == {
        "release": RELEASE.name,
        "arch": ARCH,
        "path": str(tmp_path / ISO_NAME),
        "sha256": digest,
        "size": SIZE,
    }


def test_cli_fetch_iso_not_found(
    http_server: LoopbackHTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fetch-iso", "--release", "24.03-LTS-SP1", "--arch", "x86_64"]
    status = main([*argv, "--mirror", http_server.url, "--cache", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1
    assert err.startswith("error: fetch-iso failed: http://127.0.0.1:")
    assert "--mirror" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sha256", HEX], "--sha256 applies to a local ISO"),
        (["--mirror", "ftp://x/"], "--mirror 'ftp://x/' is not an http(s) URL"),
        (["--iso", "/nonexistent.iso", "--sha256", HEX], "no such file"),
    ],
)
def test_cli_fetch_iso_usage_errors(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["fetch-iso", "--release", "24.03", "--arch", "x86_64", *extra])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err
    assert err.count("\n") == 1


def test_cli_local_iso(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _iso_image(RELEASE.iso_volume_label(ARCH))
    path = tmp_path / "dvd.iso"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    argv = ["fetch-iso", "--release", RELEASE.name, "--arch", ARCH, "--iso", str(path)]
    assert main([*argv, "--sha256", digest]) == 0
    out = capsys.readouterr().out
    assert f"sha256: {digest}" in out
    assert str(path) in out
