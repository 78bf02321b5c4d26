"""Benchmark: ``pack_disk_image()`` of a ~2 GiB ext4 image vs ``tar | pigz`` and ``tar | gzip``.

The image (GPT: ESP + 2 GiB ext4 root) holds a realistic tree: the openEuler-like skeleton of
tests/fixtures/disk_images.py (so it passes the verifier), real binaries, libraries, Python
modules and headers copied from this host's /usr, plus generated content: 20,000 small
text-like files, 256 MiB of large files (half incompressible), 2,000 symlinks, a SELinux label
on every entry and ``user.`` xattrs on some. It is built once per work directory (``--workdir``
keeps it between runs).

Baselines run on the same tree, mounted read-only once per round: the very tar command pack runs
(same flags) piped into ``pigz -p <cores>`` or ``gzip`` (level 6 for both, like pack), writing to
a file in the same directory, then fsync (pack makes its tarball durable before renaming it, so
the baselines pay for the same writeback; the times without it are printed too). The candidate is
a child Python process calling ``pack_disk_image()``: open the image, find and mount the root,
rpm query, verifier, tar | pigz read once by Python (sha256 and size on the way), fsync, rename,
manifest. Rounds alternate baseline and candidate; a first ``tar`` to /dev/null warms the cache.

Targets (issue 4 item 6): pack <= 1.15 x the pigz pipeline; >= 1.6 x faster than the gzip
pipeline (2 cores); one read of the data (bytes read by the Python process's main thread,
``rchar`` of /proc/self/task/<tid>/io, about the tarball size); peak RSS of the Python process
<= 100 MiB.

Needs root (loop devices). Run alone: ``sudo uv run python benchmarks/bench_pack.py
[--rounds N] [--workdir DIR]``. Exit status 1 when a target is missed, 2 when it cannot run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from fixtures.disk_images import make_disk_image, make_root_tree  # noqa: E402

from openeuler_image_builder.core.image_names import manifest_path_for  # noqa: E402
from openeuler_image_builder.pipeline import diskimage, partitions, tarball  # noqa: E402

MiB = 1024 * 1024
HOST_SOURCES = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/python3.11", "/usr/include")
NAME = "openeuler-24.03-LTS-SP1-x86_64.tar.gz"

CHILD = r"""
import json, resource, sys, threading, time
from pathlib import Path
from openeuler_image_builder.pipeline import pack

def rchar():
    # The main thread's own counter: /proc/self/io also adds the reads of reaped children
    # (tar, pigz, rpm), and the pipeline's stderr reader threads only read tar's messages.
    io = Path(f"/proc/self/task/{threading.get_native_id()}/io")
    for line in io.read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return -1

before = rchar()
started = time.perf_counter()
manifest = pack.pack_disk_image(Path(sys.argv[1]), Path(sys.argv[2]), arch="x86_64")
elapsed = time.perf_counter() - started
print(json.dumps({
    "seconds": elapsed,
    "size": manifest.size,
    "rchar": rchar() - before,
    # VmHWM, not ru_maxrss: across fork+exec, ru_maxrss keeps the parent's peak.
    "maxrss_kib": int(next(
        line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )),
    "children_maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    "cpu_seconds": sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF),
                      resource.getrusage(resource.RUSAGE_CHILDREN))
    ),
}))
"""


def _words(rng: random.Random) -> list[str]:
    return [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
        for _ in range(2000)
    ]


def build_tree(directory: Path) -> None:
    """The realistic tree (see the module docstring)."""
    make_root_tree(directory)
    for source in HOST_SOURCES:
        if Path(source).is_dir():
            target = directory / source.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-a", source, str(target)], check=True, timeout=1800)
    rng = random.Random(42)
    words = _words(rng)
    small = directory / "usr/share/bench/small"
    for number in range(20000):
        folder = small / f"{number // 500:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        text = " ".join(rng.choice(words) for _ in range(rng.randint(30, 1200)))
        (folder / f"file-{number:05d}.txt").write_text(text + "\n")
    large = directory / "usr/share/bench/large"
    large.mkdir(parents=True)
    for number in range(2):
        with (large / f"random-{number}.bin").open("wb") as stream:
            for _ in range(64):
                stream.write(os.urandom(MiB))
        with (large / f"structured-{number}.bin").open("wb") as stream:
            record = bytes(range(256)) * 16
            for index in range(64 * 256):
                stream.write(index.to_bytes(8, "little") + record[8:])
    links = directory / "usr/share/bench/links"
    links.mkdir(parents=True)
    for number in range(2000):
        (links / f"link-{number:04d}").symlink_to(
            f"../small/{number // 500:03d}/file-{number:05d}.txt"
        )
    for path in [directory, *directory.rglob("*")]:
        os.setxattr(
            path, "security.selinux", b"system_u:object_r:usr_t:s0\0", follow_symlinks=False
        )
    for path in list(small.rglob("*.txt"))[::10]:
        os.setxattr(path, "user.bench", b"x" * 32)


def prepare(workdir: Path) -> Path:
    image = workdir / "bench.raw"
    if image.is_file():
        print(f"using the image built earlier: {image}")
        return image
    tree = workdir / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    started = time.perf_counter()
    build_tree(tree)
    made = make_disk_image(workdir / "bench.raw.tmp", tree, root_size_mib=2048)
    made.path.rename(image)
    shutil.rmtree(tree)
    print(f"built {image} in {time.perf_counter() - started:.0f} s")
    return image


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_pipeline(root: Path, compressor: list[str], output: Path) -> Run:
    """tar | compressor > output, then fsync."""
    cpu_before = _children_cpu()
    started = time.perf_counter()
    with output.open("wb") as sink:
        tar = subprocess.Popen(
            tarball.tar_command(root), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert tar.stdout is not None
        compress = subprocess.Popen(compressor, stdin=tar.stdout, stdout=sink)
        tar.stdout.close()
        if compress.wait(timeout=3600) != 0 or tar.wait(timeout=3600) != 0:
            raise RuntimeError(f"{compressor[0]} pipeline failed")
        unsynced = time.perf_counter() - started
        os.fsync(sink.fileno())
    elapsed = time.perf_counter() - started
    size = output.stat().st_size
    output.unlink()
    return Run(elapsed, unsynced, size, _children_cpu() - cpu_before)


@dataclasses.dataclass(frozen=True)
class Run:
    """One baseline pipeline run."""

    seconds: float  # including the fsync
    unsynced: float  # before the fsync
    size: int
    cpu: float  # user + system seconds of tar and the compressor


def baseline(image: Path, compressor: list[str], output: Path) -> Run:
    with diskimage.open_disk(image, method="kernel") as session:
        table = partitions.read_partition_table(session.raw_path)
        root_partition = next(p for p in table.partitions if p.role != "esp")
        root = session.mount(root_partition, "ext4")
        return run_pipeline(root, compressor, output)


def warm(image: Path) -> None:
    with diskimage.open_disk(image, method="kernel") as session:
        table = partitions.read_partition_table(session.raw_path)
        root = session.mount(next(p for p in table.partitions if p.role != "esp"), "ext4")
        subprocess.run(["tar", "-cf", "/dev/null", "-C", str(root), "."], check=True, timeout=3600)


def candidate(image: Path, output: Path) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(image), str(output)],
        check=True,
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    whole = time.perf_counter() - started
    output.unlink()
    manifest_path_for(output).unlink()
    return whole, json.loads(result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description="pack against tar | pigz and tar | gzip")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the image here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(
            "bench_pack: needs root (loop devices and mounts): run it with sudo", file=sys.stderr
        )
        return 2
    missing = [
        tool for tool in ("pigz", "gzip", "tar", "mkfs.ext4", "sgdisk") if not shutil.which(tool)
    ]
    if missing:
        print(f"bench_pack: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    cores = len(os.sched_getaffinity(0))
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-pack-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        image = prepare(workdir)
        with diskimage.open_disk(image, method="kernel") as session:
            table = partitions.read_partition_table(session.raw_path)
            root = session.mount(next(p for p in table.partitions if p.role != "esp"), "ext4")
            usage = os.statvfs(root)
            used = (usage.f_blocks - usage.f_bfree) * usage.f_frsize
            files = sum(len(names) + len(dirs) for _, dirs, names in os.walk(root))
        print(
            f"bench_pack: image {image.stat().st_size / 2**30:.2f} GiB, tree {used / 2**30:.2f} "
            f"GiB used, {files} entries, {cores} CPUs, {args.rounds} rounds"
        )
        warm(image)
        load_before = os.getloadavg()[0]
        output = workdir / NAME
        pigz_runs: list[Run] = []
        ours, wholes, rss, rchars, sizes, cpus = [], [], [], [], [], []
        for number in range(1, args.rounds + 1):
            run = baseline(image, ["pigz", "-p", str(cores), "-6"], workdir / "pigz.tar.gz")
            pigz_runs.append(run)
            whole, data = candidate(image, output)
            ours.append(float(str(data["seconds"])))
            wholes.append(whole)
            rss.append(int(str(data["maxrss_kib"])) / 1024)
            rchars.append(int(str(data["rchar"])))
            sizes.append(int(str(data["size"])))
            cpus.append(float(str(data["cpu_seconds"])))
            print(
                f"round {number}: tar|pigz {run.seconds:.1f} s ({run.unsynced:.1f} s before "
                f"fsync, {run.cpu:.1f} s CPU), pack {ours[-1]:.1f} s (process {whole:.1f} s, "
                f"{cpus[-1]:.1f} s CPU), peak RSS {rss[-1]:.1f} MiB (children at most "
                f"{int(str(data['children_maxrss_kib'])) / 1024:.1f} MiB), read by Python "
                f"{rchars[-1] / MiB:.0f} MiB, tarball {sizes[-1] / MiB:.0f} MiB"
            )
        gzip_run = baseline(image, ["gzip", "-6"], workdir / "gzip.tar.gz")
        print(
            f"tar|gzip {gzip_run.seconds:.1f} s ({gzip_run.unsynced:.1f} s before fsync, "
            f"{gzip_run.cpu:.1f} s CPU)"
        )
        load_after = os.getloadavg()[0]
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    pigz = statistics.median(r.seconds for r in pigz_runs)
    pigz_unsynced = statistics.median(r.unsynced for r in pigz_runs)
    mine = statistics.median(ours)
    ratio, speedup = mine / pigz, gzip_run.seconds / mine
    cpu_ratio = statistics.median(cpus) / statistics.median(r.cpu for r in pigz_runs)
    peak = max(rss)
    extra_read = max(r - s for r, s in zip(rchars, sizes, strict=True))
    print(f"load average (1 min) before/after: {load_before:.2f} / {load_after:.2f}")
    print(
        f"baseline  tar | pigz -p {cores}: median {pigz:.1f} s, {pigz_runs[0].size / MiB:.0f} MiB"
    )
    print(f"baseline  tar | gzip:       {gzip_run.seconds:.1f} s, {gzip_run.size / MiB:.0f} MiB")
    print(f"candidate pack_disk_image:  median {mine:.1f} s, {sizes[-1] / MiB:.0f} MiB")
    print(
        f"ratio pack/pigz: {ratio:.3f} (without the baseline's fsync: {mine / pigz_unsynced:.3f};"
        f" CPU time: {cpu_ratio:.3f})"
    )
    print(f"speed-up over gzip: {speedup:.2f} x")
    print(f"peak RSS of the Python process: {peak:.1f} MiB")
    print(f"bytes read by Python beyond the tarball: {extra_read / MiB:.1f} MiB")
    targets = {
        "pack <= 1.15 x tar|pigz": ratio <= 1.15,
        ">= 1.6 x faster than tar|gzip": speedup >= 1.6,
        "peak RSS <= 100 MiB": peak <= 100,
        "one read of the data (< 64 MiB read beyond the tarball)": extra_read < 64 * MiB,
    }
    for name, met in targets.items():
        print(f"target {name}: {'met' if met else 'MISSED'}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
