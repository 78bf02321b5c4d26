"""The rendered kickstart: pykickstart validation per release, content, embedded files."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from pykickstart.constants import KS_MISSING_PROMPT, KS_SCRIPT_POST, KS_SHUTDOWN
from pykickstart.parser import KickstartParser
from pykickstart.version import makeVersion, stringToVersion

from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.paths import templates_dir
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.pipeline import render

CASES = [(release, arch) for release in catalogue.RELEASES for arch in release.architectures]
SETTINGS = {
    "defaults": Settings(),
    "no-updates-extra-packages": Settings(include_updates=False, extra_packages=("tmux", "vim")),
    "proxy": Settings(mirror_url="http://mirror.example/openeuler/"),
}


def render_kickstart(
    tmp_path: Path,
    release: catalogue.Release,
    arch: catalogue.Arch,
    settings: Settings,
    http_proxy: str | None = None,
) -> tuple[render.RenderedRecipe, str]:
    firmware = render.FirmwarePaths(code=tmp_path / "code.fd", vars=tmp_path / "vars.fd")
    firmware.code.write_bytes(b"c" * 1024)
    firmware.vars.write_bytes(b"v" * 512)
    recipe = render.render_recipe(
        release,
        arch,
        settings,
        tmp_path / "out",
        accelerator="tcg",
        firmware=firmware,
        http_proxy=http_proxy,
    )
    return recipe, recipe.kickstart.read_text()


def parse(text: str, version: str, tmp_path: Path) -> KickstartParser:
    """Parse with the pykickstart handler the release's anaconda uses; warnings are errors."""
    path = tmp_path / "parse.ks"
    path.write_text(text)
    handler_version = stringToVersion(version)
    parser = KickstartParser(makeVersion(handler_version), errorsAreFatal=True)
    parser.readKickstart(str(path))
    return parser


def heredoc(text: str, delimiter: str, path: str) -> str:
    """The body of ``cat > PATH <<'DELIMITER'`` ... ``DELIMITER`` in the kickstart."""
    match = re.search(
        rf"^cat > {re.escape(path)} <<'{delimiter}'\n(.*?)^{delimiter}$", text, re.S | re.M
    )
    assert match, f"no heredoc {delimiter} for {path}"
    return match.group(1)


@pytest.mark.parametrize("settings_name", sorted(SETTINGS))
@pytest.mark.parametrize(("release", "arch"), CASES, ids=lambda v: getattr(v, "name", v))
def test_kickstart_validates_with_the_release_pykickstart_handler(
    tmp_path: Path, release: catalogue.Release, arch: catalogue.Arch, settings_name: str
) -> None:
    proxy = "http://proxy.example:3128" if settings_name == "proxy" else None
    _, text = render_kickstart(tmp_path, release, arch, SETTINGS[settings_name], proxy)
    parser = parse(text, release.kickstart_version, tmp_path)
    handler = parser.handler
    packages = handler.packages
    assert "core" in packages.groupList[0].name
    assert packages.packageList.count("kernel") == 1
    assert packages.handleMissing == KS_MISSING_PROMPT  # a missing package fails the install
    assert "plymouth" in packages.excludedList
    for name in render.ARCH_PACKAGES[arch]:
        assert name in packages.packageList
    for name in SETTINGS[settings_name].extra_packages:
        assert name in packages.packageList
    assert handler.rootpw.lock
    assert not handler.rootpw.password
    assert handler.reboot.action == KS_SHUTDOWN  # poweroff: Packer waits for the VM to stop
    assert handler.bootloader.disabled
    assert handler.method.method == "cdrom"
    assert handler.zerombr.zerombr
    assert [p.mountpoint for p in handler.partition.partitions] == ["/"]
    assert handler.partition.partitions[0].fstype == "ext4"
    assert handler.partition.partitions[0].grow
    assert handler.ignoredisk.onlyuse == ["vda"]
    assert handler.eula.agreed
    posts = [script for script in handler.scripts if script.type == KS_SCRIPT_POST]
    assert len(posts) == 1
    assert posts[0].errorOnFail
    assert posts[0].interp == "/bin/bash"
    repos = {repo.name: repo for repo in handler.repo.repoList}
    if SETTINGS[settings_name].include_updates:
        update = repos["oeib-updates"]
        assert update.baseurl == release.update_repo_url(arch, SETTINGS[settings_name].mirror_url)
        assert update.proxy == (proxy or "")
    else:
        assert repos == {}


def test_handlers_match_each_anaconda_generation() -> None:
    # anaconda 33.19 (20.03, 22.03 GA) parses with pykickstart's DEVEL: F33 in 3.27, F35 in 3.34;
    # anaconda 36.16.5 (22.03 SP1 and later, 24.03) pins F36.
    versions = {release.name: release.kickstart_version for release in catalogue.RELEASES}
    assert {versions[name] for name in versions if name.startswith("20.03")} == {"F33"}
    assert versions["22.03-LTS"] == "F35"
    assert {versions[name] for name in versions if name.startswith(("22.03-LTS-SP", "24.03"))} == {
        "F36"
    }


@pytest.mark.parametrize(("release", "arch"), CASES, ids=lambda v: getattr(v, "name", v))
def test_embedded_files_are_byte_identical(
    tmp_path: Path, release: catalogue.Release, arch: catalogue.Arch
) -> None:
    recipe, text = render_kickstart(tmp_path, release, arch, Settings())
    hook = heredoc(text, "OEIB_CURTIN_HOOKS_EOF", "/curtin/curtin-hooks")
    assert hook == recipe.curtin_hook.read_text()
    fix = heredoc(text, "OEIB_CLOUDINIT_FIX_EOF", "/var/tmp/oeib-cloudinit-fix.py")
    assert fix == (templates_dir() / "cloudinit" / "oeib-cloudinit-fix.py").read_text()
    cloud_cfg = yaml.safe_load(
        heredoc(
            text, "OEIB_CLOUD_CFG_EOF", "/etc/cloud/cloud.cfg.d/05_openeuler-image-builder.cfg"
        )
    )
    user = cloud_cfg["system_info"]["default_user"]
    assert user["name"] == release.default_user
    assert user["lock_passwd"] is True
    assert user["sudo"] == ["ALL=(ALL) NOPASSWD:ALL"]
    assert "wheel" in user["groups"]
    assert cloud_cfg["ssh_pwauth"] is False
    assert cloud_cfg["datasource_list"][0] == "MAAS"


def test_post_script_is_valid_bash(tmp_path: Path) -> None:
    _, text = render_kickstart(tmp_path, catalogue.resolve("24.03"), "x86_64", Settings())
    post = text.split("%post --erroronfail --interpreter=/bin/bash --log=/dev/console\n", 1)[1]
    post = post.rsplit("%end", 1)[0]
    script = tmp_path / "post.sh"
    script.write_text(post)
    checked = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert checked.returncode == 0, checked.stderr


def test_post_script_removes_host_identity_and_locks_root(tmp_path: Path) -> None:
    _, text = render_kickstart(tmp_path, catalogue.resolve("22.03"), "x86_64", Settings())
    post = text.split("%post", 1)[1]
    for line in (
        "truncate -s 0 /etc/machine-id",
        "rm -f /etc/ssh/ssh_host_*",
        "truncate -s 0 /etc/fstab",
        "usermod --password '!' root",
        "rm -f /root/anaconda-ks.cfg /root/original-ks.cfg /root/.bash_history",
        "GRUB_ENABLE_BLSCFG=false",
        'GRUB_CMDLINE_LINUX="cgroup_disable=files apparmor=0"',
        'echo "OEIB-POST: ok"',
    ):
        assert line in post
    assert post.index("python3 /var/tmp/oeib-cloudinit-fix.py fix") < post.index("OEIB-POST: ok")


def test_installed_kernel_arguments_follow_anaconda_product_config() -> None:
    assert render.installed_kernel_args(catalogue.resolve("20.03")) == ""
    assert render.installed_kernel_args(catalogue.resolve("22.03-LTS-SP1")) == ""
    assert render.installed_kernel_args(catalogue.resolve("22.03-LTS-SP2")) != ""
    assert render.installed_kernel_args(catalogue.resolve("24.03-LTS")) != ""
