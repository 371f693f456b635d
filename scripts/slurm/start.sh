#!/usr/bin/env bash
# Start a single-node SLURM cluster on localhost for the `slurm` tests: munge, MariaDB, slurmdbd
# (accounting, so a job SLURM kills ends submitit's wait with an error instead of a hang),
# slurmctld and slurmd, all started directly (no systemd) with their files under one base dir.
#
#   scripts/slurm/start.sh            install what is missing (Debian, as root), start, wait until idle
#   export SLURM_CONF=/tmp/ssm_lab-slurm/etc/slurm.conf   (or source /tmp/ssm_lab-slurm/env.sh)
#                                     then sbatch, squeue, sacct and Hydra's submitit launcher use it
#   SSM_LAB_SLURM_DIR moves the base dir; SSM_LAB_SLURM*_PORT and SSM_LAB_SLURM_DB_PORT the ports.
#
# Idempotent: a cluster already up is left as it is. scripts/slurm/stop.sh stops what this started.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        log "missing ${missing[*]}: install ${PACKAGES[*]} (Debian/Ubuntu, as root) and run again"
        return 1
    fi
    log "installing ${PACKAGES[*]}"
    apt-get update -qq >"$SLURM_LOG/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >>"$SLURM_LOG/apt.log" 2>&1 \
        || { log "apt-get install failed; see $SLURM_LOG/apt.log"; return 1; }
}

node_state() { sinfo --noheader --nodes="$NODE" --format=%t 2>/dev/null; }
node_idle() { [[ $(node_state) == idle ]]; }

write_configs() {
    local cpus memory_mb
    cpus=$(nproc)
    memory_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 1024))
    # DefMemPerCPU with CR_Core_Memory: without it each job claims all the node's memory and jobs
    # run one at a time.
    sed -e "s|@BASE@|$SLURM_BASE|g" -e "s|@NODE@|$NODE|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEMORY_MB@|$memory_mb|g" \
        -e "s|@DEF_MEM_PER_CPU@|$((memory_mb / cpus))|g" -e "s|@MUNGE_SOCKET@|$MUNGE_SOCKET|g" \
        -e "s|@SLURMCTLD_PORT@|$SLURMCTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
        -e "s|@SLURMDBD_PORT@|$SLURMDBD_PORT|g" "$HERE/slurm.conf.in" >"$SLURM_ETC/slurm.conf"
    # slurmdbd refuses a config that others can read (it holds the database password).
    (umask 077 && sed -e "s|@BASE@|$SLURM_BASE|g" -e "s|@MUNGE_SOCKET@|$MUNGE_SOCKET|g" \
        -e "s|@SLURMDBD_PORT@|$SLURMDBD_PORT|g" -e "s|@DB_PORT@|$DB_PORT|g" \
        "$HERE/slurmdbd.conf.in" >"$SLURM_ETC/slurmdbd.conf")
    chmod 600 "$SLURM_ETC/slurmdbd.conf"
    echo "export SLURM_CONF=$SLURM_CONF" >"$SLURM_BASE/env.sh"
}

start_munge() {
    running_pid munged >/dev/null && return 0
    [[ -s $SLURM_ETC/munge.key ]] || mungekey --create --keyfile="$SLURM_ETC/munge.key"
    chmod 400 "$SLURM_ETC/munge.key"
    munged --key-file="$SLURM_ETC/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$SLURM_RUN/munged.pid" \
        --log-file="$SLURM_LOG/munged.log" --seed-file="$SLURM_STATE/munge.seed" --force
    wait_for 20 munged munge --socket="$MUNGE_SOCKET" --no-input
}

start_mariadb() {
    running_pid mariadbd >/dev/null && return 0
    if [[ ! -d $SLURM_STATE/mariadb/mysql ]]; then
        mariadb-install-db --user=root --datadir="$SLURM_STATE/mariadb" --auth-root-authentication-method=socket \
            --skip-test-db >"$SLURM_LOG/mariadb-install.log" 2>&1 \
            || { log "mariadb-install-db failed; see $SLURM_LOG/mariadb-install.log"; return 1; }
    fi
    mariadbd --user=root --datadir="$SLURM_STATE/mariadb" --socket="$DB_SOCKET" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --pid-file="$SLURM_RUN/mariadbd.pid" --log-error="$SLURM_LOG/mariadb.log" \
        --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 --skip-name-resolve >/dev/null 2>&1 &
    wait_for 60 "MariaDB on $DB_SOCKET" mariadb --socket="$DB_SOCKET" -e "SELECT 1"
    mariadb --socket="$DB_SOCKET" <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL
}

start_slurm_daemon() {
    local daemon=$1
    shift
    running_pid "$daemon" >/dev/null && return 0
    "$daemon" "$@"
}

main() {
    mkdir -p "$SLURM_ETC" "$SLURM_RUN" "$SLURM_LOG" "$SLURM_STATE/slurmctld" "$SLURM_STATE/slurmd"
    NODE=$(hostname -s)
    if running_pid slurmctld >/dev/null && running_pid slurmd >/dev/null && node_idle; then
        log "already running (SLURM_CONF=$SLURM_CONF)"
        return 0
    fi
    install_packages
    write_configs
    start_munge
    start_mariadb
    start_slurm_daemon slurmdbd
    wait_for 30 "slurmdbd on port $SLURMDBD_PORT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$SLURMDBD_PORT"
    start_slurm_daemon slurmctld -i
    wait_for 30 slurmctld scontrol ping
    start_slurm_daemon slurmd -N "$NODE"
    if ! wait_for 30 "node $NODE to register" node_state; then
        log "slurmd did not register; see $SLURM_LOG"
        return 1
    fi
    # A node left down or drained by an earlier, killed cluster comes back by hand.
    if [[ $(node_state) =~ ^(down|drain|drng|fail) ]]; then
        scontrol update nodename="$NODE" state=resume
    fi
    if ! wait_for 60 "node $NODE to become idle (state: $(node_state))" node_idle; then
        log "node state: $(node_state); see $SLURM_LOG"
        return 1
    fi
    log "up: node $NODE idle, accounting on; export SLURM_CONF=$SLURM_CONF"
}

main "$@"
