# Shared by start.sh and stop.sh: where the single-node cluster keeps its files, and its daemons.
# Everything (configs, state, logs, sockets, pid files, the MariaDB data) lives under one base dir,
# so stop.sh can remove exactly what start.sh made.
SLURM_BASE=${SSM_LAB_SLURM_DIR:-/tmp/ssm_lab-slurm}
SLURM_ETC=$SLURM_BASE/etc
SLURM_RUN=$SLURM_BASE/run
SLURM_LOG=$SLURM_BASE/log
SLURM_STATE=$SLURM_BASE/state
MUNGE_SOCKET=$SLURM_RUN/munge.socket
DB_SOCKET=$SLURM_RUN/mariadb.sock
# Ports away from SLURM's and MariaDB's defaults, so a site installation on the same host is left alone.
DB_PORT=${SSM_LAB_SLURM_DB_PORT:-3316}
SLURMDBD_PORT=${SSM_LAB_SLURMDBD_PORT:-6919}
SLURMCTLD_PORT=${SSM_LAB_SLURMCTLD_PORT:-6917}
SLURMD_PORT=${SSM_LAB_SLURMD_PORT:-6918}
export SLURM_CONF=$SLURM_ETC/slurm.conf
# Started in this order, stopped in the reverse one.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

log() { echo "[slurm] $*" >&2; }

# The pid a daemon wrote, when that process is still alive.
running_pid() {
    local pid_file=$SLURM_RUN/$1.pid pid
    [[ -s $pid_file ]] || return 1
    pid=$(<"$pid_file")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every half second, fail after SECONDS.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${seconds}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}
