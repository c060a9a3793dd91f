#!/usr/bin/env bash
# A single-host SLURM cluster for tests and trying the job scripts: munge, slurmctld, and one slurmd per fake
# node (distinct ports, all on this host). Needs Debian's slurm-wlm and munge (installed if missing, as root).
#
#   bash slurm/local_cluster.sh start [NODES]   # default 2 nodes; prints `export SLURM_CONF=...`
#   bash slurm/local_cluster.sh stop
#
# State lives in $LIT_LLM_SLURM_DIR (default /tmp/lit_llm_slurm). Each fake node offers all CPUs of this host.
set -euo pipefail

DIR=${LIT_LLM_SLURM_DIR:-/tmp/lit_llm_slurm}
ACTION=${1:-start}
NODES=${2:-2}
PORT0=${LIT_LLM_SLURM_PORT:-17100}

stop() {
  for f in "$DIR"/run/*.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  pkill -f "slurmd.*-f $DIR/slurm.conf" 2>/dev/null || true
  pkill -f "slurmctld.*-f $DIR/slurm.conf" 2>/dev/null || true
  sleep 1
}

if [ "$ACTION" = stop ]; then
  stop
  echo "local SLURM cluster in $DIR stopped"
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "installing slurm-wlm and munge" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi

stop
mkdir -p "$DIR"/{run,log,state,munge}
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))

# munge: a key and a daemon of our own (no system service needed)
if [ ! -f "$DIR/munge/munge.key" ]; then
  dd if=/dev/urandom bs=1 count=1024 of="$DIR/munge/munge.key" status=none
  chmod 400 "$DIR/munge/munge.key"
fi
MUNGE_SOCKET="$DIR/munge/munge.socket"
munged --force --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
  --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed"

{
  echo "ClusterName=litllm"
  echo "SlurmctldHost=localhost"
  echo "SlurmctldPort=$PORT0"
  echo "SlurmUser=root"
  echo "AuthType=auth/munge"
  echo "AuthInfo=socket=$MUNGE_SOCKET"
  echo "CredType=cred/munge"
  echo "StateSaveLocation=$DIR/state"
  echo "SlurmdSpoolDir=$DIR/state/slurmd-%n"
  echo "SlurmctldPidFile=$DIR/run/slurmctld.pid"
  echo "SlurmdPidFile=$DIR/run/slurmd-%n.pid"
  echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
  echo "SlurmdLogFile=$DIR/log/slurmd-%n.log"
  echo "ProctrackType=proctrack/linuxproc"
  echo "TaskPlugin=task/none"
  echo "SelectType=select/cons_tres"
  echo "SelectTypeParameters=CR_Core"
  echo "MpiDefault=none"
  echo "ReturnToService=2"
  echo "JobRequeue=1"
  echo "SchedulerType=sched/backfill"
  echo "SchedulerParameters=bf_interval=1"
  echo "KillWait=5"
  echo "MinJobAge=300"
  echo "InactiveLimit=0"
  echo "OverTimeLimit=1"
  for i in $(seq 1 "$NODES"); do
    echo "NodeName=node$i NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$((PORT0 + i)) CPUs=$CPUS RealMemory=$MEM State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=60 State=UP OverSubscribe=FORCE:4"
} > "$DIR/slurm.conf"
export SLURM_CONF="$DIR/slurm.conf"

slurmctld -c -f "$SLURM_CONF"
for i in $(seq 1 "$NODES"); do
  slurmd -N "node$i" -f "$SLURM_CONF"
done

# ready when every node is idle (a loaded machine can take a while)
for _ in $(seq 1 180); do
  if [ "$(sinfo -h -o '%t' -N 2>/dev/null | grep -c idle)" -ge "$NODES" ]; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.5
done
echo "the local SLURM cluster did not come up; see $DIR/log" >&2
sinfo -N >&2 || true
for f in "$DIR"/log/*.log; do
  echo "--- $f (last lines)" >&2
  tail -n 15 "$f" >&2 || true
done
stop
exit 1
