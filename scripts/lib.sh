# Shared helpers for the scripts in this directory (sourced, not run).
# shellcheck shell=bash

repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

# run_as_root NAME WHY SCRIPT ARG...: return when root; otherwise re-run SCRIPT with its arguments
# through sudo (keeping the proxy variables), or exit 2 saying how to run it when sudo is missing.
run_as_root() {
    local name=$1 why=$2 script=$3
    shift 3
    if [ "$(id -u)" -eq 0 ]; then return; fi
    if command -v sudo >/dev/null 2>&1; then
        exec sudo --preserve-env=http_proxy,https_proxy,no_proxy,HTTP_PROXY,HTTPS_PROXY,NO_PROXY \
            "$script" "$@"
    fi
    echo "$name: needs root ($why) and sudo is not installed: run it as root" >&2
    exit 2
}

# apt_install_lists FILE...: install the Debian/Ubuntu packages named in the files (comments and
# blank lines ignored), only those not installed yet.
apt_install_lists() {
    local wanted missing=()
    wanted=$(sed -e 's/#.*//' "$@" | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
    for pkg in $wanted; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
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
