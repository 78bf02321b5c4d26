"""Turn a disk image into a MAAS root-filesystem tarball and its manifest (the ``pack`` stage).

disk image (raw or qcow2) → root partition (the one holding ``/etc/os-release``, or
``--root-partition N``) → mounted read-only (``diskimage``) → facts for the manifest (kernel,
``rpm -qa``, cloud-init) → ``verify.verify_tree`` (any problem stops here) → GNU tar (xattrs,
ACLs, SELinux labels, sparse files, one filesystem, numeric owners, members ``./…``) piped into
``pigz`` on every core → this process reads the compressed stream once, writing it to a
temporary file beside the output while computing its sha256 and size → ``os.replace`` onto
``OUT.tar.gz`` and ``OUT.manifest.json``.

Nothing is written under the final names before verification passed and the tarball is complete;
a failure or a signal (SIGTERM/SIGINT) removes the temporary files, stops tar and pigz, unmounts
and detaches everything, and leaves a previous image untouched.

Layouts: the image must keep ``/boot`` inside the root filesystem (as the recipe's kickstart
does: one root partition). An ESP, a BIOS boot partition or swap beside it is ignored (MAAS and
curtin create those at deployment); a separate ``/boot`` partition is refused with a message,
since its kernel would be missing from the tarball.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Literal

from openeuler_image_builder import __version__
from openeuler_image_builder.core import cancellation, files
from openeuler_image_builder.core.catalogue import Arch
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.progress import Reporter, null_reporter
from openeuler_image_builder.core.timestamps import format_utc, utc_now
from openeuler_image_builder.pipeline import diskimage
from openeuler_image_builder.pipeline.verify import Problem, resolve_in_root, verify_tree

logger = logging.getLogger(__name__)

STEP = "pack"
MANIFEST_SCHEMA = 1
TARBALL_SUFFIX = ".tar.gz"
MANIFEST_SUFFIX = ".manifest.json"
READ_SIZE = 1024 * 1024
PIPE_SIZE = 1024 * 1024
TAR_RECORD_SIZE = 20 * 512  # GNU tar's default blocking factor
CHECKPOINT_RECORDS = 1024  # a progress line from tar every 10 MiB
COMMAND_TIMEOUT = 300.0
DEFAULT_TIMEOUT = 4 * 3600.0
MountChoice = Literal["auto", "kernel", "fuse"]

# Where an rpm database may live in the image (rpm >= 4.16 moved it to /usr/lib/sysimage/rpm;
# /var/lib/rpm is often a symlink to it).
RPMDB_DIRS = ("usr/lib/sysimage/rpm", "var/lib/rpm")
RPMDB_BACKENDS = (("rpmdb.sqlite", "sqlite"), ("Packages", "bdb_ro"), ("Packages.db", "ndb"))
_CHECKPOINT = re.compile(r"oeib-checkpoint (\d+)")
_VERSION_PY = re.compile(r"""^__VERSION__\s*=\s*["']([^"']+)["']""", re.M)


# -- the manifest ------------------------------------------------------------------------------


@dataclasses.dataclass
class Manifest:
    """What ``pack`` knows about an image (``openeuler-<release>-<arch>.manifest.json``).

    The schema is fixed in docs/architecture.md. ``extra`` holds keys this version does not
    know, kept when a manifest is read and written again.
    """

    image: str
    arch: str
    sha256: str
    size: int
    release: str | None = None
    kernel: str | None = None
    packages: list[str] = dataclasses.field(default_factory=list)
    cloud_init: str | None = None
    built_at: str = ""
    build_duration: float | None = None
    durations: dict[str, float] = dataclasses.field(default_factory=dict)
    tools: dict[str, str] = dataclasses.field(default_factory=dict)
    template_hash: str | None = None
    settings: dict[str, Any] | None = None
    schema: int = MANIFEST_SCHEMA
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON object (``extra`` keys merged in at the top level)."""
        data = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"
        }
        return {**self.extra, **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """Read a manifest object; unknown keys go to ``extra``.

        Raises:
            ValueError: a required key is missing or has the wrong type.
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        required = {"image": str, "arch": str, "sha256": str, "size": int}
        for key, kind in required.items():
            if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
                raise ValueError(f"{key!r} is missing or not a {kind.__name__}")
        if not re.fullmatch(r"[0-9a-f]{64}", data["sha256"]):
            raise ValueError("'sha256' is not 64 lowercase hexadecimal digits")
        if not isinstance(data.get("packages", []), list):
            raise ValueError("'packages' is not a list")
        known = {key: value for key, value in data.items() if key in names}
        extra = {key: value for key, value in data.items() if key not in names}
        return cls(**known, extra=extra)

    @classmethod
    def from_file(cls, path: Path) -> Manifest:
        """Read ``path``.

        Raises:
            UsageError: missing, not JSON, or not a manifest (the message names the file).
        """
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"manifest {path}: no such file") from None
        except (OSError, ValueError) as error:
            raise UsageError(f"manifest {path} is not readable JSON: {error}") from None
        if not isinstance(data, dict):
            raise UsageError(f"manifest {path} is not a JSON object")
        try:
            return cls.from_json(data)
        except (TypeError, ValueError) as error:
            raise UsageError(f"manifest {path} is not a valid manifest: {error}") from None

    def write(self, path: Path) -> None:
        """Write atomically (temporary file in the same directory, then ``os.replace``)."""
        files.write_json_atomic(path, self.to_json())


@contextlib.contextmanager
def _temporary_manifest(manifest: Manifest, final: Path) -> Iterator[Path]:
    """The manifest, written and synced to a temporary file beside ``final``.

    The file is removed on exit unless it was renamed into place.
    """
    with files.staged_file(final) as (stream, temporary):
        stream.write(files.json_text(manifest.to_json()).encode())
        files.finish(stream)
        yield temporary


def manifest_path_for(tarball: Path) -> Path:
    """``openeuler-X-x86_64.tar.gz`` → ``openeuler-X-x86_64.manifest.json`` beside it."""
    name = tarball.name
    for suffix in (TARBALL_SUFFIX, ".tgz"):
        if name.endswith(suffix):
            return tarball.with_name(name[: -len(suffix)] + MANIFEST_SUFFIX)
    return tarball.with_name(name + MANIFEST_SUFFIX)


# -- facts about the mounted tree --------------------------------------------------------------


def _version_key(text: str) -> list[tuple[int, int | str]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", text) if p]


def kernel_version(root: Path) -> str | None:
    """The kernel release of the tree (the newest when several).

    From ``/lib/modules/<version>`` holding ``modules.dep``, ``vmlinuz`` or ``kernel/``, else
    from ``/boot/vmlinuz-<version>``.
    """
    found: set[str] = set()
    modules = resolve_in_root(root, "lib/modules") or resolve_in_root(root, "usr/lib/modules")
    if modules and modules.is_dir():
        for entry in modules.iterdir():
            markers = ("modules.dep", "vmlinuz", "kernel")
            if (
                entry.is_dir()
                and not entry.is_symlink()
                and any((entry / name).exists() for name in markers)
            ):
                found.add(entry.name)
    if not found:
        boot = resolve_in_root(root, "boot")
        if boot and boot.is_dir():
            for entry in boot.glob("vmlinuz-*"):
                version = entry.name.removeprefix("vmlinuz-")
                if "rescue" not in version:
                    found.add(version)
    return max(found, key=_version_key) if found else None


@dataclasses.dataclass(frozen=True)
class RpmFacts:
    """What the image's rpm database says."""

    packages: list[str]
    cloud_init: str | None
    rpm_version: str | None


def read_rpmdb(root: Path, workdir: Path) -> RpmFacts:
    """``rpm -qa`` of the tree (sorted ``name-version-release.arch``) and cloud-init's version.

    The database is copied to ``workdir`` first: the tree is mounted read-only and rpm may want
    to write (locks, sqlite shared memory). No database gives an empty list.

    Raises:
        StepFailed: there is a database but the host's ``rpm`` is missing or cannot read it.
    """
    database: Path | None = None
    backend = ""
    for relative in RPMDB_DIRS:
        candidate = resolve_in_root(root, relative)
        if candidate is None or not candidate.is_dir():
            continue
        for file_name, name in RPMDB_BACKENDS:
            if (candidate / file_name).is_file():
                database, backend = candidate, name
                break
        if database:
            break
    if database is None:
        return RpmFacts([], None, None)
    rpm = shutil.which("rpm")
    if rpm is None:
        raise StepFailed(
            STEP,
            "the image has an rpm database but this host has no rpm command to read it: "
            "install it (Debian/Ubuntu package rpm)",
        )
    copy = workdir / "rpmdb"
    copy.mkdir(mode=0o700)
    for entry in database.iterdir():
        # Skip Berkeley DB environment files and locks: rpm recreates what it needs.
        if entry.is_file() and not entry.name.startswith(("__db.", ".")):
            shutil.copyfile(entry, copy / entry.name)
    base = [rpm, "--dbpath", str(copy), "--define", f"_db_backend {backend}"]
    environment = {**os.environ, "LC_ALL": "C", "HOME": str(workdir)}
    result = diskimage.run_command(
        [*base, "-qa", "--qf", "%{nvr}%{archsuffix}\\n"], env=environment
    )
    if result.returncode != 0:
        raise StepFailed(
            STEP,
            f"cannot read the image's rpm database ({backend}) with this host's rpm: "
            f"{diskimage.one_line(result.stderr) or f'rpm exited with {result.returncode}'}",
        )
    packages = sorted({line.strip() for line in result.stdout.splitlines() if line.strip()})
    query = diskimage.run_command(
        [*base, "-q", "--qf", "%{version}\\n", "cloud-init"], env=environment
    )
    cloud_init = (
        query.stdout.split()[0] if query.returncode == 0 and query.stdout.split() else None
    )
    version = diskimage.run_command([rpm, "--version"])
    rpm_version = (
        version.stdout.split()[-1] if version.returncode == 0 and version.stdout else None
    )
    return RpmFacts(packages, cloud_init, rpm_version)


def cloud_init_from_source(root: Path) -> str | None:
    """cloud-init's version from ``cloudinit/version.py`` in the tree's site-packages."""
    for lib in ("usr/lib", "usr/lib64"):
        base = resolve_in_root(root, lib)
        if base is None:
            continue
        for version_py in sorted(base.glob("python3*/site-packages/cloudinit/version.py")):
            with contextlib.suppress(OSError):
                match = _VERSION_PY.search(version_py.read_text(errors="replace"))
                if match:
                    return match.group(1)
    return None


def has_os_release(root: Path) -> bool:
    """Whether the tree has ``/etc/os-release`` (or ``/usr/lib/os-release``)."""
    return any(
        (path := resolve_in_root(root, name)) is not None and path.is_file()
        for name in ("etc/os-release", "usr/lib/os-release")
    )


# -- choosing the root partition ---------------------------------------------------------------


def _describe(partition: diskimage.Partition, fstype: str | None) -> str:
    role = {"esp": "EFI system", "bios-boot": "BIOS boot", "extended": "extended"}.get(
        partition.role, partition.role
    )
    details = [fstype or "no known filesystem"]
    if role not in ("data",):
        details.append(role)
    return f"{partition.number} ({', '.join(details)}, {partition.size // 2**20} MiB)"


def _looks_like_boot(path: Path) -> bool:
    """A filesystem holding what belongs in /boot at its top level."""
    return any(path.glob("vmlinuz-*")) or (path / "loader" / "entries").is_dir()


def _choose_root(
    session: diskimage.DiskSession,
    table: diskimage.PartitionTable,
    wanted: int | None,
    progress: Reporter,
) -> tuple[diskimage.Partition, str, Path]:
    """Pick, mount and return the root partition (see the module docstring)."""
    image = session.image
    fstypes = {p.number: diskimage.probe_filesystem(session.raw_path, p) for p in table.partitions}
    listing = ", ".join(_describe(p, fstypes[p.number]) for p in table.partitions) or "none"
    if wanted is not None:
        partition = table.get(wanted)
        if partition is None:
            raise UsageError(
                f"--root-partition {wanted}: {image} has no partition {wanted} "
                f"(partitions: {listing})"
            )
        fstype = fstypes[wanted]
        if fstype not in diskimage.SUPPORTED_FILESYSTEMS:
            raise UsageError(
                f"--root-partition {wanted}: partition {_describe(partition, fstype)} of {image} "
                "is not an ext4 or xfs filesystem"
            )
        progress(STEP, None, f"mounting partition {wanted}")
        return partition, fstype, session.mount(partition, fstype)

    candidates = [
        p
        for p in table.partitions
        if p.role not in ("esp", "bios-boot", "swap", "extended")
        and fstypes[p.number] in diskimage.SUPPORTED_FILESYSTEMS
    ]
    if not candidates:
        unsupported = [
            _describe(p, fstypes[p.number])
            for p in table.partitions
            if fstypes[p.number] in ("btrfs", "LVM2_member", "crypto_LUKS", "linux_raid_member")
        ]
        hint = (
            f"; {', '.join(unsupported)} cannot be packed (the recipe's kickstart makes one ext4 "
            "root partition)"
            if unsupported
            else ""
        )
        raise UsageError(
            f"{image} has no ext4 or xfs partition to pack (partitions: {listing}){hint}"
        )
    mounted: dict[int, Path] = {}
    for partition in candidates:
        progress(STEP, None, f"looking at partition {partition.number}")
        mounted[partition.number] = session.mount(partition, str(fstypes[partition.number]))
    with_os_release = [p for p in candidates if has_os_release(mounted[p.number])]
    root = max(with_os_release or candidates, key=lambda p: p.size)
    if len(with_os_release) > 1:
        logger.warning(
            "several partitions of %s hold /etc/os-release (%s): packing the largest, %d; "
            "use --root-partition to choose",
            image,
            ", ".join(str(p.number) for p in with_os_release),
            root.number,
        )
    root_boot = resolve_in_root(mounted[root.number], "boot")
    root_has_kernel = bool(root_boot and any(root_boot.glob("vmlinuz-*")))
    for partition in candidates:
        if partition is root:
            continue
        if not root_has_kernel and _looks_like_boot(mounted[partition.number]):
            raise UsageError(
                f"{image} keeps /boot on partition {partition.number}, apart from the root "
                f"filesystem on partition {root.number}: pack needs /boot inside the root "
                "filesystem (curtin installs the kernel from the tarball); build with a single "
                "root partition, as the recipe's kickstart does"
            )
        session.unmount(mounted[partition.number])
    return root, str(fstypes[root.number]), mounted[root.number]


# -- tar | pigz --------------------------------------------------------------------------------


def tar_command(root: Path) -> list[str]:
    """GNU tar creating the MAAS root tarball of ``root`` on stdout (uncompressed)."""
    return [
        "tar",
        "--create",
        "--file=-",
        f"--directory={root}",
        "--format=posix",
        # No access/change times in the pax headers: smaller and reproducible.
        "--pax-option=delete=atime,delete=ctime",
        "--numeric-owner",
        "--one-file-system",
        "--sparse",
        "--acls",
        "--selinux",
        "--xattrs",
        "--xattrs-include=*",
        # XFS also lists a file's ACLs as these raw attributes (root only); --acls carries the
        # ACLs, and copies of XFS's internal form would land as junk on an ext4 target.
        "--xattrs-exclude=trusted.SGI_ACL_FILE",
        "--xattrs-exclude=trusted.SGI_ACL_DEFAULT",
        "--sort=name",
        f"--checkpoint={CHECKPOINT_RECORDS}",
        "--checkpoint-action=echo=oeib-checkpoint %u",
        ".",
    ]


def compressor_command(threads: int | None = None) -> list[str]:
    """The compressor: pigz on every core this process may use (gzip level 6, the default)."""
    count = threads or len(os.sched_getaffinity(0))
    return ["pigz", "--processes", str(max(1, count)), "--stdout"]


def _widen_pipe(fd: int) -> None:
    """Grow a pipe to 1 MiB (from 64 KiB): fewer wake-ups of tar, pigz and this process."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _exit_text(status: int) -> str:
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"


def _stream(stream: IO[bytes] | None) -> IO[bytes]:
    if stream is None:
        raise RuntimeError("a pipe was not set up")
    return stream


class _Pipeline:
    """``tar | pigz`` whose output this process reads; ``stop()`` ends both, always."""

    def __init__(self, root: Path, deadline: float) -> None:
        for tool, package in (("tar", "tar"), ("pigz", "pigz")):
            if shutil.which(tool) is None:
                raise StepFailed(STEP, f"{tool} is missing: install it (package {package})")
        self.records_written = 0
        self.tar_errors: collections.deque[str] = collections.deque(maxlen=20)
        self.pigz_errors: collections.deque[str] = collections.deque(maxlen=20)
        self.timed_out = False
        self.processes: list[subprocess.Popen[bytes]] = []
        self._readers: list[threading.Thread] = []
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._time_out)
        self._timer.daemon = True
        try:
            self._start(root)
        except BaseException:
            # A failed start of pigz (or a signal) must not leave tar running in its session.
            self.stop()
            raise

    def _start(self, root: Path) -> None:
        environment = {**os.environ, "LC_ALL": "C"}
        # Own sessions: a Ctrl-C on the terminal reaches only Python, which stops these after
        # it stopped reading (never tar while a mount below it is being taken down).
        self.tar = subprocess.Popen(
            tar_command(root),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=environment,
        )
        self.processes.append(self.tar)
        tar_stdout = _stream(self.tar.stdout)
        _widen_pipe(tar_stdout.fileno())
        self.pigz = subprocess.Popen(
            compressor_command(),
            stdin=tar_stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.processes.append(self.pigz)
        tar_stdout.close()  # pigz holds the read end now
        self.output = _stream(self.pigz.stdout)
        _widen_pipe(self.output.fileno())
        self._readers = [
            threading.Thread(
                target=self._read_stderr, args=(_stream(self.tar.stderr), True), daemon=True
            ),
            threading.Thread(
                target=self._read_stderr, args=(_stream(self.pigz.stderr), False), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()
        self._timer.start()

    def _read_stderr(self, stream: IO[bytes], is_tar: bool) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").strip()
            match = _CHECKPOINT.search(line) if is_tar else None
            if match:
                self.records_written = int(match.group(1))
            elif line:
                (self.tar_errors if is_tar else self.pigz_errors).append(line)

    def _time_out(self) -> None:
        self.timed_out = True
        self._kill()

    def _kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGKILL)

    def finish(self) -> None:
        """Wait for both after the stream ended; raise if either failed."""
        tar_status = self.tar.wait(timeout=COMMAND_TIMEOUT)
        pigz_status = self.pigz.wait(timeout=COMMAND_TIMEOUT)
        for reader in self._readers:
            reader.join(timeout=COMMAND_TIMEOUT)
        if self.timed_out:
            raise StepFailed(STEP, "tar | pigz did not finish before the pack timeout")
        # pigz first: when it dies, tar only sees a broken pipe.
        if pigz_status != 0:
            detail = self.pigz_errors[-1] if self.pigz_errors else _exit_text(pigz_status)
            raise StepFailed(STEP, f"pigz failed: {detail}")
        if tar_status != 0:
            detail = self.tar_errors[-1] if self.tar_errors else _exit_text(tar_status)
            raise StepFailed(STEP, f"tar failed: {detail}")
        for line in self.tar_errors:
            logger.info("tar: %s", line)

    def stop(self) -> None:
        """Kill and reap both processes if they still run (idempotent)."""
        self._timer.cancel()
        self._kill()
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def _write_tarball(
    root: Path, destination: int, progress: Reporter, deadline: float, stack: contextlib.ExitStack
) -> tuple[str, int]:
    """Run the pipeline into ``destination`` (a file descriptor); returns (sha256, size)."""
    usage = os.statvfs(root)
    used = max(1, (usage.f_blocks - usage.f_bfree) * usage.f_frsize)
    pipeline = _Pipeline(root, deadline)
    stack.callback(pipeline.stop)
    digest = hashlib.sha256()
    size = 0
    last_report = 0.0
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    source = pipeline.output.fileno()
    while True:
        count = os.readv(source, [view])
        if not count:
            break
        chunk = view[:count]
        written = 0
        while written < count:
            try:
                written += os.write(destination, chunk[written:])
            except OSError as error:
                raise StepFailed(
                    STEP, f"cannot write the tarball: {error.strerror or error}"
                ) from None
        digest.update(chunk)
        size += count
        now = time.monotonic()
        if now - last_report >= 0.5:
            last_report = now
            read = pipeline.records_written * TAR_RECORD_SIZE
            progress(
                STEP,
                min(99.0, 100 * read / used),
                f"{read / 2**20:.0f} MiB read, {size / 2**20:.0f} MiB written",
            )
    pipeline.finish()
    return digest.hexdigest(), size


# -- the stage ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _cancellable() -> Iterator[None]:
    """SIGTERM/SIGINT unwind the pack (cleanup included), unless a caller handles them."""
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        with cancellation.interrupt_on_signals():
            yield
    else:
        yield


def _remove_stale_partials(final: Path) -> None:
    """Remove temporary tarballs beside ``final`` left by packs that were killed."""
    for entry in final.parent.glob(f".{glob.escape(final.name)}.*.partial"):
        match = re.fullmatch(rf"\.{re.escape(final.name)}\.(\d+)\..+\.partial", entry.name)
        if match and not diskimage.process_alive(int(match.group(1))):
            logger.warning("removing %s, left by a pack that was killed", entry)
            entry.unlink(missing_ok=True)


def _temporary_output(final: Path) -> contextlib.AbstractContextManager[tuple[IO[bytes], Path]]:
    """A temporary file beside ``final`` (removed unless it was renamed into place).

    Named ``.<final name>.<pid>.<random>.partial`` so a later pack can tell a leftover of a
    killed process from a pack still running.
    """
    _remove_stale_partials(final)
    return files.staged_file(final, prefix=f".{final.name}.{os.getpid()}.", suffix=".partial")


def _problems_text(problems: list[Problem]) -> str:
    listed = "; ".join(f"{p.message} [{p.code}]" for p in problems)
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return f"the image is not fit for MAAS ({count}): {listed}"


def _tool_versions(session: diskimage.DiskSession, rpm_version: str | None) -> dict[str, str]:
    versions = {
        "openeuler-image-builder": __version__,
        "tar": diskimage.tool_version(["tar", "--version"]),
        "pigz": diskimage.tool_version(["pigz", "--version"]),
    }
    if rpm_version:
        versions["rpm"] = rpm_version
    versions.update(session.tools)
    return {key: value for key, value in versions.items() if value}


def _check_output(output: Path) -> Path:
    if not output.name.endswith(TARBALL_SUFFIX):
        raise UsageError(
            f"--output {output}: the tarball name must end in .tar.gz (MAAS filetype tgz), "
            "e.g. openeuler-24.03-LTS-SP3-x86_64.tar.gz"
        )
    output = output.expanduser().absolute()
    if output.is_dir():
        raise UsageError(f"--output {output} is a directory: give the tarball's file name")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"cannot create the output directory {output.parent}: {error.strerror}"
        ) from None
    if not os.access(output.parent, os.W_OK):
        raise UsageError(f"cannot write to {output.parent}: choose another --output")
    return output


def pack_disk_image(
    disk_image: Path,
    output: Path,
    *,
    arch: Arch,
    root_partition: int | None = None,
    manifest_extra: Mapping[str, object] | None = None,
    progress: Reporter = null_reporter,
    mount_method: MountChoice = "auto",
    timeout: float = DEFAULT_TIMEOUT,
) -> Manifest:
    """Pack the root filesystem of ``disk_image`` into ``output`` and write its manifest.

    ``manifest_extra`` sets what only the caller knows (``release``, ``durations`` — merged
    with pack's own —, ``build_duration``, ``tools`` — merged —, ``template_hash``,
    ``settings``, or other keys). ``mount_method`` ``auto`` mounts with the kernel when root
    with loop devices, else with FUSE.

    Raises:
        UsageError: bad input (missing or unsupported image, no root partition, separate /boot,
            bad ``--root-partition`` or ``--output``).
        StepFailed: ``verify`` when the tree has problems (all listed); ``pack`` when mounting,
            reading the rpm database, tar or pigz failed or ``timeout`` passed.
        cancellation.Interrupted: SIGTERM/SIGINT (after everything was cleaned up).
    """
    started = time.monotonic()
    deadline = started + timeout
    output = _check_output(output)
    manifest_path = manifest_path_for(output)
    extra = dict(manifest_extra or {})
    method: diskimage.MountMethod = (
        diskimage.default_mount_method() if mount_method == "auto" else mount_method
    )
    progress(STEP, None, f"opening {disk_image.name}")
    diskimage.clean_stale_sessions()
    with _cancellable(), contextlib.ExitStack() as stack:
        session = stack.enter_context(diskimage.open_disk(disk_image, method=method))
        table = diskimage.read_partition_table(session.raw_path)
        partition, fstype, root = _choose_root(session, table, root_partition, progress)
        logger.info("packing partition %d (%s) of %s", partition.number, fstype, disk_image)

        progress(STEP, None, "reading the package database")
        stack.callback(shutil.rmtree, session.workdir / "rpmdb", ignore_errors=True)
        rpm = read_rpmdb(root, session.workdir)
        kernel = kernel_version(root)
        cloud_init = rpm.cloud_init or cloud_init_from_source(root)

        progress("verify", None, "checking the root filesystem")
        verify_started = time.monotonic()
        problems = verify_tree(root, arch)
        verify_duration = time.monotonic() - verify_started
        if problems:
            raise StepFailed("verify", _problems_text(problems))
        progress("verify", 100, "no problems")

        stream, temporary = stack.enter_context(_temporary_output(output))
        sha256, size = _write_tarball(root, stream.fileno(), progress, deadline, stack)
        files.finish(stream)

        durations = {
            "pack": round(time.monotonic() - started, 3),
            "verify": round(verify_duration, 3),
        }
        extra_durations = extra.pop("durations", None)
        extra_tools = extra.pop("tools", None)
        if not isinstance(extra_durations, Mapping):
            extra_durations = {}
        if not isinstance(extra_tools, Mapping):
            extra_tools = {}
        manifest = Manifest(
            image=output.name,
            arch=arch,
            sha256=sha256,
            size=size,
            kernel=kernel,
            packages=rpm.packages,
            cloud_init=cloud_init,
            built_at=format_utc(utc_now()),
            build_duration=durations["pack"],
            durations={**extra_durations, **durations},
            tools={**_tool_versions(session, rpm.rpm_version), **extra_tools},
        )
        protected = {"extra", "image", "sha256", "size", "schema"}  # facts of this tarball
        names = {f.name for f in dataclasses.fields(Manifest)} - protected
        for key, value in extra.items():
            if key in names:
                setattr(manifest, key, value)
            elif key not in protected:
                manifest.extra[key] = value
        # Both files are complete on disk before either final name changes, so the window in
        # which the new tarball sits beside the old manifest is two renames long.
        manifest_temporary = stack.enter_context(_temporary_manifest(manifest, manifest_path))
        os.replace(temporary, output)
        os.replace(manifest_temporary, manifest_path)
        progress(STEP, 100, f"{output.name}: {size / 2**20:.0f} MiB")
    return manifest
