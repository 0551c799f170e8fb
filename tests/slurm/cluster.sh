#!/usr/bin/env bash
# A real SLURM cluster on this host for the tests marked `slurm` (and for trying
# launcher=slurm / trainer=slurm by hand): munged, one slurmctld and two slurmd nodes
# (n1, n2, both at 127.0.0.1 on their own ports and spool folders), a CPU partition `debug`,
# no accounting. Everything lives in one folder ($SEGFLOW_SLURM_DIR, default
# /tmp/segflow-slurm); the system's own munge and SLURM set-up are not touched.
#
#   tests/slurm/cluster.sh install   # apt-get install slurm-wlm munge when missing (root)
#   tests/slurm/cluster.sh start     # start the daemons, wait until both nodes are idle
#   eval "$(tests/slurm/cluster.sh env)"   # SLURM_CONF (sbatch, squeue, sinfo) and MASTER_ADDR
#   tests/slurm/cluster.sh status    # sinfo of this cluster
#   tests/slurm/cluster.sh running   # exit status 0 when its slurmctld is up
#   tests/slurm/cluster.sh stop      # cancel its jobs, stop exactly the daemons it started
#
# Ports: $SEGFLOW_SLURM_PORT (default 16817) for slurmctld, the next two for n1 and n2.
# Each node offers $SEGFLOW_SLURM_CPUS CPUs (default 2) and 2000 MB (the jobs ask for less).
set -euo pipefail

DIR=${SEGFLOW_SLURM_DIR:-/tmp/segflow-slurm}
PORT=${SEGFLOW_SLURM_PORT:-16817}
CPUS=${SEGFLOW_SLURM_CPUS:-2}
NODES=(n1 n2)
CONF=$DIR/slurm.conf
SOCKET=$DIR/munge/munge.socket
export SLURM_CONF=$CONF

die() { echo "cluster.sh: $*" >&2; exit 1; }

have_slurm() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null
}

cmd_install() {
    if have_slurm; then return 0; fi
    [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and installing them needs root"
    command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    have_slurm || die "apt-get installed slurm-wlm and munge, but slurmctld/slurmd/munged are not on PATH"
}

# The pid in a pid file when that process is alive and is the named program.
live_pid() {
    local file=$1 prog=$2 pid
    [ -f "$file" ] || return 1
    pid=$(tr -dc 0-9 <"$file")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$prog" ] || return 1
    echo "$pid"
}

write_conf() {
    local host i
    host=$(hostname -s)
    cat >"$CONF" <<EOF
ClusterName=segflow
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCKET,cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# A requeued job may start again after cred_expire (s); the scheduler looks every 2 s.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmdTimeout=30
SlurmctldTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=600
MessageTimeout=20
EOF
    for i in "${!NODES[@]}"; do
        echo "NodeName=${NODES[$i]} NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + 1 + i)) CPUs=$CPUS RealMemory=2000 State=UNKNOWN" >>"$CONF"
    done
    echo "PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP" >>"$CONF"
}

start_munge() {
    if live_pid "$DIR/munge/munged.pid" munged >/dev/null; then return 0; fi
    mkdir -p "$DIR/munge"
    chmod 0700 "$DIR/munge"
    [ -s "$DIR/munge/munge.key" ] || { head -c 1024 /dev/urandom >"$DIR/munge/munge.key"; chmod 0600 "$DIR/munge/munge.key"; }
    munged --force --socket="$SOCKET" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed" \
        || die "munged did not start: $(tail -n 3 "$DIR/munge/munged.log" 2>/dev/null)"
}

cmd_start() {
    have_slurm || die "slurm-wlm and munge are not installed (run: $0 install)"
    mkdir -p "$DIR"/{ctld,run,log} "${NODES[@]/#/$DIR/spool/}"
    chmod 0755 "$DIR"
    write_conf
    start_munge
    if ! live_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
        # A fresh controller: no jobs or node states of an earlier cluster in this folder.
        rm -rf "${DIR:?}"/ctld/* "${DIR:?}"/spool/*/*
        slurmctld -i -f "$CONF" || die "slurmctld did not start: $(tail -n 3 "$DIR/log/slurmctld.log" 2>/dev/null)"
    fi
    local node
    for node in "${NODES[@]}"; do
        if ! live_pid "$DIR/run/slurmd-$node.pid" slurmd >/dev/null; then
            slurmd -N "$node" -f "$CONF" || die "slurmd -N $node did not start: $(tail -n 3 "$DIR/log/slurmd-$node.log" 2>/dev/null)"
        fi
    done
    local deadline=$((SECONDS + ${SEGFLOW_SLURM_START_TIMEOUT:-60})) idle
    while :; do
        idle=$(sinfo -h -N -p debug -t idle -o '%N' 2>/dev/null | sort -u | tr '\n' ' ')
        [ "$idle" = "${NODES[*]} " ] && break
        if [ $SECONDS -ge $deadline ]; then
            die "the nodes did not become idle: $(sinfo -N -h -o '%N %T' 2>&1 | tr '\n' ';') (logs: $DIR/log)"
        fi
        sleep 1
    done
    echo "SLURM cluster up: partition debug, nodes ${NODES[*]} idle; SLURM_CONF=$CONF"
}

cmd_stop() {
    if live_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
        # Jobs first, so that no job step outlives its slurmd.
        scancel --quiet --partition=debug 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ $SECONDS -lt $deadline ]; do sleep 1; done
    fi
    local entry file prog pid pids=() node
    local daemons=("$DIR/run/slurmctld.pid:slurmctld" "$DIR/munge/munged.pid:munged")
    for node in "${NODES[@]}"; do daemons=("$DIR/run/slurmd-$node.pid:slurmd" "${daemons[@]}"); done
    for entry in "${daemons[@]}"; do
        prog=${entry##*:}
        file=${entry%:*}
        if pid=$(live_pid "$file" "$prog"); then
            kill -TERM "$pid"
            pids+=("$pid")
        fi
    done
    local deadline=$((SECONDS + 15)) alive
    while :; do
        alive=()
        for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && alive+=("$pid"); done
        [ ${#alive[@]} -eq 0 ] && break
        if [ $SECONDS -ge $deadline ]; then kill -KILL "${alive[@]}" 2>/dev/null || true; break; fi
        sleep 0.5
    done
    rm -f "$DIR"/run/*.pid "$DIR/munge/munged.pid"
    echo "SLURM cluster stopped (${#pids[@]} daemons)"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) sinfo -N ;;
    running) live_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null ;;
    # The node names n1/n2 resolve nowhere: multi-node DDP meets at 127.0.0.1 (MASTER_ADDR).
    env) echo "export SLURM_CONF=$CONF MASTER_ADDR=127.0.0.1" ;;
    *) die "usage: $0 install|start|stop|status|running|env" ;;
esac
