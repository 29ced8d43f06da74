#!/usr/bin/env bash
# Starts a one-node SLURM cluster on this machine (munged, slurmctld, slurmd from Debian's
# packages) in a private state directory, for tests of the slurm/ scripts. Installs the
# packages with apt-get when they are missing (needs root).
#
#   scripts/slurm_local.sh start DIR   # prints `export SLURM_CONF=DIR/slurm.conf`
#   scripts/slurm_local.sh stop DIR
#
# Nothing outside DIR is touched besides the packages: the daemons get their own munge
# socket, key, ports, spool and state directories, so a machine's real SLURM (if any) is
# left alone.
set -euo pipefail

cmd=${1:?usage: slurm_local.sh start|stop DIR}
dir=${2:?usage: slurm_local.sh start|stop DIR}

stop() {
  # slurmd deletes its pid file on SIGTERM but can linger for a job step that lost its
  # daemons, so the daemons are also found by their config path and killed if they stay.
  local pids
  pids=$(pgrep -f -- "-f $dir/slurm.conf" || true)
  for pidfile in "$dir"/munged.pid "$dir"/slurmd.pid "$dir"/slurmctld.pid; do
    [[ -f $pidfile ]] && pids="$pids $(cat "$pidfile")"
  done
  [[ -z ${pids// /} ]] && return 0
  kill $pids 2>/dev/null || true
  local pid alive
  for _ in $(seq 50); do
    alive=""
    for pid in $pids; do
      kill -0 "$pid" 2>/dev/null && alive="$alive $pid"
    done
    [[ -z $alive ]] && return 0
    sleep 0.1
  done
  kill -9 $alive 2>/dev/null || true
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

if [[ $cmd == stop ]]; then
  stop
  exit 0
fi
[[ $cmd == start ]] || { echo "slurm_local.sh: unknown command '$cmd' (start or stop)" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  if [[ $(id -u) != 0 ]]; then
    echo "slurm_local.sh: SLURM is not installed and this is not root; install slurm-wlm and munge" >&2
    exit 1
  fi
  echo "slurm_local.sh: installing slurm-wlm and munge from Debian's packages" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >&2
fi

mkdir -p "$dir"/state "$dir"/spool "$dir"/munge
chmod 700 "$dir"/munge
dd if=/dev/urandom of="$dir"/munge/munge.key bs=1 count=1024 status=none
chmod 400 "$dir"/munge/munge.key
# munged refuses to run as root unless forced; the socket and key are private to DIR.
munged --force --socket="$dir"/munge/munge.sock --key-file="$dir"/munge/munge.key \
  --pid-file="$dir"/munged.pid --log-file="$dir"/munged.log --seed-file="$dir"/munge/seed

host=$(hostname)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
cat > "$dir"/slurm.conf <<CONF
ClusterName=histtest
SlurmctldHost=$host
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF

export SLURM_CONF="$dir"/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "slurm_local.sh: the node did not become idle within 20 s; see $dir/slurmctld.log and $dir/slurmd.log" >&2
sinfo >&2 || true
stop
exit 1
