#!/bin/sh
# harborctl test bed: initPG as Harbor's make/photon/db/initdb.sh does it (busybox sh here).
# Stand-in differences: --locale=C.UTF-8 (no en_US locale in the slim image); the auth method
# comes from HARBOR_DB_AUTH (md5 up to 2.15.1, scram-sha-256 in 2.15.2).

# initPG DIR RUN_INIT_SQL [EXTRA_INITDB_ARGS]
initPG() {
    dir=$1
    run_sql=$2
    initdb -D "$dir" -U postgres -E UTF-8 --locale=C.UTF-8 $3 $POSTGRES_INITDB_ARGS
    if [ -n "$POSTGRES_PASSWORD" ]; then
        authMethod=${HARBOR_DB_AUTH:-md5}
    else
        echo "WARNING: No password has been set for the database." >&2
        authMethod=trust
    fi
    printf '\nhost all all all %s\n' "$authMethod" >> "$dir/pg_hba.conf"
    pg_ctl -D "$dir" -o "-c listen_addresses=''" -w start
    if [ -n "$POSTGRES_PASSWORD" ]; then
        # The password travels on stdin, never on a command line.
        printf "ALTER USER postgres WITH SUPERUSER PASSWORD '%s';\n" \
            "$(printf %s "$POSTGRES_PASSWORD" | sed "s/'/''/g")" \
            | psql -v ON_ERROR_STOP=1 -q --username postgres
    fi
    if [ "$run_sql" = "true" ]; then
        for f in /docker-entrypoint-initdb.d/*; do
            case "$f" in
                *.sql) echo "$0: running $f"; psql -v ON_ERROR_STOP=1 -q --username postgres -f "$f" ;;
                *) echo "$0: ignoring $f" ;;
            esac
        done
    fi
    pg_ctl -D "$dir" -m fast -w stop
    echo
    echo 'PostgreSQL init process complete; ready for start up.'
    echo
}
