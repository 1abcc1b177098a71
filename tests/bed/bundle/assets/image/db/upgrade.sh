#!/bin/sh
# harborctl test bed: Harbor's make/photon/db/upgrade.sh: a real pg_upgrade, then keep the
# old cluster's pg_hba.conf. The old binaries are --old-bindir (the real older major:
# 13 -> 14, 14 -> 15, 15 -> 18; 2.3-2.6's "9.6 -> 13" is 13 -> 13).
set -e
OLD_BINDIR=""; OLD_DATADIR=""; NEW_DATADIR=""
while [ $# -gt 0 ]; do
    case $1 in
        --old-bindir) OLD_BINDIR=$2; shift 2;;
        --old-datadir) OLD_DATADIR=$2; shift 2;;
        --new-datadir) NEW_DATADIR=$2; shift 2;;
        *) echo "upgrade.sh: unknown argument $1" >&2; exit 2;;
    esac
done
NEW_BINDIR=$(dirname "$(command -v postgres)")
# Test-bed fault switch: /data/bed-faults/pg-upgrade on the host (empty, or naming this
# release, one a line) makes this pg_upgrade fail for real (no usable socket directory).
fault=/harbor-bed-faults/pg-upgrade
if [ -f "$fault" ] && { [ ! -s "$fault" ] || grep -qx "$HARBOR_VERSION" "$fault"; }; then
    echo "harbor-bed fault pg-upgrade: pg_upgrade gets a socket directory that does not exist"
    PG_UPGRADE_ARGS="$PG_UPGRADE_ARGS --socketdir=/nonexistent/harbor-bed-fault"
fi
work=$(mktemp -d /tmp/pg_upgrade.XXXXXX)
cd "$work"
pg_upgrade --old-bindir "$OLD_BINDIR" --new-bindir "$NEW_BINDIR" \
    --old-datadir "$OLD_DATADIR" --new-datadir "$NEW_DATADIR" -U postgres $PG_UPGRADE_ARGS
cp "$OLD_DATADIR/pg_hba.conf" "$NEW_DATADIR/pg_hba.conf"
if [ "$HARBOR_DB_REFRESH_COLLATION" = "1" ]; then
    echo "refresh collation version metadata on all connectable databases."
    pg_ctl -D "$NEW_DATADIR" -o "-c listen_addresses=''" -w start \
        || { echo "failed to start the new cluster for collation version refresh."; exit 1; }
    for db in $(psql -U postgres -tAc "SELECT datname FROM pg_database WHERE datallowconn"); do
        psql -U postgres -q -d "$db" -c "ALTER DATABASE \"$db\" REFRESH COLLATION VERSION" >/dev/null
    done
    pg_ctl -D "$NEW_DATADIR" -m fast -w stop
fi
cd /
rm -rf "$work"
