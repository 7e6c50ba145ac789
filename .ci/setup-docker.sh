#!/usr/bin/env bash
# A Docker engine for the docker-job tests, with no registry: install Debian's docker.io and
# busybox-static if the engine is missing, start dockerd if it is not answering, and import the
# image burst-busybox:latest from a root filesystem built around the static busybox.
#
# Idempotent: a second run finds the engine answering and the image present, and only checks them.
# Run as root (or with sudo available). Prints what it did; the last lines give the docker CLI to
# use (DOCKER=...) and the dockerd flags in effect.
#
# Environment:
#   BURST_DOCKERD_FLAGS  flags for dockerd (e.g. "--iptables=false --bridge=none"); default: try
#                        plain dockerd first, then fall back to no bridge/iptables, then also vfs.
#   BURST_DOCKERD_LOG    dockerd's log file (default /tmp/burst-dockerd.log).
#
# The docker CLI: a newer client found first on PATH (e.g. /usr/local/bin/docker 28.x) talks to
# Debian's 20.10 engine by API version negotiation (the client downgrades to the engine's API
# 1.41). The script checks that: the first CLI that reaches the engine wins, PATH's `docker`
# first, then Debian's /usr/bin/docker. It prints that CLI as DOCKER=... (tests/docker_engine.py
# looks for a working CLI the same way, and honours $DOCKER).
set -euo pipefail

IMAGE=burst-busybox:latest
LOG=${BURST_DOCKERD_LOG:-/tmp/burst-dockerd.log}
WAIT_S=60

say() { echo "setup-docker: $*"; }
die() {
    echo "setup-docker: error: $*" >&2
    exit 1
}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "run as root (or install sudo)"
    SUDO=(sudo)
fi

# --- 1. packages -------------------------------------------------------------------------------
dockerd_bin() { command -v dockerd || { [ -x /usr/sbin/dockerd ] && echo /usr/sbin/dockerd; }; }
busybox_static_installed() {
    [ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" = "install ok installed" ]
}

if [ -z "$(dockerd_bin)" ] || ! busybox_static_installed; then
    say "installing docker.io and busybox-static (apt)"
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io busybox-static
else
    say "dockerd ($(dockerd_bin)) and busybox-static already installed"
fi
DOCKERD=$(dockerd_bin) || die "dockerd not found after installing docker.io"
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing (busybox-static)"

# --- 2. the docker CLI -------------------------------------------------------------------------
candidates=()
if p=$(command -v docker); then candidates+=("$p"); fi
[ -x /usr/bin/docker ] && candidates+=(/usr/bin/docker)

# The first candidate CLI that reaches the engine (both sides' API versions agree), or nothing.
find_cli() {
    local c
    for c in "${candidates[@]}"; do
        if timeout 10 "${SUDO[@]}" "$c" version --format '{{.Server.APIVersion}}' >/dev/null 2>&1; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

wait_engine() {
    local deadline=$((SECONDS + WAIT_S))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if DOCKER=$(find_cli); then return 0; fi
        # dockerd died (bad flags): no point waiting the full time
        if [ -n "${1:-}" ] && ! "${SUDO[@]}" kill -0 "$1" 2>/dev/null; then return 1; fi
        sleep 1
    done
    return 1
}

stop_our_dockerd() {
    local pid=$1
    "${SUDO[@]}" kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 60); do
        "${SUDO[@]}" kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    "${SUDO[@]}" kill -KILL "$pid" 2>/dev/null || true
}

# --- 3. the image ------------------------------------------------------------------------------
image_present() { "${SUDO[@]}" "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; }

import_image() {
    local root
    root=$(mktemp -d)
    # What `busybox --install -s` does, without chroot: a symlink per applet at its usual path
    # (bin/sh, bin/sleep, usr/bin/env, sbin/ip...), all pointing at /bin/busybox.
    mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/etc" "$root/root" \
        "$root/tmp" "$root/proc" "$root/sys" "$root/dev"
    chmod 1777 "$root/tmp"
    cp "$BUSYBOX" "$root/bin/busybox"
    local applet
    while read -r applet; do
        [ "$applet" = bin/busybox ] || [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
    done < <("$BUSYBOX" --list-full)
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
        >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    if ! tar -C "$root" -c . | "${SUDO[@]}" "$DOCKER" import --change 'CMD ["sh"]' - "$IMAGE" >/dev/null; then
        rm -rf "$root"
        return 1
    fi
    rm -rf "$root"
    say "imported $IMAGE from $BUSYBOX ($("$BUSYBOX" --list | wc -l) applets)"
}

# Image present (or imported now) and a container runs with the daemon's defaults (no flags).
ready() {
    image_present || import_image || return 1
    [ "$(timeout 60 "${SUDO[@]}" "$DOCKER" run --rm "$IMAGE" echo hi 2>>"$LOG")" = hi ]
}

# --- 4. the engine -----------------------------------------------------------------------------
FLAGS="(not started by this script)"
if DOCKER=$(find_cli); then
    say "engine already answering"
    ready || die "the running engine cannot run $IMAGE (see its log; $LOG if this script started it)"
    [ -f /tmp/burst-dockerd.flags ] && FLAGS=$(cat /tmp/burst-dockerd.flags)
else
    if pgrep -x dockerd >/dev/null; then
        say "dockerd is running but not answering yet: waiting up to ${WAIT_S} s"
        wait_engine || die "dockerd runs but does not answer; not touching a daemon this script did not start"
        ready || die "the running engine cannot run $IMAGE"
    else
        if [ -n "${BURST_DOCKERD_FLAGS+x}" ]; then
            flag_sets=("$BURST_DOCKERD_FLAGS")
        else
            # Plain dockerd (bridge network, iptables, overlay2) works on an ordinary VM or CI host.
            # Sandboxes without iptables/bridge support get a daemon without the bridge (containers
            # get loopback only, with or without --network none); and without overlayfs, vfs.
            flag_sets=("" "--iptables=false --bridge=none"
                "--iptables=false --bridge=none --storage-driver=vfs")
        fi
        started=""
        for flags in "${flag_sets[@]}"; do
            say "starting $DOCKERD ${flags:-(no flags)}; log: $LOG"
            echo "=== $(date -u +%FT%TZ) $DOCKERD $flags" | "${SUDO[@]}" tee -a "$LOG" >/dev/null
            # setsid: the daemon outlives this script and its process group
            # shellcheck disable=SC2086 # flags are words
            "${SUDO[@]}" setsid "$DOCKERD" $flags </dev/null >>"$LOG" 2>&1 &
            pid=$! # dockerd itself (setsid execs it), or sudo, which forwards signals to it
            if wait_engine "$pid" && ready; then
                started=yes
                FLAGS=${flags:-(none)}
                echo "$FLAGS" | "${SUDO[@]}" tee /tmp/burst-dockerd.flags >/dev/null
                break
            fi
            say "dockerd ${flags:-(no flags)} did not work; last log lines:"
            tail -n 5 "$LOG" | sed 's/^/    /'
            stop_our_dockerd "$pid"
        done
        [ -n "$started" ] || die "no dockerd configuration worked (see $LOG)"
    fi
fi

# --- 5. report ---------------------------------------------------------------------------------
out=$("${SUDO[@]}" "$DOCKER" run --rm "$IMAGE" echo hi)
[ "$out" = hi ] || die "docker run printed '$out', not 'hi'"
say "docker run --rm $IMAGE echo hi: $out"
say "engine $("${SUDO[@]}" "$DOCKER" version --format '{{.Server.Version}} (API {{.Server.APIVersion}})'), client $("${SUDO[@]}" "$DOCKER" version --format '{{.Client.Version}} (API {{.Client.APIVersion}})')"
say "storage driver: $("${SUDO[@]}" "$DOCKER" info --format '{{.Driver}}'); dockerd flags: $FLAGS"
echo "DOCKER=$DOCKER"
