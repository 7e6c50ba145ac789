#!/usr/bin/env bash
# The base image for burst's Dockerfile, made here because no image registry is reachable: a
# Debian bookworm root file system from debootstrap (minbase, with python3 and python3-venv),
# imported as burst-base:bookworm. Idempotent: an existing image is kept.
#
# Needs the engine .ci/setup-docker.sh starts; DOCKER names its CLI (default: docker).
set -euo pipefail

IMAGE=${BURST_BASE:-burst-base:bookworm}
DOCKER=${DOCKER:-docker}
MIRROR=${BURST_DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { echo "make-base-image: $*"; }

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE already present"
    exit 0
fi
if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap (apt)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
say "debootstrap bookworm into $root ($MIRROR)"
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log"; exit 1; }
rm -f "$root.log"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$DOCKER" import --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
say "imported $IMAGE ($(du -sh "$root" | cut -f1))"
