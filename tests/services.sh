#!/usr/bin/env bash
# Make sure the real Redis and PostgreSQL the multi-instance tests talk to are up: the
# machine's own when they answer, otherwise start the locally installed servers. Run by
# `make test`, so the README's test command needs no step done by hand.
set -uo pipefail
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
DATABASE_URL="${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"

if ! redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
    if command -v redis-server >/dev/null; then
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
        for _ in $(seq 50); do redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 && break; sleep 0.1; done
    else
        echo "services: no Redis at $REDIS_URL and redis-server is not installed (apt-get install redis-server)" >&2
    fi
fi

if ! pg_isready -q -d "$DATABASE_URL" 2>/dev/null; then
    if ls /etc/postgresql >/dev/null 2>&1; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
        for _ in $(seq 50); do pg_isready -q -d "$DATABASE_URL" && break; sleep 0.2; done
    else
        echo "services: no PostgreSQL at $DATABASE_URL and none installed (apt-get install postgresql)" >&2
    fi
fi
# Never fail here: the tests themselves skip, or fail when METERKIT_REQUIRE_* says they must run.
exit 0
