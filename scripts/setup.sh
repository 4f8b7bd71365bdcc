#!/usr/bin/env bash
# Idempotent set-up for nfsteer on Debian 12, run as root by `make demo` and `make test`:
# Debian packages, the virtual environment (with Mininet importable), OVS and Redis running.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(openvswitch-switch mininet redis-server redis-sentinel python3-venv python3-dev ethtool
              iproute2 iputils-ping procps psmisc)
# Tools the operators' kit is checked with: systemd-analyze (unit files), promtool (alert
# rules), tmux (the `nfsteer top` test). Installed without recommends: prometheus alone
# would pull in its node exporter.
TOOL_PACKAGES=(systemd prometheus tmux)
VENV=.venv
# A second, small environment with os-ken 3 (eventlet hub, osken-manager) to check that the
# app loads the classic Ryu way; nfsteer itself is on its path, not installed in it.
OSKEN3_VENV=.venv-osken3
OSKEN3_REQUIREMENT='os-ken>=3.1,<4'

log() { echo "setup: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root (Open vSwitch, Mininet and network namespaces need it)" >&2
    exit 1
fi

missing=()
for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

missing=()
for p in "${TOOL_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# Mininet lives in Debian's Python, so the venv is built on it with system site-packages.
if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    log "installing nfsteer and its dependencies into $VENV"
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q -e '.[test]'
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi

stamp="$OSKEN3_VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    log "creating $OSKEN3_VENV (os-ken 3, eventlet)"
    rm -rf "$OSKEN3_VENV"
    /usr/bin/python3 -m venv "$OSKEN3_VENV"
    # nfsteer's own dependencies, but os-ken 3 instead of the version pyproject.toml asks for.
    mapfile -t deps < <(/usr/bin/python3 -c '
import tomllib
for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    if not d.lower().startswith("os-ken"):
        print(d)')
    "$OSKEN3_VENV/bin/pip" install -q "$OSKEN3_REQUIREMENT" "${deps[@]}"
    site=$("$OSKEN3_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    pwd > "$site/nfsteer-source.pth"
    touch "$stamp"
fi

# Open vSwitch: userspace datapath only (no kernel module here); ovs-ctl skips modprobe.
if ! ovs-vsctl --timeout=3 show >/dev/null 2>&1; then
    log "starting Open vSwitch"
    /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random >/dev/null 2>&1 || true
    ovs-vsctl --timeout=10 show >/dev/null
fi

# Redis on loopback for the controller; tests start their own servers on free ports.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting Redis on 127.0.0.1:6379"
    redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' --appendonly no \
        --logfile /var/log/redis-nfsteer.log >/dev/null
    for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli ping >/dev/null
fi
log "ready (venv $VENV, OVS $(ovs-vsctl --version | head -1 | awk '{print $NF}'), Redis $(redis-server --version | awk '{print $3}'))"
