"""``upload``, ``maas-list`` and ``maas-delete`` through the CLI, against the MAAS double."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.maas_double import MaasDouble

from openeuler_image_builder import cli, maas

MiB = 1024 * 1024


@pytest.fixture
def maas_env(monkeypatch: pytest.MonkeyPatch, maas_double: MaasDouble) -> MaasDouble:
    for name in ("MAAS_URL", "MAAS_API_KEY", "MAAS_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MAAS_URL", maas_double.url)
    monkeypatch.setenv("MAAS_API_KEY", maas_double.admin_key)
    return maas_double


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_upload_with_environment_and_manifest(
    maas_env: MaasDouble, maas_test_image: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    tarball = maas_test_image(release="22.03-LTS-SP4", arch="aarch64", size=5 * MiB)
    status, out, err = run(capsys, "upload", str(tarball))
    assert (status, err) == (0, "")
    assert out == (
        "uploaded custom/openeuler-22.03-lts-sp4 (arm64/generic), set "
        f"{maas_env.uploaded()[0]['sets'].popitem()[0]}, 5.0 MiB, complete on every region "
        "controller\n"
    )
    status, out, _ = run(capsys, "upload", str(tarball), "--json")
    assert status == 0
    data = json.loads(out)
    assert data["status"] == "already-present"
    assert data["name"] == "custom/openeuler-22.03-lts-sp4"


def test_upload_release_and_arch_from_the_file_name(
    maas_env: MaasDouble, maas_test_image: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    tarball = maas_test_image(release="20.03-LTS-SP4", size=MiB, manifest=False)
    status, out, _ = run(capsys, "upload", str(tarball), "--name-scheme", "rhel", "--json")
    assert status == 0
    result = json.loads(out)
    assert result["name"] == "rhel/openeuler-20.03-lts-sp4"
    assert result["facts_source"] == "hashed"
    [post] = maas_env.posts()
    assert "base_image" not in post.fields


def test_upload_of_an_unnamed_file_needs_release(
    maas_env: MaasDouble, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tarball = tmp_path / "my-image.tar.gz"
    tarball.write_bytes(b"x" * 1000)
    status, _, err = run(capsys, "upload", str(tarball))
    assert status == 2
    assert "cannot tell the openEuler release of my-image.tar.gz" in err and "--release" in err
    status, out, _ = run(
        capsys, "upload", str(tarball), "--release", "24.03", "--arch", "amd64", "--json"
    )
    assert status == 0
    assert json.loads(out)["name"] == "custom/openeuler-24.03-lts-sp4"


def test_upload_missing_file_and_missing_connection(
    maas_env: MaasDouble,
    maas_test_image: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, _, err = run(capsys, "upload", "/nonexistent/openeuler-22.03-LTS-x86_64.tar.gz")
    assert status == 2 and "no image file" in err
    tarball = maas_test_image(size=MiB)
    monkeypatch.delenv("MAAS_URL")
    status, _, err = run(capsys, "upload", str(tarball))
    assert status == 2 and "no MAAS URL: pass --maas-url" in err
    monkeypatch.delenv("MAAS_API_KEY")
    status, _, err = run(capsys, "upload", str(tarball), "--maas-url", maas_env.url)
    assert status == 2 and "no MAAS API key" in err
    assert maas_env.requests == []


def test_api_key_file_option_and_its_permissions(
    maas_env: MaasDouble,
    maas_test_image: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("MAAS_API_KEY")
    key_file = tmp_path / "key"
    key_file.write_text(maas_env.admin_key + "\n")
    key_file.chmod(0o644)
    tarball = maas_test_image(size=MiB)
    status, _, err = run(capsys, "upload", str(tarball), "--api-key-file", str(key_file))
    assert status == 2 and f"run `chmod 600 {key_file}`" in err
    key_file.chmod(0o600)
    status, _, _ = run(capsys, "upload", str(tarball), "--api-key-file", str(key_file))
    assert status == 0
    monkeypatch.setenv("MAAS_API_KEY_FILE", str(key_file))
    status, out, _ = run(capsys, "maas-list", "--json")
    assert status == 0 and len(json.loads(out)) == 1


def test_non_admin_unusable_arch_and_unreachable_exit_statuses(
    maas_double_factory: Callable[..., MaasDouble],
    maas_test_image: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    double = maas_double_factory(usable_architectures=("amd64/generic",))
    monkeypatch.delenv("MAAS_API_KEY_FILE", raising=False)
    monkeypatch.setenv("MAAS_URL", double.url)
    monkeypatch.setenv("MAAS_API_KEY", double.user_key)
    tarball = maas_test_image(size=MiB)
    status, _, err = run(capsys, "upload", str(tarball))
    assert status == 2
    assert err.startswith("error: the API key's user (user) is not a MAAS admin") or (
        err.startswith("error: the API key's user is not a MAAS admin")
    )
    monkeypatch.setenv("MAAS_API_KEY", double.admin_key)
    arm = maas_test_image(arch="aarch64", size=MiB)
    status, _, err = run(capsys, "upload", str(arm))
    assert status == 1
    assert err == (
        "error: upload failed: MAAS has no boot images for arm64/generic: "
        "import Ubuntu arm64 images first\n"
    )
    # Connection errors are retried with backoff (5 times by default); skip the waiting.
    monkeypatch.setattr(maas.MaasClient, "backoff_delay", lambda self, attempt: 0.0)
    status, _, err = run(capsys, "maas-list", "--maas-url", "http://127.0.0.1:1/MAAS")
    assert status == 1
    assert "MAAS is unreachable at http://127.0.0.1:1/MAAS: connection refused" in err


def test_list_and_delete(
    maas_env: MaasDouble, maas_test_image: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "maas-list")
    assert (status, out) == (0, "no openEuler images in MAAS\n")
    x86 = maas_test_image(size=MiB, seed=1)
    arm = maas_test_image(size=MiB, arch="aarch64", seed=2)
    assert run(capsys, "upload", str(x86))[0] == 0
    assert run(capsys, "upload", str(arm))[0] == 0
    maas_env.add_uploaded("someone-elses", "amd64/generic", b"not ours")

    status, out, _ = run(capsys, "maas-list")
    lines = out.splitlines()
    assert status == 0 and len(lines) == 3
    assert lines[1].split()[:3] == ["custom/openeuler-24.03-lts-sp3", "amd64/generic", "complete"]
    assert lines[2].split()[:3] == ["custom/openeuler-24.03-lts-sp3", "arm64/generic", "complete"]
    status, out, _ = run(capsys, "maas-list", "--json")
    listed = json.loads(out)
    assert {(i["architecture"], i["state"], i["size"]) for i in listed} == {
        ("amd64/generic", "complete", MiB),
        ("arm64/generic", "complete", MiB),
    }

    status, out, _ = run(capsys, "maas-delete", "openeuler-24.03-lts-sp3", "--arch", "aarch64")
    assert (status, out) == (0, "deleted custom/openeuler-24.03-lts-sp3 (arm64/generic)\n")
    status, _, err = run(
        capsys, "maas-delete", "custom/openeuler-24.03-lts-sp3", "--arch", "arm64"
    )
    assert status == 2
    assert "MAAS holds no uploaded image custom/openeuler-24.03-lts-sp3 for arm64/generic" in err
    status, out, _ = run(capsys, "maas-delete", "custom/openeuler-24.03-lts-sp3", "--json")
    assert status == 0
    assert json.loads(out) == {
        "name": "custom/openeuler-24.03-lts-sp3",
        "deleted": ["amd64/generic"],
    }
    assert [r["name"] for r in maas_env.uploaded()] == ["someone-elses"]


def test_the_key_never_reaches_the_output(
    maas_env: MaasDouble, maas_test_image: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    secret = maas_env.admin_key.split(":")[2]
    tarball = maas_test_image(size=MiB)
    outputs = []
    for argv in (
        ["-v", "upload", str(tarball), "--json"],
        ["-v", "maas-list", "--json"],
        ["-v", "maas-list", "--api-key", "bad:key:" + secret],
    ):
        outputs.append(run(capsys, *argv))
    assert outputs[2][0] == 2 and "MAAS rejected the API key" in outputs[2][2]
    for _, out, err in outputs:
        assert secret not in out and secret not in err
