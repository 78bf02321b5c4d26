"""Run the cloud-init probe/fix against a real cloud-init in an openEuler-shaped chroot.

The chroot is an overlay of this host's root (its Python and Debian's python3-yaml, -jinja2,
-configobj, -jsonschema, -jsonpatch, -oauthlib, -requests, -netifaces, -six, -serial) with what
cloud-init looks at on openEuler laid over it: ``/etc/os-release`` with ``ID="openEuler"``,
``/etc/cloud/cloud.cfg`` rendered from that cloud-init's own ``config/cloud.cfg.tmpl`` for
the variant, its templates, NetworkManager enabled with the ifcfg-rh plugin, and, if asked,
the legacy network-scripts. The cloud-init source goes to ``/opt/cloud-init`` (``PYTHONPATH``).
Everything runs inside ``unshare --mount`` so no mount outlives the run.

Needs root, overlayfs and ``unshare``; ``available()`` says whether this host has them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

OS_RELEASE = 'NAME="openEuler"\nVERSION="{version}"\nID="openEuler"\nVERSION_ID="{version_id}"\n'
NM_VERSION = "1.32.12-1.oe2203sp4"


def available() -> str | None:
    """None when real-cloud-init runs can work here, else why not."""
    if os.geteuid() != 0:
        return "needs root (overlay mount and chroot)"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "needs overlayfs"
    missing = []
    for module in ("yaml", "jinja2", "configobj", "jsonschema", "jsonpatch", "oauthlib"):
        probe = subprocess.run(
            ["/usr/bin/python3", "-c", f"import {module}"],
            check=False,
            capture_output=True,
            timeout=60,
        )
        if probe.returncode:
            missing.append(module)
    if missing:
        return "system python3 lacks " + ", ".join(missing)
    return None


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _render_cloud_cfg(source: Path, variant: str) -> str:
    """cloud.cfg as that cloud-init's packaging renders it for ``variant``."""
    tool = source / "tools" / "render-cloudcfg"
    if not tool.exists():  # 23.x and later
        tool = source / "tools" / "render-template"
    completed = subprocess.run(
        [
            "/usr/bin/python3",
            str(tool),
            "--variant",
            variant,
            str(source / "config" / "cloud.cfg.tmpl"),
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode == 0:
        return completed.stdout
    # cloud-init 19.4's templater needs jinja2 < 3 (jinja2.runtime.implements_to_string); the
    # template itself is plain jinja2.
    import jinja2

    text = (source / "config" / "cloud.cfg.tmpl").read_text()
    body = text.split("\n", 1)[1] if text.startswith("## template:") else text
    return jinja2.Template(body).render(variant=variant)


def build_upper(
    upper: Path,
    source: Path,
    fix_script: Path,
    *,
    variant: str,
    legacy_network_scripts: bool = False,
) -> None:
    """Lay openEuler's network-relevant files into the overlay's upper directory."""
    _write(
        upper / "etc/os-release", OS_RELEASE.format(version="22.03 (LTS-SP4)", version_id="22.03")
    )
    _write(upper / "etc/cloud/cloud.cfg", _render_cloud_cfg(source, variant))
    (upper / "etc/cloud/cloud.cfg.d").mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "templates", upper / "etc/cloud/templates")
    shutil.copytree(source / "cloudinit", upper / "opt/cloud-init/cloudinit")
    _write(upper / "usr/sbin/NetworkManager", "#!/bin/sh\n", 0o755)
    _write(upper / "usr/bin/nmcli", "#!/bin/sh\n", 0o755)
    _write(
        upper / "usr/lib/systemd/system/NetworkManager.service",
        "[Unit]\nDescription=Network Manager\n[Service]\nExecStart=/usr/sbin/NetworkManager\n"
        "[Install]\nWantedBy=multi-user.target\n",
    )
    wants = upper / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "NetworkManager.service").symlink_to("/usr/lib/systemd/system/NetworkManager.service")
    _write(upper / "etc/NetworkManager/NetworkManager.conf", "[main]\n#plugins=ifcfg-rh\n")
    _write(upper / f"usr/lib64/NetworkManager/{NM_VERSION}/libnm-settings-plugin-ifcfg-rh.so", "")
    (upper / "etc/sysconfig/network-scripts").mkdir(parents=True, exist_ok=True)
    if legacy_network_scripts:
        for name in ("ifup", "ifdown"):
            _write(upper / "usr/sbin" / name, "#!/bin/sh\n", 0o755)
        for name in ("network-functions", "ifup-eth", "ifdown-eth"):
            _write(upper / "etc/sysconfig/network-scripts" / name, "#!/bin/sh\n", 0o755)
        _write(upper / "etc/rc.d/init.d/network", "#!/bin/sh\n", 0o755)
        _write(upper / "etc/sysconfig/network", "NETWORKING=yes\n")
    (upper / "var/tmp").mkdir(parents=True, exist_ok=True)
    shutil.copy2(fix_script, upper / "var/tmp/oeib-cloudinit-fix.py")


def run(
    source: Path,
    fix_script: Path,
    work: Path,
    *,
    variant: str,
    legacy_network_scripts: bool = False,
    action: str = "fix",
    timeout: float = 600,
) -> dict[str, Any]:
    """Run the fix (or probe) in the chroot; return its JSON report plus ``returncode``,
    ``output`` and the patched ``sysconfig.py`` tail (``sysconfig_tail``)."""
    if work.exists():
        shutil.rmtree(work)
    upper, lower_work, merged = work / "upper", work / "work", work / "merged"
    for directory in (upper, lower_work, merged):
        directory.mkdir(parents=True)
    build_upper(
        upper, source, fix_script, variant=variant, legacy_network_scripts=legacy_network_scripts
    )
    script = textwrap.dedent(f"""\
        set -e
        mount -t overlay overlay -o lowerdir=/,upperdir={upper},workdir={lower_work} {merged}
        mount --rbind /proc {merged}/proc
        mount --rbind /dev {merged}/dev
        chroot {merged} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \\
            PYTHONPATH=/opt/cloud-init LANG=C.UTF-8 \\
            /usr/bin/python3 /var/tmp/oeib-cloudinit-fix.py {action} --json
        """)
    completed = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    stdout = completed.stdout
    start = stdout.find("{")
    report: dict[str, Any] = json.loads(stdout[start:]) if start >= 0 else {}
    report["returncode"] = completed.returncode
    report["output"] = stdout[:start] if start >= 0 else stdout
    report["stderr"] = completed.stderr
    patched = upper / "opt/cloud-init/cloudinit/net/sysconfig.py"
    report["sysconfig_tail"] = patched.read_text()[-1500:] if patched.exists() else ""
    dropin = upper / "etc/cloud/cloud.cfg.d/06_openeuler-image-builder-network.cfg"
    report["renderer_dropin"] = dropin.read_text() if dropin.exists() else None
    return report
