#!/usr/bin/env bash
# A SLURM cluster of two nodes, a PostgreSQL server and an MLflow tracking server on this
# one machine, for trying (and testing) the scale-out path on the real engines:
#   bash scripts/local_cluster.sh up       # (make cluster-up)   install what is missing, start, wait
#   bash scripts/local_cluster.sh down     # (make cluster-down) stop what `up` started, by pid
#   bash scripts/local_cluster.sh status
# Everything lives under outputs/cluster/ (config, state, logs, pid files); `up` writes
# outputs/cluster/env.sh, which exports SLURM_CONF, SEQMNIST_PG_URL and MLFLOW_TRACKING_URI,
# and SEQMNIST_PG_PASSWORD_URL with SEQMNIST_PG_PASSWORD: a role that must give its password
# (the URL names it without one), for searches whose storage password reaches the jobs.
# Ports (loopback only) can be moved with CLUSTER_PORT_BASE (default 16800): slurmctld
# +17, the nodes +18/+19, PostgreSQL +32, MLflow +50.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${CLUSTER_DIR:-$ROOT/outputs/cluster}"
PY="${PY:-$ROOT/.venv/bin/python}"
BASE="${CLUSTER_PORT_BASE:-16800}"
CTLD_PORT=$((BASE + 17))
DBD_PORT=$((BASE + 20))
MARIADB_PORT=$((BASE + 6))
NODE_PORTS="$((BASE + 18))-$((BASE + 19))"
PG_PORT=$((BASE + 32))
MLFLOW_PORT=$((BASE + 50))
NODES=(n1 n2)
PG_DB=seqmnist_search
PG_USER=seqmnist
# A role that must authenticate with its password (scram-sha-256), owner of a database of its
# own; the password is generated once and kept in PG_PW_FILE (mode 600).
PG_PW_USER=seqmnist_pw
PG_PW_DB=seqmnist_search_pw
PG_PW_FILE="$DIR/pg_password"
HOST="$(hostname -s)"
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"

say() { echo "cluster: $*"; }
die() { echo "cluster: error: $*" >&2; exit 2; }

alive() {  # alive PIDFILE NEEDLE: the process named in the pid file runs and is ours: its
  # command line (or, for a daemon started without arguments, its environment) names NEEDLE,
  # a path under $DIR. A stale pid file whose number went to another process is not.
  [ -s "$1" ] || return 1
  local pid
  pid="$(head -1 "$1")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "$2" && return 0
  { tr '\0' '\n' < "/proc/$pid/environ"; } 2>/dev/null | grep -qxF -- "$2"
}

port_busy() {  # port_busy PORT: something accepts connections on 127.0.0.1:PORT
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {  # free_port PORT WHAT: refuse a port another process holds, before starting
  if port_busy "$1"; then
    die "port $1 (for $2) is in use by another process. Fix: stop that process, or move the cluster's ports: CLUSTER_PORT_BASE=<another base> make cluster-up (it uses base+6 to base+50)."
  fi
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll until the command succeeds
  local seconds=$1 what=$2; shift 2
  for _ in $(seq 1 $((seconds * 2))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    [ "${WATCH_PID:-}" ] && ! kill -0 "$WATCH_PID" 2>/dev/null && die "$what exited; see its log in $DIR"
    sleep 0.5
  done
  die "$what did not come up within ${seconds}s; see the logs in $DIR"
}

# -- what must be installed -------------------------------------------------------------
install_missing() {
  local missing=()
  command -v munged >/dev/null || missing+=(munge)
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v slurmdbd >/dev/null || missing+=(slurmdbd)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  [ -n "$PG_BIN" ] || missing+=(postgresql)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      say "installing Debian's ${missing[*]}"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
      PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
    else
      die "missing ${missing[*]}. Fix: sudo apt-get install ${missing[*]} (Debian/Ubuntu), then run this again."
    fi
  fi
  [ -x "$PY" ] || die "no project environment at $PY. Fix: make install-extras (or make cluster-up)."
  "$PY" -c "import mlflow, psycopg" 2>/dev/null \
    || die "the MLflow server needs mlflow and psycopg in $PY. Fix: make install-extras."
}

# -- munge: the credentials SLURM's daemons and commands share ---------------------------
start_munge() {
  local d="$DIR/munge"
  if alive "$d/munged.pid" "$d/munge.socket"; then say "munge is running"; return; fi
  mkdir -p "$d"; chmod 700 "$d"
  [ -s "$d/munge.key" ] || { dd if=/dev/urandom of="$d/munge.key" bs=1024 count=1 status=none; }
  chmod 600 "$d/munge.key"
  munged --force --num-threads=10 --socket="$d/munge.socket" --key-file="$d/munge.key" \
    --pid-file="$d/munged.pid" --log-file="$d/munged.log" --seed-file="$d/munged.seed"
  wait_for 10 munge munge --socket="$d/munge.socket" -n
  say "munge started"
}

# -- SLURM: slurmctld and two slurmd of one CPU each, both on this host ------------------
write_slurm_conf() {
  local d="$DIR/slurm" cpus mem
  mkdir -p "$d/state" "$d/log" "$d/run" "${NODES[@]/#/$d/spool/}"
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 4 ))  # a quarter each
  cpus=1
  cat > "$d/slurm.conf" <<EOF
# Written by scripts/local_cluster.sh: two nodes on one host (slurmd -N n1, slurmd -N n2).
ClusterName=seqmnist
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool/%n
SlurmctldPidFile=$d/run/slurmctld.pid
SlurmdPidFile=$d/run/slurmd-%n.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# Accounting through slurmdbd, as on a real cluster: sacct (which submitit polls) knows
# every job's state, also of a job that ended without a word (killed, timed out).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# (the munge socket for talking to slurmdbd)
AccountingStoragePass=$DIR/munge/munge.socket
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
# A requeued job is started again within seconds (backfill every 5 s, not 30).
SchedulerParameters=bf_interval=5,sched_interval=5
KillWait=30
MinJobAge=300
InactiveLimit=0
Waittime=0
SlurmdTimeout=60
NodeName=n[1-2] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$NODE_PORTS CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
EOF
}

nodes_idle() {  # both nodes idle (or already running jobs)
  local states
  states="$(SLURM_CONF="$DIR/slurm/slurm.conf" sinfo -h -N -o '%N %t' 2>/dev/null)" || return 1
  for n in "${NODES[@]}"; do
    echo "$states" | grep -Eq "^$n (idle|mix|alloc)" || return 1
  done
}

resolve_nodes() {  # Lightning (and MPI, torchrun) reach a node by its name in SLURM's node list
  local n
  for n in "${NODES[@]}"; do
    getent hosts "$n" >/dev/null && continue
    if [ "$(id -u)" = 0 ] && [ -w /etc/hosts ]; then
      echo "127.0.0.1 $n  # seqmnist local cluster (scripts/local_cluster.sh)" >> /etc/hosts
      say "node name $n added to /etc/hosts (127.0.0.1)"
    else
      die "node name $n does not resolve. Fix: add '127.0.0.1 ${NODES[*]}' to /etc/hosts (as root)."
    fi
  done
}

# -- slurmdbd over MariaDB: the accounting a cluster keeps --------------------------------
start_mariadb() {
  local d="$DIR/mariadb"
  if alive "$d/mariadbd.pid" "--datadir=$d/data"; then say "MariaDB is running"; return; fi
  free_port "$MARIADB_PORT" MariaDB
  mkdir -p "$d/run"
  if [ ! -d "$d/data/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$d/data" --user="$(id -un)" \
      --auth-root-authentication-method=socket >"$d/install.log" 2>&1 \
      || die "mariadb-install-db failed: $d/install.log"
  fi
  setsid mariadbd --no-defaults --datadir="$d/data" --socket="$d/run/mysqld.sock" \
    --pid-file="$d/mariadbd.pid" --bind-address=127.0.0.1 --port="$MARIADB_PORT" \
    --skip-name-resolve --user="$(id -un)" --log-error="$d/mariadbd.log" \
    --innodb-buffer-pool-size=32M >/dev/null 2>&1 &
  WATCH_PID=$! wait_for 60 MariaDB mariadb --no-defaults --socket="$d/run/mysqld.sock" -e "SELECT 1"
  mariadb --no-defaults --socket="$d/run/mysqld.sock" -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  say "MariaDB started (for slurmdbd)"
}

start_slurmdbd() {
  local d="$DIR/slurm"
  if alive "$d/run/slurmdbd.pid" "SLURM_CONF=$d/slurm.conf"; then
    say "slurmdbd is running"; return
  fi
  free_port "$DBD_PORT" slurmdbd
  cat > "$d/slurmdbd.conf" <<EOF
# Written by scripts/local_cluster.sh.
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=$(id -un)
PidFile=$d/run/slurmdbd.pid
LogFile=$d/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MARIADB_PORT
StorageUser=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$d/slurmdbd.conf"
  slurmdbd  # reads the slurmdbd.conf beside $SLURM_CONF
  wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/$DBD_PORT"
  say "slurmdbd started"
}

start_slurm() {
  local d="$DIR/slurm"
  resolve_nodes
  write_slurm_conf
  export SLURM_CONF="$d/slurm.conf"
  start_mariadb
  start_slurmdbd
  if alive "$d/run/slurmctld.pid" "$d/slurm.conf"; then say "slurmctld is running"
  else
    free_port "$CTLD_PORT" slurmctld
    slurmctld -f "$d/slurm.conf"
    wait_for 20 slurmctld scontrol ping
    # A clean queue: a job an earlier `up` left (its daemons killed, not stopped by `down`)
    # would come back from StateSaveLocation. The state itself is kept: it holds the next job
    # id, and ids must not start again at 1 while slurmdbd remembers the old jobs (sacct, and
    # so submitit, would read an old job's end for a new one's).
    scancel --user="$(id -un)" 2>/dev/null || true
    say "slurmctld started"
  fi
  local port=$((BASE + 18))
  for n in "${NODES[@]}"; do
    if alive "$d/run/slurmd-$n.pid" "$d/slurm.conf"; then say "slurmd $n is running"
    else
      free_port "$port" "slurmd $n"
      slurmd -f "$d/slurm.conf" -N "$n"
      say "slurmd $n started"
    fi
    port=$((port + 1))
  done
  wait_for 60 "the nodes (sinfo shows them idle)" nodes_idle
}

# -- PostgreSQL: a server on 127.0.0.1 with a database for searches (and one for MLflow) --
pg() {  # PostgreSQL refuses to run as root: as root, run it as the postgres user, able to
  # reach the data dir even below directories only root may enter.
  if [ "$(id -u)" = 0 ]; then
    setpriv --reuid=postgres --regid=postgres --init-groups \
      --inh-caps=+dac_read_search --ambient-caps=+dac_read_search "$@"
  else
    "$@"
  fi
}

start_postgres() {
  local d="$DIR/postgres"
  if alive "$d/data/postmaster.pid" "$d/data"; then say "PostgreSQL is running"
  else
    free_port "$PG_PORT" PostgreSQL
    mkdir -p "$d/run"
    [ "$(id -u)" = 0 ] && { id postgres >/dev/null 2>&1 || die "no postgres user. Fix: apt-get install postgresql"; chown -R postgres: "$d"; }
    if [ ! -s "$d/data/PG_VERSION" ]; then
      pg "$PG_BIN/initdb" -D "$d/data" -U postgres --auth=trust -E UTF8 >"$d/initdb.log" 2>&1 \
        || die "initdb failed: $d/initdb.log"
    fi
    pg "$PG_BIN/pg_ctl" -D "$d/data" -l "$d/postgres.log" -w -t 30 \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $d/run" start >/dev/null \
      || die "PostgreSQL did not start: $d/postgres.log"
    say "PostgreSQL started on 127.0.0.1:$PG_PORT"
  fi
  wait_for 30 PostgreSQL "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT"
  local psql=("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qAt)
  "${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname='$PG_USER'" | grep -q 1 \
    || "${psql[@]}" -c "CREATE ROLE $PG_USER LOGIN"
  for db in "$PG_DB" mlflow; do
    "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 \
      || "${psql[@]}" -c "CREATE DATABASE $db OWNER $PG_USER"
  done
  password_role
}

# The role that needs its password. pg_hba.conf takes the first line that matches, and
# initdb --auth=trust trusts every local connection: the role's own lines go first. Its
# password never goes on a command line (ps shows those): psql reads it from its stdin, and
# the check below from the environment.
PG_HBA_MARK="# $PG_PW_USER: its password, always (scripts/local_cluster.sh)"

password_role() {
  local d="$DIR/postgres" pw
  local psql=("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qAt)
  if [ ! -s "$PG_PW_FILE" ]; then
    (umask 077; od -An -N18 -tx1 /dev/urandom | tr -d ' \n' > "$PG_PW_FILE")
    say "PostgreSQL password of $PG_PW_USER generated in $PG_PW_FILE"
  fi
  chmod 600 "$PG_PW_FILE"
  pw="$(cat "$PG_PW_FILE")"
  [[ "$pw" =~ ^[0-9a-f]+$ ]] || die "$PG_PW_FILE holds no password. Fix: delete it and run up again."
  if ! "${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname='$PG_PW_USER'" | grep -q 1; then
    printf "SET password_encryption = 'scram-sha-256';\nCREATE ROLE %s LOGIN PASSWORD '%s';\n" \
      "$PG_PW_USER" "$pw" | "${psql[@]}" >/dev/null
    say "PostgreSQL role $PG_PW_USER made (it needs its password)"
  fi
  "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname='$PG_PW_DB'" | grep -q 1 \
    || "${psql[@]}" -c "CREATE DATABASE $PG_PW_DB OWNER $PG_PW_USER"
  local hba="$d/data/pg_hba.conf"
  if ! grep -qxF "$PG_HBA_MARK" "$hba"; then
    # Rewritten in place (cat >), so the file keeps its owner (postgres, when run as root).
    { printf '%s\n' "$PG_HBA_MARK" \
        "local   all   $PG_PW_USER                  scram-sha-256" \
        "host    all   $PG_PW_USER   127.0.0.1/32   scram-sha-256" \
        "host    all   $PG_PW_USER   ::1/128        scram-sha-256"
      cat "$hba"; } > "$hba.new"
    cat "$hba.new" > "$hba"
    rm -f "$hba.new"
    pg "$PG_BIN/pg_ctl" -D "$d/data" reload >/dev/null || die "pg_ctl reload failed: $d/postgres.log"
    sleep 1  # the server reads pg_hba.conf again on the signal, not before pg_ctl returns
    say "pg_hba.conf: $PG_PW_USER needs its password (server reloaded)"
  fi
  if ! PGPASSWORD="$pw" pw_login >/dev/null 2>&1; then
    # A role made before $PG_PW_FILE was (made again): it takes the file's password.
    printf "SET password_encryption = 'scram-sha-256';\nALTER ROLE %s LOGIN PASSWORD '%s';\n" \
      "$PG_PW_USER" "$pw" | "${psql[@]}" >/dev/null
    PGPASSWORD="$pw" pw_login >/dev/null \
      || die "$PG_PW_USER cannot log in with the password in $PG_PW_FILE; see $d/postgres.log"
    say "PostgreSQL role $PG_PW_USER given the password in $PG_PW_FILE"
  fi
}

pw_login() {  # the role logs in over TCP with the password in PGPASSWORD (never asks for it)
  "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_PW_USER" -d "$PG_PW_DB" -w -qAt -c "SELECT 1"
}

# -- MLflow: a tracking server backed by that PostgreSQL, with an artifact folder ---------
mlflow_answers() { "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$MLFLOW_PORT/health', timeout=2)"; }

start_mlflow() {
  local d="$DIR/mlflow"
  mkdir -p "$d/artifacts"
  if alive "$d/server.pid" "$d/artifacts"; then say "MLflow is running"
  else
    free_port "$MLFLOW_PORT" "the MLflow server"
    # setsid: its own process group, so `down` ends the server and its workers together.
    setsid "$(dirname "$PY")/mlflow" server \
      --backend-store-uri "postgresql://$PG_USER@127.0.0.1:$PG_PORT/mlflow" \
      --artifacts-destination "$d/artifacts" --serve-artifacts \
      --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 >"$d/server.log" 2>&1 &
    echo $! > "$d/server.pid"
    say "MLflow server starting on http://127.0.0.1:$MLFLOW_PORT"
  fi
  WATCH_PID="$(cat "$d/server.pid")" wait_for 120 "the MLflow server" mlflow_answers
}

write_env() {  # mode 600, before the password is in it: it holds that of $PG_PW_USER
  if [ -e "$DIR/env.sh" ]; then chmod 600 "$DIR/env.sh"; fi
  (umask 077; cat > "$DIR/env.sh" <<EOF
# Written by scripts/local_cluster.sh up: source it to use the local cluster.
export SLURM_CONF="$DIR/slurm/slurm.conf"
export SEQMNIST_PG_URL="postgresql://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"
export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"
# A role that must give its password; the URL names none (a search's storage takes it as
# postgresql://$PG_PW_USER:\${oc.env:SEQMNIST_PG_PASSWORD}@127.0.0.1:$PG_PORT/$PG_PW_DB).
export SEQMNIST_PG_PASSWORD_URL="postgresql://$PG_PW_USER@127.0.0.1:$PG_PORT/$PG_PW_DB"
export SEQMNIST_PG_PASSWORD="$(cat "$PG_PW_FILE")"
EOF
  )
}

up() {
  install_missing
  mkdir -p "$DIR"
  # Daemons of an earlier `up` on other ports (CLUSTER_PORT_BASE changed) are stopped first,
  # not left running on the old ports beside new ones.
  if [ -s "$DIR/port_base" ] && [ "$(cat "$DIR/port_base")" != "$BASE" ]; then
    say "the ports moved from base $(cat "$DIR/port_base") to $BASE: stopping the cluster first"
    down
  fi
  echo "$BASE" > "$DIR/port_base"
  start_munge
  start_slurm
  start_postgres
  start_mlflow
  write_env
  say "up: source $DIR/env.sh"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE NEEDLE [group]: TERM, then KILL after 15 s. A pid
  # file naming a process that is not ours (see alive) is removed; that process is left alone.
  local name=$1 file=$2 needle=$3 pid
  alive "$file" "$needle" || { rm -f "$file"; return 0; }
  pid="$(head -1 "$file")"
  if [ "${4:-}" = group ]; then kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"; else kill -TERM "$pid"; fi
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$file"
  say "$name stopped"
}

job_pids() {  # the processes of this cluster's jobs: SLURM gave them a job id and our config
  local p env
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = "$$" ] && continue
    env="$( { tr '\0' '\n' < "$p/environ"; } 2>/dev/null)" || continue
    grep -qxF "SLURM_CONF=$DIR/slurm/slurm.conf" <<<"$env" && grep -q '^SLURM_JOB_ID=' <<<"$env" \
      && echo "${p#/proc/}"
  done
  return 0
}

end_jobs() {  # cancel every job while slurmctld runs, then end what is left of their processes
  local d="$DIR/slurm" pids=""
  if alive "$d/run/slurmctld.pid" "$d/slurm.conf"; then
    SLURM_CONF="$d/slurm.conf" scancel --full --signal=KILL --user="$(id -un)" 2>/dev/null || true
    SLURM_CONF="$d/slurm.conf" scancel --user="$(id -un)" 2>/dev/null || true
  fi
  for _ in $(seq 1 20); do
    pids="$(job_pids)"
    [ -z "$pids" ] && return 0
    sleep 0.5
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  say "ended the processes of jobs still running: $(echo $pids)"
}

down() {
  [ -d "$DIR" ] || { say "nothing to stop ($DIR does not exist)"; return 0; }
  end_jobs
  stop_pidfile "MLflow" "$DIR/mlflow/server.pid" "$DIR/mlflow/artifacts" group
  if alive "$DIR/postgres/data/postmaster.pid" "$DIR/postgres/data" && [ -n "$PG_BIN" ]; then
    pg "$PG_BIN/pg_ctl" -D "$DIR/postgres/data" -m fast -w stop >/dev/null && say "PostgreSQL stopped"
  fi
  for n in "${NODES[@]}"; do
    stop_pidfile "slurmd $n" "$DIR/slurm/run/slurmd-$n.pid" "$DIR/slurm/slurm.conf"
  done
  stop_pidfile slurmctld "$DIR/slurm/run/slurmctld.pid" "$DIR/slurm/slurm.conf"
  stop_pidfile slurmdbd "$DIR/slurm/run/slurmdbd.pid" "SLURM_CONF=$DIR/slurm/slurm.conf"
  stop_pidfile MariaDB "$DIR/mariadb/mariadbd.pid" "--datadir=$DIR/mariadb/data"
  stop_pidfile munge "$DIR/munge/munged.pid" "$DIR/munge/munge.socket"
  end_jobs  # a job step that outlived its slurmd
  rm -f "$DIR/env.sh" "$DIR/port_base"
}

status() {
  local rc=0
  local conf="$DIR/slurm/slurm.conf" name file needle
  while IFS='|' read -r name file needle; do
    if alive "$file" "$needle"; then say "$name runs"; else say "$name is down"; rc=1; fi
  done <<LIST
munge|$DIR/munge/munged.pid|$DIR/munge/munge.socket
MariaDB|$DIR/mariadb/mariadbd.pid|--datadir=$DIR/mariadb/data
slurmdbd|$DIR/slurm/run/slurmdbd.pid|SLURM_CONF=$conf
slurmctld|$DIR/slurm/run/slurmctld.pid|$conf
slurmd n1|$DIR/slurm/run/slurmd-n1.pid|$conf
slurmd n2|$DIR/slurm/run/slurmd-n2.pid|$conf
PostgreSQL|$DIR/postgres/data/postmaster.pid|$DIR/postgres/data
MLflow|$DIR/mlflow/server.pid|$DIR/mlflow/artifacts
LIST
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
