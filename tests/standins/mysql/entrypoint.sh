#!/bin/bash
# The official images' file_env: VAR_FILE names a file whose content (trailing
# newlines dropped) becomes VAR, for this process only (docker exec still sees the
# container's own environment: VAR_FILE, not VAR).
set -euo pipefail
for var in MYSQL_ROOT_PASSWORD MYSQL_PASSWORD MYSQL_USER MYSQL_DATABASE \
           MARIADB_ROOT_PASSWORD MARIADB_PASSWORD MARIADB_USER MARIADB_DATABASE; do
    file_var="${var}_FILE"
    if [ -n "${!file_var:-}" ]; then
        export "$var"="$(< "${!file_var}")"
        unset "$file_var"
    fi
done
# A command of options only runs the server with them, as in the official images.
if [ "${1:0:1}" = "-" ]; then
    set -- mariadbd "$@"
fi
exec docker-entrypoint.sh "$@"
