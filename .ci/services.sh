#!/usr/bin/env bash
# Start (or stop) PostgreSQL and Redis on 127.0.0.1 for the tests and the benchmarks.
# Data lives in $JOBSTATUS_SERVICES_DIR (default /tmp/django-jobstatus-services, reachable by
# the postgres user whatever the checkout's permissions). Idempotent: a server already
# answering on the port is used as it is.
#   .ci/services.sh start [postgres|redis]   start both (or one); exit 1 if any asked for is missing
#   .ci/services.sh has postgres|redis       exit 0 when that service answers on its port
#   .ci/services.sh stop|env
set -euo pipefail
cd "$(dirname "$0")/.."
root="${JOBSTATUS_SERVICES_DIR:-/tmp/django-jobstatus-services}"
PGPORT="${JOBSTATUS_PGPORT:-54329}"
REDISPORT="${JOBSTATUS_REDISPORT:-63799}"
pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"

as_postgres() {
  # PostgreSQL refuses to run as root.
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  [ -n "$pgbin" ] || { echo "services: PostgreSQL is not installed (apt-get install postgresql)" >&2; return 1; }
  local data="$root/pg"
  if "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$PGPORT"; then
    echo "services: PostgreSQL on 127.0.0.1:$PGPORT (already running)"
    return 0
  fi
  mkdir -p "$root"
  chmod 755 "$root"
  if [ ! -s "$data/PG_VERSION" ]; then
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres "$data" && chmod 700 "$data"
    as_postgres "$pgbin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  as_postgres "$pgbin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $PGPORT -k /tmp -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" start >/dev/null
  "$pgbin/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'jobstatus'" | grep -q 1 \
    || "$pgbin/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres jobstatus
  echo "services: PostgreSQL on 127.0.0.1:$PGPORT"
}

start_redis() {
  command -v redis-server >/dev/null || { echo "services: Redis is not installed (apt-get install redis-server)" >&2; return 1; }
  mkdir -p "$root/redis"
  if ! redis-cli -h 127.0.0.1 -p "$REDISPORT" ping >/dev/null 2>&1; then
    redis-server --bind 127.0.0.1 --port "$REDISPORT" --daemonize yes --save "" --appendonly no --databases 64 \
      --dir "$root/redis" --logfile "$root/redis/redis.log" >/dev/null
    for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p "$REDISPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  echo "services: Redis on 127.0.0.1:$REDISPORT"
}

has_postgres() { [ -n "$pgbin" ] && "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$PGPORT"; }
has_redis() { command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p "$REDISPORT" ping >/dev/null 2>&1; }

case "${1:-start}" in
  start)
    # Each service on its own: a missing Redis never hides a working PostgreSQL.
    status=0
    case "${2:-all}" in
      postgres) start_postgres || status=1 ;;
      redis) start_redis || status=1 ;;
      all) start_postgres || status=1; start_redis || status=1 ;;
      *) echo "usage: $0 start [postgres|redis]" >&2; exit 2 ;;
    esac
    exit $status ;;
  has)
    case "${2:-}" in
      postgres) has_postgres ;;
      redis) has_redis ;;
      *) echo "usage: $0 has postgres|redis" >&2; exit 2 ;;
    esac ;;
  stop)
    [ -n "$pgbin" ] && [ -d "$root/pg" ] && as_postgres "$pgbin/pg_ctl" -D "$root/pg" -m fast stop >/dev/null 2>&1 || true
    redis-cli -h 127.0.0.1 -p "$REDISPORT" shutdown nosave >/dev/null 2>&1 || true ;;
  env)
    echo "POSTGRES_URL=postgres://postgres@127.0.0.1:$PGPORT/jobstatus"
    echo "REDIS_URL=redis://127.0.0.1:$REDISPORT/0" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
