#!/usr/bin/env bash
# Stop the daemons started by slurm-up.sh, by their pid files only (never by name), then remove the
# files it created (STATE_DIR/created, newest first): the host is left as slurm-up.sh found it.
# Usage: tests/cluster/slurm-down.sh [STATE_DIR]   (the same STATE_DIR as slurm-up.sh)
S=${1:-${TMPDIR:-/tmp}/limit-slurm}
stop() {  # pidfile
  [ -s "$1" ] || return 0; local p st; p=$(cat "$1"); kill "$p" 2>/dev/null || true
  for i in $(seq 200); do            # wait up to 10 s; a zombie (unreaped by PID 1) counts as gone
    st=$(ps -o stat= -p "$p" 2>/dev/null) || break; [[ $st == Z* ]] && break; sleep 0.05; done
  rm -f "$1"; }
# cancel leftover jobs first: their slurmstepd processes would outlive slurmd
if [ -s "$S/slurmctld.pid" ]; then
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then scancel $jobs; sleep 2; fi
fi
stop "$S/slurmd.pid"; stop "$S/slurmctld.pid"; stop "$S/slurmdbd.pid"
stop "$S/mysqld.pid"     # only what slurm-up.sh started itself
stop "$S/munged.pid"
if [ -s "$S/created" ]; then
  tac "$S/created" | while read -r f; do if [ -d "$f" ]; then rmdir "$f" 2>/dev/null || true; else rm -f "$f"; fi; done
  rm -f "$S/created"
fi
exit 0
