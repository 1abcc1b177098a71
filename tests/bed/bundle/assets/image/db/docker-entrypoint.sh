#!/bin/sh
# harborctl test bed: harbor-db's entrypoint, with the rules of Harbor's
# make/photon/db/docker-entrypoint.sh for each generation (HARBOR_DB_ENTRYPOINT):
#   v2.0  (2.0-2.2)   data directly in $PGDATA (PG_VERSION at the root); initdb if absent.
#   v2.3  (2.3-2.6)   args "96" "13": converts a root (9.6) layout into $PGDATA/pg13, then
#                     deletes everything in $PGDATA except pg13.
#   v2.7  (2.7+)      args OLD NEW: refuses a root (9.6) layout; converts pgOLD -> pgNEW;
#                     any other case with no pgNEW: a NEW EMPTY cluster in pgNEW (the trap).
# Real majors stand in for Harbor's (9.6 and 13 -> 13, 14 and 15 -> 15, 18 -> 17): PATH names
# the new one, HARBOR_DB_OLD_BINDIR the old one, so pg_upgrade runs between real majors where
# they differ (13 -> 15 in 2.9/2.10, 15 -> 17 in 2.15.2); the directory names and the rules
# are Harbor's.
set -e
cd /harbor/db
. ./initdb.sh

PG_VERSION_OLD=$1
PG_VERSION_NEW=$2
PGBIN=$(dirname "$(command -v postgres)")
PGBINOLD=${HARBOR_DB_OLD_BINDIR:-$PGBIN}
MODE=${HARBOR_DB_ENTRYPOINT:-v2.7}

launch() {
    max=${POSTGRES_MAX_CONNECTIONS:-1024}
    if [ "$max" -le 0 ] || [ "$max" -gt 262143 ]; then max=262143; fi
    exec postgres -D "$1" -c max_connections="$max"
}

checksum_args() {
    # 2.15.2: keep the old cluster's checksum setting (PG18 would enable checksums).
    [ "$HARBOR_DB_CHECKSUM_PROBE" = "1" ] || return 0
    out=$(pg_controldata "$1") || { echo "failed to determine old cluster checksum setting: pg_controldata failed" >&2; exit 1; }
    sum=$(printf '%s\n' "$out" | sed -n 's/^Data page checksum version: *//p')
    case "$sum" in
        # PG18 needs the flag; the PG17 stand-in has no such option and no checksums by default.
        0) if initdb --help | grep -q -- --no-data-checksums; then echo "--no-data-checksums"; fi ;;
        [0-9]*) echo "" ;;
        *) echo "failed to determine old cluster checksum setting: unexpected pg_controldata output" >&2; exit 1 ;;
    esac
}

# Both converting generations: init the new cluster, start and stop the old one cleanly,
# pg_upgrade; on failure remove the half-made new cluster and stop.
upgrade_cluster() {  # OLD_DIR NEW_DIR INITDB_EXTRA
    initPG "$2" false "$3"
    set +e
    "$PGBINOLD/pg_ctl" -D "$1" -w -o "-p 5433 -c listen_addresses=''" start
    "$PGBINOLD/pg_ctl" -D "$1" -m fast -w stop
    /harbor/db/upgrade.sh --old-bindir "$PGBINOLD" --old-datadir "$1" --new-datadir "$2"
    if [ $? -ne 0 ]; then
        echo "remove the $2 after fail to upgrade."
        rm -rf "$2"
        exit 1
    fi
    set -e
}

case "$MODE" in
v2.0)
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        initPG "$PGDATA" true
    fi
    launch "$PGDATA"
    ;;
v2.3)
    PGDATAOLD=$PGDATA
    PGDATANEW=$PGDATA/pg$PG_VERSION_NEW
    if [ -n "$(ls -A "$PGDATA" 2>/dev/null)" ] && [ ! -d "$PGDATANEW" ]; then
        if [ ! -s "$PGDATAOLD/PG_VERSION" ]; then
            echo "incorrect data: $PGDATAOLD, make sure $PGDATAOLD is not empty and with PG_VERSION inside."
            exit 1
        fi
        upgrade_cluster "$PGDATAOLD" "$PGDATANEW" ""
        echo "remove the $PGDATAOLD after upgrade success."
        find "$PGDATA" -mindepth 1 -maxdepth 1 ! -name "pg$PG_VERSION_NEW" -exec rm -rf {} +
    elif [ -s "$PGDATANEW/PG_VERSION" ]; then
        echo "no need to upgrade postgres, launch it."
    else
        initPG "$PGDATANEW" true
    fi
    launch "$PGDATANEW"
    ;;
v2.7)
    PGDATAOLD=$PGDATA/pg$PG_VERSION_OLD
    PGDATANEW=$PGDATA/pg$PG_VERSION_NEW
    if [ -s "$PGDATA/PG_VERSION" ]; then
        echo "Upgrading from PostgreSQL 9.6 to PostgreSQL $PG_VERSION_NEW is not supported in the current Harbor release."
        echo "You should upgrade to previous Harbor firstly, then upgrade to current release."
        exit 1
    fi
    if [ ! -s "$PGDATANEW/PG_VERSION" ]; then
        if [ -n "$PG_VERSION_OLD" ] && [ -s "$PGDATAOLD/PG_VERSION" ]; then
            echo "upgrade DB from $PG_VERSION_OLD to $PG_VERSION_NEW"
            extra=$(checksum_args "$PGDATAOLD")  # an assignment, so set -e stops on failure
            upgrade_cluster "$PGDATAOLD" "$PGDATANEW" "$extra"
            echo "remove the $PGDATAOLD after upgrade success."
            rm -rf "$PGDATAOLD"
        else
            echo "init DB, DB version:$PG_VERSION_NEW"
            initPG "$PGDATANEW" true
        fi
    fi
    launch "$PGDATANEW"
    ;;
*)
    echo "harbor-db: unknown entrypoint generation $MODE" >&2
    exit 2
    ;;
esac
