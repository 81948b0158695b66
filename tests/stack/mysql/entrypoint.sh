#!/bin/bash
# Entrypoint of the backout test stack's MariaDB image. Mirrors the official mysql
# image's conventions: on first start (empty datadir) it initialises the datadir, sets
# the root password and creates MYSQL_DATABASE and MYSQL_USER/MYSQL_PASSWORD, then runs
# /docker-entrypoint-initdb.d/*.sql and *.sh. No password ever appears in an argv.
set -euo pipefail

DATADIR=/var/lib/mysql
INIT_SOCKET=/run/mysqld/init.sock

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) [entrypoint] $*"; }
die() { log "ERROR: $*"; exit 1; }

# Official image names first, the MARIADB_* aliases as a fallback.
MYSQL_ROOT_PASSWORD="${MYSQL_ROOT_PASSWORD:-${MARIADB_ROOT_PASSWORD:-}}"
MYSQL_DATABASE="${MYSQL_DATABASE:-${MARIADB_DATABASE:-}}"
MYSQL_USER="${MYSQL_USER:-${MARIADB_USER:-}}"
MYSQL_PASSWORD="${MYSQL_PASSWORD:-${MARIADB_PASSWORD:-}}"
MYSQL_ROOT_HOST="${MYSQL_ROOT_HOST:-%}"

if [ "${1:-}" != "mariadbd" ] && [ "${1:-}" != "mysqld" ]; then
    exec "$@"
fi
shift

mkdir -p /run/mysqld
chown mysql:mysql /run/mysqld
[ "$(stat -c %U "$DATADIR")" = mysql ] || chown -R mysql:mysql "$DATADIR"

# Credentials for the healthcheck (mariadb-admin --defaults-extra-file=...): a file
# readable by root only, so the password is in neither argv nor the image.
umask 077
printf '[client]\nuser=root\npassword="%s"\n' "${MYSQL_ROOT_PASSWORD//\"/\\\"}" > /etc/mysql/healthcheck.cnf
umask 022

sql_escape() { local s=${1//\\/\\\\}; printf '%s' "${s//\'/\'\'}"; }

if [ ! -d "$DATADIR/mysql" ]; then
    if [ -z "$MYSQL_ROOT_PASSWORD" ] && [ -z "${MYSQL_ALLOW_EMPTY_PASSWORD:-}" ]; then
        die "database is uninitialised and MYSQL_ROOT_PASSWORD is not set (or set MYSQL_ALLOW_EMPTY_PASSWORD=yes)"
    fi
    log "initialising datadir $DATADIR"
    mariadb-install-db --user=mysql --datadir="$DATADIR" --skip-test-db \
        --auth-root-authentication-method=normal --cross-bootstrap \
        --skip-name-resolve --rpm >/tmp/install-db.log 2>&1 \
        || { cat /tmp/install-db.log; die "mariadb-install-db failed"; }

    # Temporary server: socket only, no binlog, so clients see no half-initialised server.
    mariadbd --user=mysql --datadir="$DATADIR" --skip-networking --skip-log-bin \
        --socket="$INIT_SOCKET" "$@" &
    pid=$!
    for _ in $(seq 1 60); do
        mariadb-admin --socket="$INIT_SOCKET" -uroot --silent ping >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || die "temporary server died during initialisation"
        sleep 0.5
    done
    mariadb-admin --socket="$INIT_SOCKET" -uroot --silent ping >/dev/null 2>&1 || die "temporary server did not start"

    root_pw=$(sql_escape "$MYSQL_ROOT_PASSWORD")
    root_host=$(sql_escape "$MYSQL_ROOT_HOST")
    {
        echo "SET @@SESSION.SQL_LOG_BIN=0;"
        # Only root@localhost and root@MYSQL_ROOT_HOST: drop anonymous users and the
        # password-less root@127.0.0.1 / ::1 / <hostname> that install-db may create.
        echo "DELETE FROM mysql.global_priv WHERE User = '' OR (User = 'root' AND Host <> 'localhost');"
        echo "DELETE FROM mysql.proxies_priv WHERE Host <> 'localhost';"
        echo "FLUSH PRIVILEGES;"
        echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '${root_pw}';"
        if [ "$MYSQL_ROOT_HOST" != localhost ]; then
            echo "CREATE USER IF NOT EXISTS 'root'@'${root_host}' IDENTIFIED BY '${root_pw}';"
            echo "GRANT ALL ON *.* TO 'root'@'${root_host}' WITH GRANT OPTION;"
        fi
        if [ -n "$MYSQL_DATABASE" ]; then
            echo "CREATE DATABASE IF NOT EXISTS \`${MYSQL_DATABASE//\`/\`\`}\`;"
        fi
        if [ -n "$MYSQL_USER" ]; then
            [ -n "$MYSQL_PASSWORD" ] || die "MYSQL_USER is set but MYSQL_PASSWORD is not"
            echo "CREATE USER IF NOT EXISTS '$(sql_escape "$MYSQL_USER")'@'%' IDENTIFIED BY '$(sql_escape "$MYSQL_PASSWORD")';"
            if [ -n "$MYSQL_DATABASE" ]; then
                echo "GRANT ALL ON \`${MYSQL_DATABASE//\`/\`\`}\`.* TO '$(sql_escape "$MYSQL_USER")'@'%';"
            fi
        fi
        echo "FLUSH PRIVILEGES;"
    } | mariadb --socket="$INIT_SOCKET" -uroot

    export MYSQL_PWD="$MYSQL_ROOT_PASSWORD"
    shopt -s nullglob
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sql) log "running $f"; mariadb --socket="$INIT_SOCKET" -uroot ${MYSQL_DATABASE:+"$MYSQL_DATABASE"} < "$f" ;;
            *.sh) log "running $f"; . "$f" ;;
            *) log "ignoring $f" ;;
        esac
    done
    shopt -u nullglob
    unset MYSQL_PWD

    kill -TERM "$pid"
    wait "$pid" || true
    log "initialisation done"
fi

exec mariadbd --user=mysql "$@"
