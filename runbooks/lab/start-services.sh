#!/bin/sh
# Throw-away PostgreSQL and Redis for trying runbooks/lab-backup.yaml and
# runbooks/lab-restore.yaml on a laptop: both on free loopback ports, with
# their data, sockets and logs under one directory, and a little demo data
# (a `shop` database, some Redis keys, a directory of files).
#
#   runbooks/lab/start-services.sh [DIR]        start (DIR defaults to /tmp/runbook-lab)
#   runbooks/lab/start-services.sh stop [DIR]   stop both and remove DIR
#
# LAB_ROWS=N sets the number of orders in the demo database (20000; a few
# million make a restore long enough to interrupt by hand).
# Needs PostgreSQL server binaries (Debian: postgresql) and redis-server
# (Debian: redis-server). As root, PostgreSQL runs as the `postgres` user
# (it refuses root). Prints the commands to back up and restore. The
# passwords are throw-away values written to DIR/env, which the printed
# commands source.
set -eu

if [ "${1:-}" = stop ]; then
    dir=${2:-/tmp/runbook-lab}
    if [ -f "$dir/redis/redis.pid" ]; then kill "$(cat "$dir/redis/redis.pid")" 2>/dev/null || true; fi
    if [ -f "$dir/pg/data/postmaster.pid" ]; then kill "$(head -n 1 "$dir/pg/data/postmaster.pid")" 2>/dev/null || true; fi
    sleep 1
    rm -rf "$dir"
    echo "stopped; removed $dir"
    exit 0
fi

dir=${1:-/tmp/runbook-lab}
case ${LAB_ROWS:-20000} in
    ''|*[!0-9]*) echo "LAB_ROWS must be a number of rows, not '$LAB_ROWS'" >&2; exit 2 ;;
esac
if [ -e "$dir/env" ]; then
    echo "$dir already holds a lab (stop it first: $0 stop $dir)" >&2
    exit 1
fi

pg_ctl=$(command -v pg_ctl 2>/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1 || true)
pg_bin=$(dirname "$(readlink -f "${pg_ctl:-/nonexistent}")")
[ -x "$pg_bin/initdb" ] || { echo "no PostgreSQL server binaries (pg_ctl, initdb): apt-get install postgresql" >&2; exit 2; }
command -v redis-server >/dev/null || { echo "no redis-server: apt-get install redis-server" >&2; exit 2; }

# A TCP port nobody listens on (from /proc/net/tcp{,6}, state 0A = LISTEN).
free_port() {
    port=$1
    while awk -v p="$(printf '%04X' "$port")" '$4 == "0A" && $2 ~ (":" p "$") { found = 1 } END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null; do
        port=$((port + 1))
    done
    echo "$port"
}
pg_port=$(free_port 54320)
redis_port=$(free_port 56379)
pg_password=lab-pg-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
redis_password=lab-redis-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')

mkdir -p "$dir/pg" "$dir/redis" "$dir/files" "$dir/backups"
# a failure half-way stops what was started and removes the directory
trap 'status=$?; if [ $status -ne 0 ]; then "$0" stop "$dir" >/dev/null 2>&1; fi' EXIT
as_pg() { "$@"; }
if [ "$(id -u)" = 0 ]; then
    chown postgres "$dir/pg"
    as_pg() { runuser -u postgres -- "$@"; }
fi
printf '%s\n' "$pg_password" > "$dir/pg/pwfile"
chmod 600 "$dir/pg/pwfile"
[ "$(id -u)" = 0 ] && chown postgres "$dir/pg/pwfile"
as_pg "$pg_bin/initdb" -D "$dir/pg/data" -U postgres --pwfile="$dir/pg/pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 >"$dir/pg/initdb.log"
rm -f "$dir/pg/pwfile"
as_pg "$pg_bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w \
    -o "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1" start >/dev/null

redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir/redis" --save '' --appendonly no \
    --requirepass "$redis_password" --daemonize yes --pidfile "$dir/redis/redis.pid" \
    --logfile "$dir/redis/redis.log"

# demo data
psql_lab() { as_pg "$pg_bin/psql" -X -q -h "$dir/pg" -p "$pg_port" -U postgres "$@"; }
psql_lab -d postgres -c 'create database shop'
psql_lab -d shop -c "
  create table customers (id serial primary key, name text not null, email text);
  insert into customers (name, email) select 'customer ' || i, 'c' || i || '@example.com' from generate_series(1, 1000) i;
  create table orders (id bigserial primary key, customer_id int references customers, total numeric(10,2), at timestamptz default now());
  insert into orders (customer_id, total) select 1 + i % 1000, (i % 997) / 10.0 from generate_series(1, ${LAB_ROWS:-20000}) i;"
i=0
while [ $i -lt 200 ]; do
    printf 'SET session:%s "user %s"\nHSET cart:%s item%s %s\nRPUSH queue job-%s\n' $i $i $i $i $i $i
    i=$((i + 1))
done | REDISCLI_AUTH=$redis_password redis-cli --no-auth-warning -p "$redis_port" >/dev/null
mkdir -p "$dir/files/uploads/2026" "$dir/files/empty-dir"
for n in 1 2 3 4 5; do head -c $((n * 10000)) /dev/urandom > "$dir/files/uploads/2026/blob-$n.bin"; done
echo "hello" > "$dir/files/readme.txt"
: > "$dir/files/empty-file"

cat > "$dir/env" <<EOF
export RUNBOOK_PARAM_PG_PASSWORD='$pg_password'
export RUNBOOK_PARAM_REDIS_PASSWORD='$redis_password'
EOF
chmod 600 "$dir/env"

cat <<EOF
PostgreSQL on 127.0.0.1:$pg_port (user postgres), Redis on 127.0.0.1:$redis_port, files in $dir/files

  . $dir/env
  runbook run runbooks/lab-backup.yaml -p pg_port=$pg_port -p redis_port=$redis_port \\
      -p files_dir=$dir/files -p backup_dir=$dir/backups/1
  runbook run runbooks/lab-restore.yaml -p pg_port=$pg_port -p redis_port=$redis_port \\
      -p files_dir=$dir/files -p backup_dir=$dir/backups/1

Stop and remove everything: $0 stop $dir
EOF
