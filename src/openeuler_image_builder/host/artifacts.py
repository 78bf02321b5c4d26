"""HashiCorp release zips and the offline bundles that carry them (the charm's resources).

A bundle is a zip holding HashiCorp's release zip of Packer or of the qemu plugin and the
release's ``SHA256SUMS`` file, as published; ``extract_verified_binary`` checks one and extracts
the binary.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

from openeuler_image_builder.core import files
from openeuler_image_builder.core.errors import UsageError

# dpkg architecture → the Go architecture in HashiCorp's release file names.
RELEASE_ARCH = {"amd64": "amd64", "arm64": "arm64"}


@dataclasses.dataclass(frozen=True)
class ReleaseArtifact:
    """A HashiCorp release zip: its file name, its SHA256SUMS file, the binary inside."""

    product: str
    version: str
    zip_name: str
    sums_name: str
    binary_name: str

    def binary_in(self, zip_name: str) -> str:
        """The binary's name inside the release zip called ``zip_name``.

        Packer's zip holds ``packer``; a plugin's zip holds a binary named like the zip.
        """
        return "packer" if self.product == "packer" else zip_name.removesuffix(".zip")

    @property
    def zip_pattern(self) -> re.Pattern[str]:
        """The zip's file name; the plugin's protocol part (``x5.0``) may vary."""
        return re.compile("^" + re.escape(self.zip_name).replace(r"x5\.0", r"x\d+\.\d+") + "$")


def packer_artifact(version: str, dpkg_arch: str) -> ReleaseArtifact:
    """Packer's release zip (releases.hashicorp.com/packer/<v>/)."""
    arch = RELEASE_ARCH.get(dpkg_arch, dpkg_arch)
    return ReleaseArtifact(
        product="packer",
        version=version,
        zip_name=f"packer_{version}_linux_{arch}.zip",
        sums_name=f"packer_{version}_SHA256SUMS",
        binary_name="packer",
    )


def plugin_artifact(version: str, dpkg_arch: str) -> ReleaseArtifact:
    """The qemu plugin's release zip (github.com/hashicorp/packer-plugin-qemu releases)."""
    arch = RELEASE_ARCH.get(dpkg_arch, dpkg_arch)
    binary = f"packer-plugin-qemu_v{version}_x5.0_linux_{arch}"
    return ReleaseArtifact(
        product="packer-plugin-qemu",
        version=version,
        zip_name=f"{binary}.zip",
        sums_name=f"packer-plugin-qemu_v{version}_SHA256SUMS",
        binary_name=binary,
    )


def bundle_help(artifact: ReleaseArtifact) -> str:
    """How to make a bundle for ``artifact`` (used in error messages and docs)."""
    return (
        f"make it with `zip {artifact.product}-bundle.zip {artifact.zip_name} "
        f"{artifact.sums_name}` from the files HashiCorp publishes"
    )


@dataclasses.dataclass(frozen=True)
class VerifiedBinary:
    """A binary extracted from a verified release zip."""

    path: Path
    zip_name: str
    zip_sha256: str


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in blocks."""
    return files.hash_file(path)[0]


def extract_verified_binary(bundle: Path, artifact: ReleaseArtifact, dest: Path) -> VerifiedBinary:
    """Verify an offline bundle and extract the binary to ``dest`` (mode 0755).

    A bundle is a zip holding HashiCorp's release zip and the release's ``SHA256SUMS`` file, as
    published. The release zip must be for this version and architecture, its sha256 must match
    its line in ``SHA256SUMS``, and every member's CRC must be right.

    Raises:
        UsageError: the bundle is not as described (the message says what and how to make one).
    """
    hint = bundle_help(artifact)
    try:
        outer = zipfile.ZipFile(bundle)
    except (OSError, zipfile.BadZipFile) as error:
        raise UsageError(f"{bundle} is not a zip bundle ({error}): {hint}") from None
    with outer:
        members = {Path(name).name: name for name in outer.namelist() if not name.endswith("/")}
        zips = [name for name in members if artifact.zip_pattern.match(name)]
        if not zips:
            found = ", ".join(sorted(members)) or "nothing"
            raise UsageError(
                f"{bundle} holds no {artifact.zip_name} (it holds {found}): {hint}; "
                f"the version must be {artifact.version} and the architecture this host's"
            )
        if artifact.sums_name not in members:
            raise UsageError(f"{bundle} holds no {artifact.sums_name}: {hint}")
        zip_name = zips[0]
        sums = outer.read(members[artifact.sums_name]).decode("utf-8", errors="replace")
        expected = None
        for line in sums.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1].lstrip("*") == zip_name:
                expected = fields[0].lower()
        if expected is None:
            raise UsageError(f"{artifact.sums_name} in {bundle} has no line for {zip_name}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
            inner_path = Path(scratch) / zip_name
            binary_name = artifact.binary_in(zip_name)
            try:
                # Extracted once, then hashed and opened from disk.
                with outer.open(members[zip_name]) as source, inner_path.open("wb") as target:
                    shutil.copyfileobj(source, target)
                actual = file_sha256(inner_path)
                if actual != expected:
                    raise UsageError(
                        f"{zip_name} in {bundle} has sha256 {actual}, but {artifact.sums_name} "
                        f"says {expected}: the file is corrupt or not HashiCorp's; download it "
                        "again"
                    )
                with zipfile.ZipFile(inner_path) as inner:
                    broken = inner.testzip()
                    if broken is not None:
                        raise UsageError(f"{zip_name} in {bundle}: member {broken} fails its CRC")
                    if binary_name not in inner.namelist():
                        raise UsageError(f"{zip_name} in {bundle} holds no {binary_name}")
                    with (
                        inner.open(binary_name) as source,
                        files.atomic_writer(dest, mode=0o755) as target,
                    ):
                        shutil.copyfileobj(source, target)
            except (zipfile.BadZipFile, zlib.error) as error:
                raise UsageError(f"{zip_name} in {bundle} is damaged ({error})") from None
    return VerifiedBinary(dest, zip_name, actual)
