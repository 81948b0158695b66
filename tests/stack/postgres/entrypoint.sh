#!/bin/bash
# Entrypoint of the backout test stack's PostgreSQL image. Mirrors the official
# postgres image's conventions: on first start (empty $PGDATA) it runs initdb with
# POSTGRES_USER / POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE), password
# authentication (scram-sha-256) for every connection, creates POSTGRES_DB and runs
# /docker-entrypoint-initdb.d/*.sql|*.sh. No password ever appears in an argv.
set -euo pipefail

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) [entrypoint] $*"; }
die() { log "ERROR: $*"; exit 1; }

if [ "${1:-}" != "postgres" ]; then
    exec "$@"
fi
shift

: "${PGDATA:=/var/lib/postgresql/data}"
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" postgres "$@"
fi

if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
fi
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    [ -n "${POSTGRES_PASSWORD:-}" ] || die "database is uninitialised and POSTGRES_PASSWORD is not set"
    log "initialising $PGDATA"
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -A scram-sha-256 \
        -E UTF8 --locale=C.UTF-8 >/tmp/initdb.log 2>&1 || { cat /tmp/initdb.log; die "initdb failed"; }
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    {
        echo "listen_addresses = '*'"
        echo "unix_socket_directories = '/var/run/postgresql'"
        # Small, quick to start: a test stack on a shared 2-core machine.
        echo "shared_buffers = 32MB"
        echo "max_connections = 50"
    } >> "$PGDATA/postgresql.conf"

    # Temporary server: socket only, so no client sees a half-initialised server.
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/tmp/pg_ctl.log 2>&1 \
        || { cat /tmp/pg_ctl.log; die "temporary server did not start"; }
    export PGPASSWORD="$POSTGRES_PASSWORD" PGUSER="$POSTGRES_USER" PGHOST=/var/run/postgresql
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -X -q -v ON_ERROR_STOP=1 -d postgres -v db="$POSTGRES_DB" \
            <<<'CREATE DATABASE :"db";'
    fi
    shopt -s nullglob
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sql) log "running $f"; psql -X -q -v ON_ERROR_STOP=1 -d "$POSTGRES_DB" -f "$f" ;;
            *.sh) log "running $f"; . "$f" ;;
            *) log "ignoring $f" ;;
        esac
    done
    shopt -u nullglob
    unset PGPASSWORD PGUSER PGHOST
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    log "initialisation done"
fi

exec postgres -D "$PGDATA" "$@"
