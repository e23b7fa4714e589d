#!/usr/bin/env bash
# The main job: a throwaway cluster with llm_gateway and a provider, then examples.
#
#   bash test/run-demo.sh            run the examples, then open psql if interactive
#   bash test/run-demo.sh stop       stop the demo cluster and mock provider
#
# Installs what is missing, builds, installs, (re)creates a cluster under
# tmp/demo owned by an unprivileged user on a free port, starts the bundled
# mock provider (or uses Anthropic/OpenAI when ANTHROPIC_API_KEY or
# OPENAI_API_KEY is set), creates the extension and runs test/demo.sql.
# A second run stops and replaces what the first one made.

source "$(dirname "$0")/lib.sh"

DEMO="$LLM_TMP/demo"

stop_demo() {
    if [ -f "$DEMO/data/postmaster.pid" ]; then
        log "stopping the previous demo cluster"
        as_run_user pg_ctl -D "$DEMO/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [ -f "$DEMO/mock.pid" ]; then
        kill "$(cat "$DEMO/mock.pid")" 2>/dev/null || true
        rm -f "$DEMO/mock.pid"
    fi
}

if [ "${1:-}" = stop ]; then
    setup_run_user
    stop_demo
    exit 0
fi

ensure_packages
build_install
setup_run_user
stop_demo
rm -rf "$DEMO"
mkdir -p "$DEMO"
[ "$(id -u)" = 0 ] && chown "$RUN_USER" "$DEMO"

log "creating a cluster in $DEMO/data"
make_cluster "$DEMO"

if [ -z "${ANTHROPIC_API_KEY:-}${OPENAI_API_KEY:-}" ]; then
    start_mock "$DEMO/mock.log"
    echo "$MOCK_PID" >"$DEMO/mock.pid"
    log "mock provider on 127.0.0.1:$MOCK_PORT"
fi

as_run_user pg_ctl -D "$DEMO/data" -l "$DEMO/server.log" -w start >/dev/null ||
    die "server did not start: $(tail -20 "$DEMO/server.log")"

PSQL=(psql -X -h "$DEMO" -p "$PORT" -U postgres -d postgres)
as_run_user "${PSQL[@]}" -q -v ON_ERROR_STOP=1 \
    -v mock_port="${MOCK_PORT:-}" \
    -v anthropic_model="${ANTHROPIC_MODEL:-claude-3-5-haiku-latest}" \
    -v openai_model="${OPENAI_MODEL:-gpt-4o-mini}" \
    -f "$LLM_ROOT/test/demo.sql"

echo
echo "Demo cluster running.  Connect:  ${PSQL[*]}"
echo "Stop it:                         bash test/run-demo.sh stop"
if [ -t 0 ] && [ -t 1 ]; then
    exec "${PSQL[@]}"
fi
