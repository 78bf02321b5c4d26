"""The ``vm`` backend: anaconda in a QEMU VM driven by Packer, from the kickstart.

``backend`` holds ``VmBackend`` (the ``Backend`` interface); ``packer`` runs and supervises
``packer build`` and follows the installer's serial console.
"""

from openeuler_image_builder.backends.vm.backend import QEMU_BINARY as QEMU_BINARY
from openeuler_image_builder.backends.vm.backend import VmBackend as VmBackend
