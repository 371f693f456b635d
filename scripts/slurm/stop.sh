#!/usr/bin/env bash
# Stop the single-node cluster that scripts/slurm/start.sh started: cancel its jobs, stop its
# daemons by their pid files (never by name), and remove its state. Logs are kept unless --purge.
#
#   scripts/slurm/stop.sh [--purge]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"

stop_daemon() {
    local daemon=$1 pid
    pid=$(running_pid "$daemon") || return 0
    kill -TERM "$pid"
    if ! wait_for 30 "$daemon (pid $pid) to exit" bash -c "! kill -0 $pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$SLURM_RUN/$daemon.pid"
    log "stopped $daemon (pid $pid)"
}

main() {
    [[ -d $SLURM_BASE ]] || return 0
    if running_pid slurmctld >/dev/null; then
        scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    fi
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        stop_daemon "${DAEMONS[i]}"
    done
    rm -rf "$SLURM_ETC" "$SLURM_RUN" "$SLURM_STATE" "$SLURM_BASE/env.sh"
    if [[ ${1:-} == --purge ]]; then
        rm -rf "$SLURM_BASE"
    fi
}

main "$@"
