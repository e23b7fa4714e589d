#!/usr/bin/env bash
# make bench: the gateway's performance figures, measured in one run.
#
#  1. Per-call overhead: sequential llm_messages() calls against the mock at
#     zero latency, timed inside the server around each call, against a
#     direct keep-alive libcurl client sending the same body to the same
#     mock.  Overhead = gateway - direct (median and p99).
#  2. Concurrency: pgbench, 64 clients calling llm_complete() against the
#     mock with 50 ms latency, for a fixed time; ratio to the ideal
#     64 / 0.05 s = 1,280 calls/s, and the error count.
#
# Results go to stdout and tmp/bench/results.txt.  Sizes can be changed
# with BENCH_CALLS (default 3000) and BENCH_SECONDS (default 15).

source "$(dirname "$0")/../lib.sh"

CALLS=${BENCH_CALLS:-3000}
SECONDS_RUN=${BENCH_SECONDS:-15}
CLIENTS=64
LATENCY_MS=50

ensure_packages
build_install
setup_run_user

B="$LLM_TMP/bench"
if [ -f "$B/data/postmaster.pid" ]; then
    as_run_user pg_ctl -D "$B/data" -m immediate -w stop >/dev/null 2>&1 || true
fi
rm -rf "$B"; mkdir -p "$B"
[ "$(id -u)" = 0 ] && chown "$RUN_USER" "$B"

cc -O2 -o "$B/curl_client" "$LLM_ROOT/test/bench/curl_client.c" -lcurl

make_cluster "$B" "max_connections = 200
${BENCH_CONF:-}"
start_mock "$B/mock.log"
trap 'stop_mock; as_run_user pg_ctl -D "$B/data" -m fast -w stop >/dev/null 2>&1 || true' EXIT
as_run_user pg_ctl -D "$B/data" -l "$B/server.log" -w start >/dev/null

PSQL=(psql -X -q -A -t -h "$B" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
as_run_user "${PSQL[@]}" <<SQL
CREATE EXTENSION llm_gateway;
SELECT llm.add_provider('mock', 'anthropic', 'http://127.0.0.1:$MOCK_PORT');
SELECT llm.set_credential('mock', 'bench-key');
SELECT llm.add_route('bench', 'mock', 'claude-mock');
SQL

# the exact body the gateway sends, for the direct client
as_run_user "${PSQL[@]}" -c "SELECT (llm.adapter_build_request('anthropic',
    '{\"messages\": [{\"role\": \"user\", \"content\": \"benchmark call\"}]}', 'claude-mock'))->'body'" \
    >"$B/body.json"

log "warming up"
"$B/curl_client" "http://127.0.0.1:$MOCK_PORT/v1/messages" "$B/body.json" 300 \
    "x-api-key: bench-key" "anthropic-version: 2023-06-01" >/dev/null
as_run_user "${PSQL[@]}" -c "SELECT count(llm_messages('bench', '[{\"role\": \"user\", \"content\": \"benchmark call\"}]')) FROM generate_series(1, 300)" >/dev/null

gateway_run() {
    as_run_user "${PSQL[@]}" <<SQL
CREATE TEMP TABLE lat (us float8);
DO \$\$
DECLARE t0 timestamptz; r jsonb;
BEGIN
    FOR i IN 1..$CALLS LOOP
        t0 := clock_timestamp();
        r := llm_messages('bench', '[{"role": "user", "content": "benchmark call"}]');
        INSERT INTO lat VALUES (extract(epoch FROM clock_timestamp() - t0) * 1e6);
    END LOOP;
END \$\$;
SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY us)::numeric, 1) || ' ' ||
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY us)::numeric, 1) FROM lat;
SQL
}
direct_run() {
    "$B/curl_client" "http://127.0.0.1:$MOCK_PORT/v1/messages" "$B/body.json" "$CALLS" \
        "x-api-key: bench-key" "anthropic-version: 2023-06-01"
}

log "overhead: $CALLS sequential calls each way"
read -r d1_med d1_p99 < <(direct_run)
read -r g_med g_p99 < <(gateway_run)
read -r d2_med d2_p99 < <(direct_run)
d_med=$(echo "($d1_med + $d2_med) / 2" | bc -l)
d_p99=$(echo "($d1_p99 + $d2_p99) / 2" | bc -l)

log "concurrency: $CLIENTS clients, ${LATENCY_MS} ms provider latency, ${SECONDS_RUN} s"
python3 - "$MOCK_PORT" "$LATENCY_MS" <<'PY'
import json, sys, urllib.request
port, lat = sys.argv[1], int(sys.argv[2])
for path, body in (("/_mock/reset", {}), ("/_mock/config", {"latency_ms": lat})):
    urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:%s%s" % (port, path),
        data=json.dumps(body).encode(), method="POST", headers={"content-type": "application/json"})).read()
PY
echo "SELECT llm_complete('bench', 'concurrent call');" >"$B/pgbench.sql"
[ "$(id -u)" = 0 ] && chown "$RUN_USER" "$B/pgbench.sql"
as_run_user pgbench -n -h "$B" -p "$PORT" -U postgres -c "$CLIENTS" -j 4 -T "$SECONDS_RUN" \
    -f "$B/pgbench.sql" postgres >"$B/pgbench.log" 2>&1 || true
tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$B/pgbench.log" | head -1)
failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$B/pgbench.log")
processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$B/pgbench.log")
maxin=$(python3 -c "import json,urllib.request;print(json.load(urllib.request.urlopen('http://127.0.0.1:$MOCK_PORT/_mock/stats'))['max_in_flight'])")
ideal=$(echo "$CLIENTS * 1000 / $LATENCY_MS" | bc -l)
errors=$(as_run_user "${PSQL[@]}" -c "SELECT count(*) FROM llm.requests WHERE status <> 'ok'")

{
    echo "llm_gateway benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores)"
    printf 'overhead   direct libcurl keep-alive: median %8.1f us  p99 %8.1f us\n' "$d_med" "$d_p99"
    printf '           llm_messages():            median %8.1f us  p99 %8.1f us\n' "$g_med" "$g_p99"
    printf '           gateway overhead:          median %8.1f us  p99 %8.1f us  (target: median <= 100 us)\n' \
        "$(echo "$g_med - $d_med" | bc -l)" "$(echo "$g_p99 - $d_p99" | bc -l)"
    printf 'throughput %d clients, %d ms latency: %.1f calls/s = %.1f%% of ideal %.0f/s (target >= 85%%)\n' \
        "$CLIENTS" "$LATENCY_MS" "${tps:-0}" "$(echo "${tps:-0} * 100 / $ideal" | bc -l)" "$ideal"
    echo "           processed ${processed:-0}, pgbench failures ${failed:-?}, non-ok log rows $errors, provider max in flight $maxin"
} | tee "$B/results.txt"
