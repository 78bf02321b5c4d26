"""A stand-in for canonical/curtin: only the API surface the in-image hook and its tests use.

Written for the tests (no curtin code is copied); it mimics the behaviour of curtin's distro
detection and redhat boot-loader paths as observed in curtin 21.3 ... main. The profile, from
the environment variable ``STANDIN_CURTIN_PROFILE``, selects a curtin generation:

- ``21.3``: ID_LIKE fallback, %rhel 7 or 8 on BIOS, x64 loader names only;
- ``23.1.1``: %rhel 7, 8 or 9, x64 loader names only;
- ``release-23.1`` (default): any %rhel above 6, aarch64 loader names too (LP: #2090874);
- ``no-osfamily-map``: like release-23.1 without ``distro.DISTRO_TO_OSFAMILY`` (internals
  changed);
- ``rewrites-os-release``: like release-23.1, but the built-in hooks modify the target's
  /etc/os-release (to test the hook's identity check).
"""

import os

__version__ = "23.1.1"
PROFILE = os.environ.get("STANDIN_CURTIN_PROFILE", "release-23.1")
