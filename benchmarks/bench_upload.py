"""Benchmark: ``upload_image()`` of a 1 GiB tarball against raw chunked PUTs with curl.

Both upload the same file to the MAAS API double (tests/fixtures/maas_double.py) on loopback,
in 4 MiB chunks. The baseline is one curl process PUTting pre-split chunk files over one
keep-alive connection (the OAuth header comes from a 0600 file, never curl's argv); the
candidate is a child Python process calling ``upload_image()`` (POST, PUTs, sync check), with
the manifest beside the tarball so nothing is hashed on the client.

Targets (issue 5): upload time <= 1.3 x curl; no second read of the file when a manifest
exists (bytes read, from /proc/<pid>/io ``rchar`` and the client's own count, ~= file size);
peak RSS of the client process <= 80 MiB.

Run alone: ``uv run python benchmarks/bench_upload.py [--size-mib N] [--rounds N]``. Prints one
line per measurement and a ``ratio`` line; exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from fixtures.maas_double import MaasDouble, MaasDoubleConfig  # noqa: E402

from openeuler_image_builder import maas  # noqa: E402

MiB = 1024 * 1024
RELEASE = "24.03-LTS-SP3"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path

def rchar():
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return -1

from openeuler_image_builder import maas
from openeuler_image_builder.core import catalogue

tarball = Path(sys.argv[1])
key = maas.api_key_from_environment()
client = maas.MaasClient(sys.argv[2], key)
before = rchar()
started = time.perf_counter()
result = maas.upload_image(
    client, tarball, release=catalogue.resolve(sys.argv[3]), arch="x86_64"
)
elapsed = time.perf_counter() - started
print(json.dumps({
    "status": result.status,
    "seconds": elapsed,
    "rchar": rchar() - before,
    "bytes_read": result.bytes_read,
    "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}))
"""


def make_image(directory: Path, size: int) -> Path:
    """A pseudo-random tarball stand-in with its manifest (written after it, as pack does)."""
    tarball = directory / f"openeuler-{RELEASE}-x86_64.tar.gz"
    digest = hashlib.sha256()
    block = os.urandom(4 * MiB)
    with tarball.open("wb") as handle:
        left = size
        counter = 0
        while left:
            # Vary each block cheaply so the content is not one repeated block.
            piece = counter.to_bytes(8, "little") + block[8 : min(left, len(block))]
            handle.write(piece)
            digest.update(piece)
            left -= len(piece)
            counter += 1
    manifest = directory / f"openeuler-{RELEASE}-x86_64.manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "schema": 1,
                "image": tarball.name,
                "release": RELEASE,
                "arch": "x86_64",
                "sha256": digest.hexdigest(),
                "size": size,
            }
        )
    )
    return tarball


def split_chunks(tarball: Path, directory: Path) -> list[Path]:
    """The tarball cut into 4 MiB files for curl (not timed)."""
    directory.mkdir()
    chunks = []
    with tarball.open("rb") as handle:
        index = 0
        while data := handle.read(maas.CHUNK_SIZE):
            path = directory / f"chunk.{index:05d}"
            path.write_bytes(data)
            chunks.append(path)
            index += 1
    return chunks


def private_file(path: Path, text: str) -> Path:
    """Write ``text`` to a new file readable by its owner only."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    return path


def curl_round(
    double: MaasDouble, tarball: Path, chunks: list[Path], work: Path
) -> tuple[float, float]:
    """Create the resource (not timed), then time one curl PUTting every chunk.

    Returns wall and CPU (user + system) seconds of the curl process.
    """
    facts = maas.read_image_facts(tarball)
    client = maas.MaasClient(double.url, double.admin_key)
    target = maas.UploadTarget("custom/openeuler-bench", "amd64/generic", "bench", "rhel/9")
    response = client.request("POST", "boot-resources/", fields=target.form(facts))
    assert response.status_code == 201, response.text
    resource = response.json()
    rfile = maas.single_file(maas.newest_set(resource)[1])  # type: ignore[index]
    assert rfile is not None
    # curl -T appends the file name to a URL ending in "/"; request-target keeps MAAS's path.
    url = client.endpoint(rfile["upload_uri"])
    target_path = rfile["upload_uri"]
    header = private_file(work / "curl-header", "Authorization: " + client._auth.header() + "\n")
    config = work / "curl-config"
    lines = [
        f'header = "@{header}"',
        'header = "Content-Type: application/octet-stream"',
        'header = "Expect:"',  # no 100-continue round trip per chunk
        "fail",
        "silent",
        "show-error",
        'output = "/dev/null"',
        f'request-target = "{target_path}"',
    ]
    for chunk in chunks:
        lines += [f'upload-file = "{chunk}"', f'url = "{url}chunk"']
    private_file(config, "\n".join(lines) + "\n")
    started = time.perf_counter()
    process = subprocess.Popen(["curl", "--config", str(config)])
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"curl failed with status {process.returncode}")
    check = client.boot_resource(int(resource["id"]))
    assert check is not None
    assert maas.newest_set(check)[1]["complete"], "curl's upload did not complete"  # type: ignore[index]
    client.delete_boot_resource(int(resource["id"]))
    header.unlink()
    config.unlink()
    client.close()
    return elapsed, usage.ru_utime + usage.ru_stime


def client_round(double: MaasDouble, tarball: Path, work: Path) -> dict[str, float]:
    """Time ``upload_image()`` in a child process; its peak RSS comes from wait4."""
    key_file = private_file(work / "api-key", double.admin_key + "\n")
    env = dict(os.environ, MAAS_API_KEY_FILE=str(key_file), PYTHONPATH=str(ROOT / "src"))
    env.pop("MAAS_API_KEY", None)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tarball), double.url, RELEASE],
        env=env,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    key_file.unlink()
    if process.returncode != 0:
        raise SystemExit(f"the upload child failed with status {process.returncode}")
    data = json.loads(output)
    assert data["status"] == "uploaded", data
    data["process_seconds"] = wall
    data["maxrss_kib"] = usage.ru_maxrss
    data["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    # Remove the image again so the next round uploads it anew.
    with maas.MaasClient(double.url, double.admin_key) as client:
        assert maas.delete_image(client, f"custom/openeuler-{RELEASE.lower()}", "x86_64")
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description="upload_image() against curl chunked PUTs")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    size = args.size_mib * MiB
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed for the baseline (apt-get install curl)")
    work = Path(tempfile.mkdtemp(prefix="bench-upload-", dir="/var/tmp"))
    double = MaasDouble(
        MaasDoubleConfig(regions=1, sync_delay=0, store_content=False), work / "store"
    )
    (work / "store").mkdir()
    double.start()
    try:
        tarball = make_image(work, size)
        chunks = split_chunks(tarball, work / "chunks")
        # Warm the page cache so both sides read the file from memory.
        curl_round(double, tarball, chunks, work)
        # Rounds are pairs run back to back, in alternating order, so that load from other
        # processes on the machine hits both sides alike; the ratio is the median of the
        # per-pair ratios.
        curl_runs, client_runs = [], []
        for round_number in range(args.rounds):
            if round_number % 2:
                client_runs.append(client_round(double, tarball, work))
                curl_runs.append(curl_round(double, tarball, chunks, work))
            else:
                curl_runs.append(curl_round(double, tarball, chunks, work))
                client_runs.append(client_round(double, tarball, work))
    finally:
        double.stop()
        shutil.rmtree(work, ignore_errors=True)

    curl_s = statistics.median(wall for wall, _ in curl_runs)
    curl_cpu = statistics.median(cpu for _, cpu in curl_runs)
    client_cpu = statistics.median(run["cpu_seconds"] for run in client_runs)
    client_s = statistics.median(run["seconds"] for run in client_runs)
    process_s = statistics.median(run["process_seconds"] for run in client_runs)
    rss_mib = max(run["maxrss_kib"] for run in client_runs) / 1024
    rchar = max(run["rchar"] for run in client_runs)
    bytes_read = max(run["bytes_read"] for run in client_runs)
    ratio = statistics.median(
        run["seconds"] / wall for run, (wall, _) in zip(client_runs, curl_runs, strict=True)
    )
    load = os.getloadavg()[0]
    print(
        f"file: {size / MiB:.0f} MiB in {len(chunks)} chunks of 4 MiB, {args.rounds} rounds, "
        f"load average {load:.2f} on {os.cpu_count()} CPUs"
    )
    print(f"curl chunked PUTs:   {curl_s:.3f} s median ({size / MiB / curl_s:.0f} MiB/s)")
    print(f"upload_image():      {client_s:.3f} s median ({size / MiB / client_s:.0f} MiB/s)")
    print(f"client process:      {process_s:.3f} s median, interpreter start and imports included")
    print(
        f"CPU seconds:         curl {curl_cpu:.3f}, client process {client_cpu:.3f} "
        "(imports included; the double's receiving and hashing is the wall-time limit)"
    )
    print(f"client peak RSS:     {rss_mib:.1f} MiB (target <= 80)")
    print(
        f"client bytes read:   {rchar} (rchar, sockets included) / {bytes_read} (file) for a "
        f"{size}-byte file = {rchar / size:.4f}x"
    )
    print(f"ratio: {ratio:.3f} (upload_image / curl, median of pairs, target <= 1.3)")
    print(f"ratio (whole process): {process_s / curl_s:.3f}")
    ok = ratio <= 1.3 and rss_mib <= 80 and bytes_read == size and rchar < size + 8 * MiB
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
