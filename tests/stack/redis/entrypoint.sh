#!/bin/bash
# Entrypoint of the backout test stack's Redis image: writes /run/redis/redis.conf
# from REDIS_PASSWORD and REDIS_APPENDONLY (yes|no, default no), then runs
# redis-server as the redis user with /data as its working directory.
set -euo pipefail

if [ "${1:-}" != "redis-server" ]; then
    exec "$@"
fi
shift

appendonly="${REDIS_APPENDONLY:-no}"
case "$appendonly" in yes|no) ;; *) echo "REDIS_APPENDONLY must be yes or no, not '$appendonly'" >&2; exit 1 ;; esac

mkdir -p /run/redis /data
chown redis:redis /run/redis
[ "$(stat -c %U /data)" = redis ] || chown -R redis:redis /data

umask 077
conf=/run/redis/redis.conf
{
    echo "bind 0.0.0.0"
    echo "port 6379"
    echo "protected-mode no"
    echo "daemonize no"
    echo "dir /data"
    echo "dbfilename dump.rdb"
    echo "save 3600 1 300 100 60 10000"
    echo "appendonly ${appendonly}"
    echo "appendfilename appendonly.aof"
    echo "appenddirname appendonlydir"
    echo "loglevel notice"
    echo "logfile \"\""
    if [ -n "${REDIS_PASSWORD:-}" ]; then
        pw=${REDIS_PASSWORD//\\/\\\\}
        echo "requirepass \"${pw//\"/\\\"}\""
    fi
} > "$conf"
chown redis:redis "$conf"
umask 022

exec setpriv --reuid=redis --regid=redis --init-groups redis-server "$conf" "$@"
