#!/usr/bin/env bash
# Start a throw-away single-node Slurm cluster on 127.0.0.1 (Debian 12, root, no systemd needed).
# Usage: tests/cluster/slurm-up.sh [STATE_DIR]     (default: ${TMPDIR:-/tmp}/limit-slurm)
#   env: WITH_SLURMDBD=1 also runs MariaDB + slurmdbd (then `sacct` works and the profile could
#        drop `slurm-status-command: squeue`).
# Installs the Debian packages if missing, writes /etc/slurm/slurm.conf (the jobstep plugin strips
# SLURM_CONF inside jobs, so the compiled-in default path is the only one that works), and starts
# munged, slurmctld and slurmd by hand; their pid files, state and logs live in STATE_DIR.
# It never replaces a slurm.conf, slurmdbd.conf or munge key that it did not write: on a host with its
# own Slurm it refuses (exit 3). Files it creates are listed in STATE_DIR/created; slurm-down.sh
# STATE_DIR stops the daemons and removes those files.
# The node has one GPU GRES backed by a stand-in device file ($GPU_DEV, a character device with /dev/null's
# numbers): Slurm schedules `--gpus=1` jobs on it and sets SLURM_JOB_GPUS / CUDA_VISIBLE_DEVICES as on a GPU
# node, but nothing can run CUDA on it.
set -euo pipefail
S=${1:-${TMPDIR:-/tmp}/limit-slurm}
WITH_SLURMDBD=${WITH_SLURMDBD:-0}
NODE=$(hostname -s)
GPU_DEV=/dev/limit-test-gpu0
MARK="# written by limit-pipeline tests/cluster/slurm-up.sh; removed by slurm-down.sh"
export DEBIAN_FRONTEND=noninteractive

ours_or_absent() {  # file: refuse to touch a file this script did not write
  [ ! -e "$1" ] || [ "$(head -1 "$1")" = "$MARK" ] || {
    echo "error: $1 exists and was not written by this script; refusing to replace this host's Slurm" \
         "configuration (the test cluster needs that path: Slurm jobs ignore SLURM_CONF)" >&2; exit 3; }
}
created() { grep -qxF "$1" "$S/created" 2>/dev/null || echo "$1" >> "$S/created"; }
ours_or_absent /etc/slurm/slurm.conf
ours_or_absent /etc/slurm/gres.conf
[ "$WITH_SLURMDBD" = 1 ] && ours_or_absent /etc/slurm/slurmdbd.conf
mkdir -p "$S"

pkgs="slurmctld slurmd slurm-client munge"
[ "$WITH_SLURMDBD" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
if ! dpkg -s $pkgs >/dev/null 2>&1; then
  # one apt-get at a time with the other tests' installs (tests/pipeline_helpers.py, APT_LOCK)
  flock /tmp/limit-tests-apt.lock sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $pkgs >/dev/null"
fi

mkdir -p "$S"/{state,spool,log}
rm -rf "$S"/state/* "$S"/spool/*        # fresh controller state every time

# --- munge (the package's postinst normally creates /etc/munge/munge.key) ---
[ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key; created /etc/munge/munge.key; }
mkdir -p /run/munge && chown munge:munge /run/munge
if ! munge -n >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged          # daemonizes; pid in /run/munge/munged.pid
  for i in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
  cp /run/munge/munged.pid "$S/munged.pid"      # ours: slurm-down.sh stops it (a munged found running is left alone)
fi

if [ "$WITH_SLURMDBD" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819"
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi

# CPUs=24 on a 2-core machine (allowed by SlurmdParameters=config_overrides) so that several
# one-core jobs run at once, and a pack of 16 one-thread runs (17 CPUs) fits the node; MinJobAge=300 keeps finished jobs visible to `squeue` (the profile's
# status command without slurmdbd); jobcomp/filetxt records every finished job in $S/log/jobcomp.txt.
[ -d /etc/slurm ] || { mkdir /etc/slurm; created /etc/slurm; }
created /etc/slurm/slurm.conf
cat > /etc/slurm/slurm.conf <<CONF
$MARK
ClusterName=localcluster
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
$ACCT
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$S/log/jobcomp.txt
MinJobAge=300
KillWait=5
InactiveLimit=0
GresTypes=gpu
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=24 RealMemory=8000 Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
[ -e "$GPU_DEV" ] || { mknod "$GPU_DEV" c 1 3; created "$GPU_DEV"; }
created /etc/slurm/gres.conf
cat > /etc/slurm/gres.conf <<CONF
$MARK
Name=gpu File=$GPU_DEV
CONF

if [ "$WITH_SLURMDBD" = 1 ]; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if ! mariadb-admin ping >/dev/null 2>&1; then
    setsid -f /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
      --log-error="$S/log/mariadb.err" </dev/null >/dev/null 2>&1
    for i in $(seq 100); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.1; done
    cp /run/mysqld/mysqld.pid "$S/mysqld.pid"
  fi
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  umask 077
  created /etc/slurm/slurmdbd.conf
  cat > /etc/slurm/slurmdbd.conf <<CONF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$S/slurmdbd.pid
LogFile=$S/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
  umask 022
  slurmdbd
  for i in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.1; done
  sacctmgr -i add cluster localcluster >/dev/null 2>&1 || true
fi

slurmctld -c      # -c: ignore any saved state
slurmd
for i in $(seq 150); do sinfo -h -o '%T' 2>/dev/null | grep -qx idle && break; sleep 0.2; done
sinfo -h -o '%T' | grep -qx idle || { echo "node never became idle" >&2; tail -20 "$S"/log/*.log >&2; exit 1; }
echo "slurm up: $(sinfo -h -o '%P %T %c CPUs %m MB')"
