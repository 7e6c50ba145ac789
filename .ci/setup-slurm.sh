#!/usr/bin/env bash
# A one-node Slurm for tests/test_deploy.py's run of deploy/slurm: installs Debian's slurm-wlm and
# munge if missing, writes /etc/slurm/slurm.conf from .ci/slurm.conf (this machine's CPUs), and
# starts munged, slurmctld and slurmd unless they already answer. Idempotent; run as root.
set -euo pipefail
cd "$(dirname "$0")"

say() { echo "setup-slurm: $*"; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge (apt)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
fi
if timeout 10 sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    say "slurm already answering: $(sinfo -h -o '%N %c CPUs %T')"
    exit 0
fi

mkdir -p /etc/slurm /tmp/burst-slurm/state /tmp/burst-slurm/spool /run/munge /var/log/munge
sed "s/^NodeName=localhost NodeAddr=127.0.0.1 CPUs=[0-9]*/NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc)/" \
    slurm.conf >/etc/slurm/slurm.conf
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
if ! munge -n </dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --force
fi
pgrep -x slurmctld >/dev/null || { say "starting slurmctld"; /usr/sbin/slurmctld -c; }
pgrep -x slurmd >/dev/null || { say "starting slurmd"; /usr/sbin/slurmd; }
for _ in $(seq 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        say "ready: $(sinfo -h -o '%N %c CPUs %T')"
        exit 0
    fi
    sleep 1
done
say "error: slurm did not come up; logs:" >&2
tail -n 20 /tmp/burst-slurm/*.log >&2
exit 1
