"""The ``vm`` backend: anaconda in a QEMU VM driven by Packer, from the kickstart."""
