"""The build host.

Installing the build tools (apt packages, Packer, its qemu plugin), checking KVM, the proxy
environment and signing-key fingerprints.
"""
