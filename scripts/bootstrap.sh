#!/usr/bin/env bash
# Install what ccfactory needs on this controller: host packages for the lab (when
# root on Debian/Ubuntu) and a virtualenv with ccfactory and its test extras.
# Idempotent: a second run only checks.  Usage: scripts/bootstrap.sh [--no-lab]
set -euo pipefail
cd "$(dirname "$0")/.."
want_lab=1
[[ "${1:-}" == "--no-lab" ]] && want_lab=0

log() { printf '[bootstrap %(%H:%M:%S)T] %s\n' -1 "$*"; }

if (( want_lab )); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "bootstrap: the lab needs root (systemd-nspawn, network namespaces); rerun with sudo, or pass --no-lab" >&2
    exit 2
  fi
  # one list, kept in ccfactory.lab.hostdeps (stdlib-only, importable before the venv exists)
  read -r -a pkgs <<<"$(PYTHONPATH=src python3 -c 'from ccfactory.lab.hostdeps import required_packages as r; print(" ".join(r()))') python3-venv ca-certificates"
  missing=()
  for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  if (( ${#missing[@]} )); then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    # apt-cacher-ng's postinst tries to start its own daemon; the lab runs a private one
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

py=${PYTHON:-python3}
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "bootstrap: Python >= 3.11 needed ($py)" >&2; exit 2; }
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  "$py" -m venv .venv
fi
stamp=.venv/.ccfactory-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  log "pip install -e .[test,lab]"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,lab]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c 'import ccfactory, pyinfra, sushy, testinfra'
  .venv/bin/ruff --version >/dev/null
  touch "$stamp"
fi
log "ready: .venv/bin/ccfactory, .venv/bin/pyinfra, .venv/bin/pytest"
