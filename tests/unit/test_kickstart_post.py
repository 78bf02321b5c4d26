"""Run the kickstart's %post for real in a throw-away overlay root (needs root and overlayfs).

The %post is a bash script anaconda runs chrooted into the installed system. Here it runs
chrooted into an overlay of this host's root (bash, coreutils, findutils, sed, awk) with a
synthetic openEuler image laid over it that carries every piece of host identity the script
must remove. ``rpm``, ``systemctl``, ``usermod``, ``python3`` and ``dnf`` are stubs that log
their arguments (the real ones are openEuler's). Everything happens inside ``unshare --mount``
and in the overlay's upper directory: the host is not changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from fixtures.image_trees import make_image_tree

from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.pipeline import render

pytestmark = [
    pytest.mark.needs_root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (overlay mount and chroot)"),
    pytest.mark.skipif(
        shutil.which("unshare") is None or "overlay" not in Path("/proc/filesystems").read_text(),
        reason="needs unshare and overlayfs",
    ),
]

STUBS = {
    "rpm": 'case "$*" in *"-q kernel"*) echo kernel-5.10.0-216.0.0.115.oe2203sp4.x86_64;; esac',
    "systemctl": "true",
    "usermod": "sed -i 's|^root:[^:]*:|root:!:|' /etc/shadow",
    "passwd": "true",
    "python3": 'echo "OEIB-CLOUDINIT: ok (stub)"',
    "dnf": "true",
}
CHECKS = textwrap.dedent("""\
    set -e
    [ ! -s /etc/machine-id ] && echo machine-id-empty
    ! ls /etc/ssh/ssh_host_* >/dev/null 2>&1 && echo no-host-keys
    grep -q '^root:!:' /etc/shadow && echo root-locked
    [ ! -s /etc/fstab ] && echo fstab-empty
    [ ! -s /etc/resolv.conf ] && echo resolv-empty
    [ ! -e /etc/sysconfig/network-scripts/ifcfg-ens3 ] && echo no-ifcfg
    [ -e /etc/sysconfig/network-scripts/ifcfg-lo ] && echo lo-kept
    [ -z "$(ls -A /etc/NetworkManager/system-connections)" ] && echo no-nm-connections
    [ -x /curtin/curtin-hooks ] && echo hook-executable
    grep -q '^GRUB_ENABLE_BLSCFG=false' /etc/default/grub && echo grub-defaults
    grep -q '^#metalink=' /etc/yum.repos.d/openEuler.repo && echo metalink-off
    grep -q '^baseurl=' /etc/yum.repos.d/openEuler.repo && echo baseurl-kept
    awk '/^\\[debuginfo\\]/{s=1} s && /^enabled=/{print; exit}' /etc/yum.repos.d/openEuler.repo
    [ ! -e /root/anaconda-ks.cfg ] && echo no-anaconda-ks
    [ ! -e /var/log/anaconda ] && echo no-anaconda-logs
    [ ! -s /var/log/messages ] && echo logs-truncated
    [ ! -e /var/tmp/oeib-cloudinit-fix.py ] && echo fix-script-removed
    [ ! -e /tmp/leftover ] && echo tmp-cleaned
    """)
REPO = textwrap.dedent("""\
    [OS]
    name=OS
    baseurl=http://repo.openeuler.org/openEuler-22.03-LTS-SP4/OS/$basearch/
    metalink=https://mirrors.openeuler.org/metalink?repo=$releasever/OS&arch=$basearch
    enabled=1
    [debuginfo]
    name=debuginfo
    baseurl=http://repo.openeuler.org/openEuler-22.03-LTS-SP4/debuginfo/$basearch/
    enabled=1
    """)


def test_post_cleans_an_image_and_reports_ok(tmp_path: Path) -> None:
    release = catalogue.resolve("22.03")
    firmware = render.FirmwarePaths(code=tmp_path / "code.fd", vars=tmp_path / "vars.fd")
    firmware.code.write_bytes(b"c")
    firmware.vars.write_bytes(b"v")
    recipe = render.render_recipe(
        release, "x86_64", Settings(), tmp_path / "out", accelerator="tcg", firmware=firmware
    )
    text = recipe.kickstart.read_text()
    post = text.split("%post --erroronfail --interpreter=/bin/bash --log=/dev/console\n", 1)[1]
    post = post.rsplit("%end", 1)[0]

    image = make_image_tree(
        tmp_path / "image",
        "x86_64",
        breaks=[
            "ssh-host-keys-present",
            "machine-id-not-empty",
            "root-password-set",
            "fstab-not-empty",
            "resolv-conf-not-empty",
            "network-config-present",
        ],
    )
    (image / "curtin").rename(tmp_path / "no-hook-yet")  # the %post writes it
    for path, content in {
        "etc/yum.repos.d/openEuler.repo": REPO,
        "root/anaconda-ks.cfg": "# kickstart\n",
        "var/log/anaconda/anaconda.log": "installer log\n",
        "var/log/messages": "build VM log\n",
        "etc/default/grub": "GRUB_ENABLE_BLSCFG=true\n",
    }.items():
        (image / path).parent.mkdir(parents=True, exist_ok=True)
        (image / path).write_text(content)
    stubs = image / "oeib-stubs"
    stubs.mkdir()
    for tool, body in STUBS.items():
        (stubs / tool).write_text(f'#!/bin/bash\necho "{tool} $*" >> /oeib-calls\n{body}\n')
        (stubs / tool).chmod(0o755)
    (image / "oeib-post.sh").write_text(post)
    (image / "oeib-checks.sh").write_text(CHECKS)
    # The image's merged-/usr symlinks would hide the host's /bin and /lib in the overlay.
    for name in ("bin", "sbin", "lib", "lib64"):
        (image / name).unlink()

    layer, upper, work, merged = (tmp_path / name for name in ("layer", "upper", "work", "merged"))
    for directory in (layer, upper, work, merged):
        directory.mkdir()
    # overlayfs refuses a lower layer inside another one (ELOOP): the image goes onto a tmpfs.
    script = textwrap.dedent(f"""\
        set -e
        mount -t tmpfs tmpfs {layer}
        cp -a {image}/. {layer}/
        mknod {layer}/usr/bin/dpkg-query c 0 0  # a whiteout: this Debian host's dpkg-query
        mount -t overlay overlay -o lowerdir={layer}:/,upperdir={upper},workdir={work} {merged}
        mount --rbind /dev {merged}/dev
        mount -t proc proc {merged}/proc
        mount -t tmpfs tmpfs {merged}/tmp  # the target's /tmp, not this host's
        touch {merged}/tmp/leftover
        chroot {merged} /usr/bin/env -i PATH=/oeib-stubs:/usr/sbin:/usr/bin:/sbin:/bin \\
            /bin/bash /oeib-post.sh
        echo "--- checks"
        chroot {merged} /bin/bash /oeib-checks.sh
        echo "--- calls"
        cat {merged}/oeib-calls
        """)
    completed = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = completed.stdout
    assert completed.returncode == 0, output + completed.stderr
    post_output, _, rest = output.partition("--- checks\n")
    checks, _, calls = rest.partition("--- calls\n")
    assert post_output.strip().splitlines()[-1] == "OEIB-POST: ok"
    assert "OEIB-CLOUDINIT: ok (stub)" in post_output
    assert checks.split() == [
        "machine-id-empty",
        "no-host-keys",
        "root-locked",
        "fstab-empty",
        "resolv-empty",
        "no-ifcfg",
        "lo-kept",
        "no-nm-connections",
        "hook-executable",
        "grub-defaults",
        "metalink-off",
        "baseurl-kept",
        "enabled=0",
        "no-anaconda-ks",
        "no-anaconda-logs",
        "logs-truncated",
        "fix-script-removed",
        "tmp-cleaned",
    ]
    assert "python3 /var/tmp/oeib-cloudinit-fix.py fix" in calls
    assert "systemctl enable cloud-init-local.service" in calls
    assert "usermod --password ! root" in calls
    assert (upper / "curtin/curtin-hooks").read_text() == recipe.curtin_hook.read_text()


def test_post_fails_loudly_with_two_kernels(tmp_path: Path) -> None:
    """A failing check prints OEIB-POST: FAILED with the reason and exits non-zero."""
    release = catalogue.resolve("24.03")
    firmware = render.FirmwarePaths(code=tmp_path / "code.fd", vars=tmp_path / "vars.fd")
    firmware.code.write_bytes(b"c")
    firmware.vars.write_bytes(b"v")
    recipe = render.render_recipe(
        release, "x86_64", Settings(), tmp_path / "out", accelerator="tcg", firmware=firmware
    )
    post = recipe.kickstart.read_text().split("--log=/dev/console\n", 1)[1].rsplit("%end", 1)[0]
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "rpm").write_text(
        '#!/bin/bash\ncase "$*" in *"-q kernel"*) echo kernel-a; echo kernel-b;; esac\n'
    )
    (stubs / "rpm").chmod(0o755)
    # Runs no further than the kernel check, which comes before anything that writes.
    head = (
        post.split("# cloud-init for MAAS", 1)[0]
        .replace("mkdir -p /curtin", f"mkdir -p {tmp_path}/curtin")
        .replace("> /curtin/", f"> {tmp_path}/curtin/")
        .replace("chmod 0755 /curtin/", f"chmod 0755 {tmp_path}/curtin/")
    )
    script = tmp_path / "head.sh"
    script.write_text(head)
    completed = subprocess.run(
        ["bash", str(script)],
        env={"PATH": f"{stubs}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 1
    assert completed.stdout.strip().splitlines()[-1] == (
        "OEIB-POST: FAILED: 2 kernel packages installed, curtin needs exactly one"
    )
