# Shared helpers for the scripts in this directory (sourced, not run).
# shellcheck shell=bash

repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

# Variables a re-run through sudo keeps (sudo drops the caller's environment): proxies, package
# indexes, and the tool's own (MAAS connection for --upload, state directory, Packer path, the
# by-hand test sources).
KEEP_ENV=http_proxy,https_proxy,no_proxy,HTTP_PROXY,HTTPS_PROXY,NO_PROXY
KEEP_ENV+=,PIP_INDEX_URL,UV_INDEX_URL,UV_DEFAULT_INDEX
KEEP_ENV+=,MAAS_URL,MAAS_API_KEY,MAAS_API_KEY_FILE
KEEP_ENV+=,OPENEULER_IMAGE_BUILDER_STATE_DIR,OPENEULER_IMAGE_BUILDER_PACKER
KEEP_ENV+=,OEIB_CURTIN_SOURCES,OEIB_CURTIN_PYTHON,OEIB_CLOUDINIT_SOURCES

# run_as_root NAME WHY SCRIPT ARG...: return when root; otherwise re-run SCRIPT with its arguments
# through sudo (keeping KEEP_ENV), or exit 2 saying how to run it when sudo is missing.
run_as_root() {
    local name=$1 why=$2 script=$3
    shift 3
    if [ "$(id -u)" -eq 0 ]; then return; fi
    if command -v sudo >/dev/null 2>&1; then
        exec sudo --preserve-env="$KEEP_ENV" "$script" "$@"
    fi
    echo "$name: needs root ($why) and sudo is not installed: run it as root" >&2
    exit 2
}

# apt_install_lists FILE...: install the Debian/Ubuntu packages named in the files (comments and
# blank lines ignored), only those not installed yet. A package the archive does not offer (e.g.
# `packer`, which Debian 12 and Ubuntu 22.04 ship but later releases do not) is left out with a
# warning; the tests that need it skip and say why.
apt_install_lists() {
    local wanted missing=() absent=()
    wanted=$(sed -e 's/#.*//' "$@" | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
    for pkg in $wanted; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then return; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    local offered=()
    for pkg in "${missing[@]}"; do
        if apt-cache show "$pkg" >/dev/null 2>&1; then offered+=("$pkg"); else absent+=("$pkg"); fi
    done
    if [ "${#absent[@]}" -gt 0 ]; then
        echo "warning: not in this system's apt archive, left out: ${absent[*]}" >&2
    fi
    if [ "${#offered[@]}" -gt 0 ]; then
        echo "installing: ${offered[*]}" >&2
        apt-get install -y -q --no-install-recommends "${offered[@]}" >/dev/null
    fi
}

# ensure_uv: put uv on PATH (from PyPI into a private venv when missing).
ensure_uv() {
    if command -v uv >/dev/null 2>&1; then return; fi
    local root; root=$(repo_root)
    if [ ! -x "$root/.cache/bootstrap/bin/uv" ]; then
        python3 -m venv "$root/.cache/bootstrap"
        "$root/.cache/bootstrap/bin/pip" install -q uv
    fi
    export PATH="$root/.cache/bootstrap/bin:$PATH"
}
