"""Benchmark: ``fetch_iso()`` of a 1 GiB ISO vs ``curl -o`` + ``sha256sum`` (loopback HTTP).

Both fetch the same file from the same server (tests/fixtures/http_server.py in a child process,
bodies sent with sendfile), into the same directory, with a warm page cache on the server side.
The baseline is ``curl -sS -o FILE URL`` followed by ``sha256sum FILE`` (what a careful admin
does by hand); the candidate is a child Python process calling ``fetch_iso()`` into an empty
cache (download, sha256 in the same pass, checksum file, fsync, rename, record). The ratio uses
the fetch time measured inside the child (without the ~0.2 s interpreter start-up); the
whole-process time is printed too. Rounds alternate baseline and candidate.

Then the resume: a thread server cuts the connection once after 300 MiB (+12345 bytes; a third
of smaller files) and
the bytes the server sent in all are compared with the file size (re-downloaded amount), for a
cut inside one run (automatic retry) and across runs (the next run resumes ``.partial``).

Targets (issue 4 item 6): fetch <= 1.05 x the baseline; peak RSS of the fetching process
<= 64 MiB; a resume re-downloads at most one chunk (1 MiB).

Run alone: ``uv run python benchmarks/bench_fetch.py [--size-mib N] [--rounds N]``. Prints one
line per measurement and ``ratio``/``target`` lines; exit status 1 when a target is missed.
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

from fixtures.http_server import LoopbackHTTPServer, serve_in_subprocess  # noqa: E402

from openeuler_image_builder.core import catalogue  # noqa: E402
from openeuler_image_builder.core.errors import StepFailed  # noqa: E402
from openeuler_image_builder.pipeline import iso  # noqa: E402

MiB = 1024 * 1024
RELEASE = catalogue.resolve("24.03-LTS-SP1")
ARCH: catalogue.Arch = "x86_64"
ISO_PATH = f"openEuler-{RELEASE.name}/ISO/{ARCH}/{RELEASE.iso_name(ARCH)}"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from openeuler_image_builder.core import catalogue
from openeuler_image_builder.pipeline import iso

started = time.perf_counter()
info = iso.fetch_iso(
    catalogue.resolve(sys.argv[1]), "x86_64", mirror=sys.argv[2], cache_dir=Path(sys.argv[3])
)
elapsed = time.perf_counter() - started
print(json.dumps({
    "seconds": elapsed,
    "sha256": info.sha256,
    # VmHWM, not ru_maxrss: across fork+exec, ru_maxrss keeps the parent's peak.
    "maxrss_kib": int(next(
        line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )),
}))
"""


def make_mirror(root: Path, size: int) -> str:
    """A mirror tree holding a pseudo-random ISO of ``size`` bytes and its .sha256sum."""
    path = root / ISO_PATH
    path.parent.mkdir(parents=True)
    digest = hashlib.sha256()
    block = os.urandom(4 * MiB)
    with path.open("wb") as handle:
        left, counter = size, 0
        while left:
            piece = (counter.to_bytes(8, "little") + block)[: min(left, 4 * MiB)]
            handle.write(piece)
            digest.update(piece)
            left -= len(piece)
            counter += 1
    path.with_name(path.name + ".sha256sum").write_text(f"{digest.hexdigest()}  {path.name}\n")
    return digest.hexdigest()


def baseline(url: str, target: Path) -> tuple[float, str]:
    started = time.perf_counter()
    subprocess.run(
        ["curl", "-sS", "--fail", "-o", str(target), url + ISO_PATH], check=True, timeout=600
    )
    output = subprocess.run(
        ["sha256sum", str(target)], check=True, capture_output=True, text=True, timeout=600
    ).stdout
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed, output.split()[0]


def candidate(url: str, cache: Path) -> tuple[float, float, dict[str, object]]:
    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, RELEASE.name, url, str(cache)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    whole = time.perf_counter() - started
    data = json.loads(result.stdout)
    shutil.rmtree(cache, ignore_errors=True)
    return float(data["seconds"]), whole, data


def resume(root: Path, size: int, work: Path) -> tuple[int, int]:
    """Bytes re-downloaded after a cut: within one run, and across two runs."""
    cut_at = min(300 * MiB, size // 3) + 12345
    results = []
    with LoopbackHTTPServer(root) as server:
        for across_runs in (False, True):
            server.requests.clear()
            cache = work / f"resume-cache-{across_runs}"
            server.cut("/" + ISO_PATH, after_bytes=cut_at)
            if across_runs:
                try:
                    iso.fetch_iso(RELEASE, ARCH, mirror=server.url, cache_dir=cache, retries=0)
                except StepFailed:
                    pass
                else:
                    raise RuntimeError("the injected cut did not interrupt the download")
            iso.fetch_iso(RELEASE, ARCH, mirror=server.url, cache_dir=cache, retry_delay=0)
            results.append(server.bytes_served("/" + ISO_PATH) - size)
            shutil.rmtree(cache)
    return results[0], results[1]


def main() -> int:
    parser = argparse.ArgumentParser(description="fetch_iso against curl -o + sha256sum")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MiB
    if shutil.which("curl") is None:
        print("bench_fetch: needs curl", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as temporary:
        work = Path(temporary)
        print(f"bench_fetch: {args.size_mib} MiB ISO, {args.rounds} rounds, {os.cpu_count()} CPUs")
        digest = make_mirror(work / "www", size)
        load_before = os.getloadavg()[0]
        base_times, ours, wholes, rss = [], [], [], []
        with serve_in_subprocess(work / "www") as url:
            baseline(url, work / "warm.iso")  # warm the server's page cache
            for number in range(1, args.rounds + 1):
                seconds, checked = baseline(url, work / "curl.iso")
                assert checked == digest
                base_times.append(seconds)
                fetch_seconds, whole, data = candidate(url, work / "cache")
                assert data["sha256"] == digest
                ours.append(fetch_seconds)
                wholes.append(whole)
                rss.append(int(str(data["maxrss_kib"])) / 1024)
                print(
                    f"round {number}: curl+sha256sum {seconds:.2f} s, fetch_iso "
                    f"{fetch_seconds:.2f} s (process {whole:.2f} s), peak RSS {rss[-1]:.1f} MiB"
                )
        load_after = os.getloadavg()[0]
        within, across = resume(work / "www", size, work)
    base, mine, whole = (statistics.median(x) for x in (base_times, ours, wholes))
    ratio = mine / base
    peak = max(rss)
    print(f"load average (1 min) before/after: {load_before:.2f} / {load_after:.2f}")
    print(f"baseline  curl -o + sha256sum: median {base:.2f} s ({size / MiB / base:.0f} MiB/s)")
    print(f"candidate fetch_iso:           median {mine:.2f} s ({size / MiB / mine:.0f} MiB/s)")
    print(f"ratio fetch/baseline: {ratio:.3f} (whole process incl. start-up: {whole / base:.3f})")
    print(f"peak RSS of the fetching process: {peak:.1f} MiB")
    print(f"re-downloaded after a cut: {within} bytes (same run), {across} bytes (next run)")
    targets = {
        "fetch <= 1.05 x curl+sha256sum": ratio <= 1.05,
        "peak RSS <= 64 MiB": peak <= 64,
        "resume re-downloads <= 1 chunk (1 MiB)": max(within, across) <= iso.CHUNK_SIZE,
    }
    for name, met in targets.items():
        print(f"target {name}: {'met' if met else 'MISSED'}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
