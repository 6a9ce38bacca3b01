#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the SLURM tests and for trying `hydra/launcher=slurm` on a workstation.
#   bash scripts/slurm-local.sh up      install slurm/munge if missing (Debian, as root), start munged, slurmctld and
#                                       slurmd, wait until the node is idle, print the line that points clients at it
#   bash scripts/slurm-local.sh down    stop the daemons this script started (nothing else)
#   bash scripts/slurm-local.sh env     that line again: eval "$(bash scripts/slurm-local.sh env)"
# Everything (config, key, state, logs, pid files) lives in $FOCALNET_SLURM_DIR (default /tmp/focalnet-slurm); the
# system's /etc/slurm and /etc/munge are left alone. The daemons run as root: one user on one machine, no isolation.
# FOCALNET_SLURM_CPUS sets the node's CPU count (default: this machine's); more than the machine has oversubscribes.
set -euo pipefail

DIR=${FOCALNET_SLURM_DIR:-/tmp/focalnet-slurm}
CONF=$DIR/slurm.conf
SOCKET=$DIR/munge/munge.socket

say() { echo "slurm-local: $*" >&2; }
die() { say "$*"; exit 1; }

install_packages() {
    local missing=()
    for cmd in munged mungekey slurmctld slurmd sinfo sbatch; do
        command -v "$cmd" >/dev/null || PATH=$PATH:/usr/sbin command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    [ ${#missing[@]} -eq 0 ] && return
    command -v apt-get >/dev/null ||
        die "missing ${missing[*]}: install SLURM (slurmctld, slurmd, client) and munge with your package manager"
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: run as root to apt-get install them, or install them yourself"
    say "installing slurmctld slurmd slurm-client munge (apt-get)"
    # The package index may be absent on a fresh machine: update once, only when the install fails without it.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge \
        >"$DIR/apt.log" 2>&1 || {
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$DIR/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client \
            munge >>"$DIR/apt.log" 2>&1 || die "apt-get install failed: see $DIR/apt.log"
    }
}

write_config() {
    local host cpus mem
    host=$(hostname -s)
    cpus=${FOCALNET_SLURM_CPUS:-$(nproc)}
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    mkdir -p "$DIR/state" "$DIR/spool"
    # proctrack/linuxproc and task/none: no cgroups, which containers seldom allow. No accounting database (slurmdbd):
    # sacct has nothing to report, so the launcher's job states come from submitit's own files (see docs/slurm.md).
    # config_overrides: the node may declare more CPUs than it has, to run more one-CPU jobs side by side.
    # cred_expire: a requeued job may start again once its old credentials expire (SLURM's default: 120 s); then
    # sched_interval: the scheduler looks at it within seconds, not a minute.
    cat >"$CONF" <<EOF
ClusterName=focalnet-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    mkdir -p "$DIR/munge"
    [ -f "$DIR/munge/munge.key" ] || mungekey -c -k "$DIR/munge/munge.key" >/dev/null
    chown -R munge:munge "$DIR/munge" && chmod 755 "$DIR/munge" && chmod 600 "$DIR/munge/munge.key"
    # munged wants a socket folder that every user can enter and only the munge user can write.
    runuser -u munge -- munged --socket="$SOCKET" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
}

up() {
    mkdir -p "$DIR"
    [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null && {
        say "already up ($CONF)"; echo "export SLURM_CONF=$CONF"; return; }
    [ "$(id -u)" -eq 0 ] || die "the daemons run as root here: run as root (or use a real cluster)"
    install_packages
    export PATH=$PATH:/usr/sbin SLURM_CONF=$CONF
    write_config
    start_munge
    slurmctld -f "$CONF"
    slurmd -f "$CONF"
    for _ in $(seq 60); do
        if [ "$(sinfo -h -o %t 2>/dev/null)" = idle ]; then
            say "up: $(sinfo -h -o '%P %D node, %c CPUs, %t')"
            echo "export SLURM_CONF=$CONF"
            return
        fi
        sleep 0.5
    done
    die "the node did not become idle within 30 s: see $DIR/slurmctld.log and $DIR/slurmd.log"
}

down() {
    # Only the daemons whose pid files this script wrote; jobs still running die with slurmd.
    for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$pidfile"
    done
    say "down"
}

case ${1:-} in
    up) up ;;
    down) down ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: bash scripts/slurm-local.sh up|down|env" ;;
esac
