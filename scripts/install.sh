#!/usr/bin/env bash
# Lay down nfsteer's systemd units, their configuration and secrets, and the Grafana dashboard
# and Prometheus rules (`make install`). Run from a checkout after `make setup`; the units run
# this checkout's .venv/bin/nfsteer unless NFSTEER_BIN names another.
#
#   DESTDIR      staging root, prepended to every path written (default: none)
#   PREFIX       for share/nfsteer: dashboards, rules, examples (default /usr/local)
#   SYSCONFDIR   configuration and secrets under SYSCONFDIR/nfsteer (default /etc)
#   UNITDIR      systemd units (default /etc/systemd/system)
#   NFSTEER_BIN  the nfsteer command the units run
#
# Existing configuration and secrets are kept; units, dashboards and rules are replaced.
set -euo pipefail
cd "$(dirname "$0")/.."

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-/etc/systemd/system}
NFSTEER_BIN=${NFSTEER_BIN:-$PWD/.venv/bin/nfsteer}

log() { echo "install: $*"; }
die() { echo "install: $*" >&2; exit 1; }

[ -x "$NFSTEER_BIN" ] || die "$NFSTEER_BIN is not executable (run make setup, or set NFSTEER_BIN)"
case "$NFSTEER_BIN" in /*) ;; *) die "NFSTEER_BIN must be an absolute path" ;; esac

etc="$DESTDIR$SYSCONFDIR/nfsteer"
share="$DESTDIR$PREFIX/share/nfsteer"

# A template with @NFSTEER@ and @SYSCONFDIR@ filled in, written with the given mode.
render() {  # render SOURCE DEST MODE
    local tmp
    tmp=$(mktemp "$2.XXXXXX")
    sed -e "s|@NFSTEER@|$NFSTEER_BIN|g" -e "s|@SYSCONFDIR@|$SYSCONFDIR|g" "$1" > "$tmp"
    chmod "$3" "$tmp"
    mv "$tmp" "$2"
}

# Configuration that an operator edits: written once, never overwritten.
render_once() {  # render_once SOURCE DEST MODE
    if [ -e "$2" ]; then
        log "keeping $2"
    else
        render "$@"
    fi
}

install -d -m 0755 "$DESTDIR$UNITDIR" "$etc" "$share/grafana" "$share/prometheus" \
    "$share/examples" "$share/topologies"
install -d -m 0700 "$etc/secrets" "$etc/nf"
install -d -m 0750 "$etc/redis" "$etc/sentinel"
if getent group redis >/dev/null && [ "$(id -u)" -eq 0 ]; then
    # redis-server reads its configuration, Sentinel also rewrites its own.
    chgrp redis "$etc/redis"
    chown redis:redis "$etc/sentinel"
fi

for unit in deploy/systemd/*.service; do
    render "$unit" "$DESTDIR$UNITDIR/$(basename "$unit")" 0644
done
render_once deploy/etc/controller.env "$etc/controller.env" 0644

# Secrets, readable by root only; systemd hands them to the services.
umask 077
if [ ! -e "$etc/secrets/api-token" ]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$etc/secrets/api-token"
    log "generated $etc/secrets/api-token"
fi
if [ ! -e "$etc/secrets/redis-url" ]; then
    echo "redis://127.0.0.1:6379/0" > "$etc/secrets/redis-url"
fi
chmod 0600 "$etc/secrets/api-token" "$etc/secrets/redis-url"
umask 022

for example in deploy/etc/*.example; do
    render "$example" "$share/examples/$(basename "$example")" 0644
done
install -m 0644 deploy/grafana/nfsteer.json "$share/grafana/"
install -m 0644 deploy/prometheus/nfsteer-rules.yml deploy/prometheus/scrape.yml "$share/prometheus/"
install -m 0644 topologies/*.yaml "$share/topologies/"

log "units in $DESTDIR$UNITDIR, configuration in $etc, dashboards and rules in $share"
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
