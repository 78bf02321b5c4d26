"""The upload stage: connect to MAAS and register a finished image.

An image in the image store is held (``images.hold_image``) while it uploads, so retention
never removes it, and the upload is recorded beside it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from openeuler_image_builder import maas
from openeuler_image_builder.core.catalogue import Arch, NameScheme, Release
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.progress import Reporter, null_reporter
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.pipeline import images


def connect_maas(
    settings: Settings, *, url: str | None = None, key_file: Path | None = None
) -> maas.MaasClient:
    """The MAAS client for ``--upload``: ``url``/``key_file``, else the environment, else settings.

    Raises:
        UsageError: no MAAS URL or no API key (or an unsafe key file).
    """
    found_url, key = maas.connection_settings(
        url=url, key_file=key_file, default_url=settings.maas_url
    )
    if not found_url:
        raise UsageError(
            f"--upload needs the MAAS URL: pass --maas-url, set {maas.MAAS_URL_ENV}, or set "
            "maas-url"
        )
    if not key:
        raise UsageError(
            f"--upload needs a MAAS API key: set {maas.API_KEY_ENV}, or give a file only you "
            f"can read with --api-key-file or {maas.API_KEY_FILE_ENV}"
        )
    return maas.MaasClient(found_url, key, ca_certificate=settings.maas_ca_certificate or None)


def upload_to_maas(
    client: maas.MaasClient,
    tarball: Path,
    *,
    layout: StateLayout,
    release: Release,
    arch: Arch,
    scheme: NameScheme,
    progress: Reporter = null_reporter,
    name: str | None = None,
    title: str | None = None,
) -> maas.UploadResult:
    """Upload a finished image; one in the image store is held meanwhile and records the upload.

    Raises:
        StepFailed: ("upload") MAAS refused or failed the upload.
    """
    directory = tarball.parent
    in_store = images.is_in_store(layout, directory)
    with images.hold_image(directory) if in_store else contextlib.nullcontext():
        result = maas.upload_image(
            client,
            tarball,
            release=release,
            arch=arch,
            scheme=scheme,
            name=name,
            title=title,
            progress=progress,
        )
        if in_store:
            images.record_upload(directory, result.store_record(client.url))
    return result
