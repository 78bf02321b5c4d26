"""MAAS registration: API client, chunked boot-resource upload, listing and deletion.

Facts come from ``shared/reference/maas-api.md`` (the modules cite its sections) and MAAS's own
source where the reference is silent (named where used). Plain ``requests`` with a hand-built
OAuth 1.0 PLAINTEXT header; python-libmaas cannot send ``base_image`` and is not used
(docs/maas.md says why). The API key never reaches a log record, an exception message, a
``repr`` or a process's arguments (``credentials`` says how).

Public surface (docs/architecture.md): ``MaasClient``, ``check_credentials()``,
``upload_image()``, ``list_images()``, ``delete_image()``, ``api_key_from_environment()``.
Callers use ``from openeuler_image_builder import maas`` and the names re-exported here.

- ``errors``: the MAAS errors (key rejected, not an admin, unreachable, error answer).
- ``credentials``: the API key, from a key file or the environment, and the MAAS URL.
- ``client``: ``MaasClient`` (signed requests, retries, TLS with a given CA) and
  ``check_credentials()``.
- ``naming``: our image names as MAAS stores them; reading a boot resource's sets.
- ``image_facts``: a tarball's sha256, size, release and arch (manifest, else hashed).
- ``target``: the boot resource an upload creates (name, architecture, title, ``base_image``).
- ``upload``: ``upload_image()``, the chunked upload with recovery and the sync wait.
- ``images``: ``list_images()`` and ``delete_image()``.
"""

from __future__ import annotations

from openeuler_image_builder.maas.client import CredentialCheck as CredentialCheck
from openeuler_image_builder.maas.client import MaasClient as MaasClient
from openeuler_image_builder.maas.client import check_credentials as check_credentials
from openeuler_image_builder.maas.client import maas_error_text as maas_error_text
from openeuler_image_builder.maas.client import normalise_maas_url as normalise_maas_url
from openeuler_image_builder.maas.credentials import API_KEY_ENV as API_KEY_ENV
from openeuler_image_builder.maas.credentials import API_KEY_FILE_ENV as API_KEY_FILE_ENV
from openeuler_image_builder.maas.credentials import MAAS_URL_ENV as MAAS_URL_ENV
from openeuler_image_builder.maas.credentials import ApiKey as ApiKey
from openeuler_image_builder.maas.credentials import (
    api_key_from_environment as api_key_from_environment,
)
from openeuler_image_builder.maas.credentials import connection_settings as connection_settings
from openeuler_image_builder.maas.credentials import read_api_key_file as read_api_key_file
from openeuler_image_builder.maas.errors import MaasApiError as MaasApiError
from openeuler_image_builder.maas.errors import MaasKeyRejected as MaasKeyRejected
from openeuler_image_builder.maas.errors import MaasNotAdmin as MaasNotAdmin
from openeuler_image_builder.maas.errors import MaasUnreachable as MaasUnreachable
from openeuler_image_builder.maas.image_facts import ImageFacts as ImageFacts
from openeuler_image_builder.maas.image_facts import image_identity as image_identity
from openeuler_image_builder.maas.image_facts import read_image_facts as read_image_facts
from openeuler_image_builder.maas.images import MaasImage as MaasImage
from openeuler_image_builder.maas.images import delete_image as delete_image
from openeuler_image_builder.maas.images import list_images as list_images
from openeuler_image_builder.maas.naming import canonical_name as canonical_name
from openeuler_image_builder.maas.naming import newest_set as newest_set
from openeuler_image_builder.maas.naming import single_file as single_file
from openeuler_image_builder.maas.target import UploadTarget as UploadTarget
from openeuler_image_builder.maas.upload import CHUNK_SIZE as CHUNK_SIZE
from openeuler_image_builder.maas.upload import UploadResult as UploadResult
from openeuler_image_builder.maas.upload import upload_image as upload_image
