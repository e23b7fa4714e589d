#!/usr/bin/env bash
# make bench: the gateway's performance figures, measured in one run.
#
#  1. Per-call overhead: sequential llm_messages() calls against the mock at
#     zero latency, timed inside the server around each call, against a
#     direct keep-alive libcurl client sending the same body to the same
#     mock, in alternating rounds.  Overhead = gateway - direct (median and
#     p99 of the pooled rounds, and the median of the per-round medians'
#     differences), for the default settings (the pending row flushed
#     before the request leaves, no polling) and for the opt-ins that trade
#     a guarantee or CPU for latency (llm.durable_before_send = off: the
#     log flusher; llm.poll_us = 1000: polling; both).
#  2. Concurrency: pgbench, 64 clients calling llm_complete() against the
#     mock with 50 ms latency, for a fixed time; ratio to the ideal
#     64 / 0.05 s = 1,280 calls/s, the error count, and the CPU time the
#     worker (and the log flusher) used per call, from /proc.
#  3. Batch inference: one pipelined statement of 10,000 rows against the
#     mock at 200 ms (concurrency 256), next to a serial statement and 64
#     sessions; worker CPU per call; the backend's memory over 100,000 rows
#     (see the section below for its knobs).
#  4. Quotas: the worker time admission and settling take per call
#     (llm.gateway_status().quota_check_us over the run) with four quotas
#     applying to every call (role, alias, tag, all), pgbench 64 clients
#     against the mock at 50 ms; and in the same run what the usage rollup
#     (llm.gateway_status().rollup_us) costs per call.
#  6. Conversations (run before 5): one statement continuing 256
#     conversations at 200 ms (concurrency 256), three rounds, calls/s
#     against the ideal; the backend time of llm_chat against llm_complete
#     at zero latency, serial, over 200 calls of one growing conversation;
#     and one llm_chat on a conversation of BENCH_CHAT_TURNS stored turns
#     (default 10,000) against one of 10 turns, both fitted to 2,000 tokens.
#  5. Usage views over a big log: BENCH_LOG_ROWS (default 10,000,000) rows
#     of llm.requests over 30 days, with their rollup; a day of
#     llm.usage_daily read through the view, against the same figures
#     summed from llm.requests (what a view over the log would do).
#
# Results go to stdout and tmp/bench/results.txt.  Sizes can be changed
# with BENCH_CALLS (default 3000 per configuration), BENCH_ROUNDS (default
# 10) and BENCH_SECONDS (default 15).

source "$(dirname "$0")/../lib.sh"

CALLS=${BENCH_CALLS:-3000}
SECONDS_RUN=${BENCH_SECONDS:-15}
CLIENTS=64
LATENCY_MS=50

# takes turns with test runs from other checkouts: both install the extension
exec 9>/tmp/llm_gateway_test.lock
flock 9

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
as_run_user "${PSQL[@]}" -c "CREATE TABLE bench_lat (config text, round int, kind text, us float8)"

log "warming up"
"$B/curl_client" "http://127.0.0.1:$MOCK_PORT/v1/messages" "$B/body.json" 300 \
    "x-api-key: bench-key" "anthropic-version: 2023-06-01" >/dev/null
as_run_user "${PSQL[@]}" -c "SELECT count(llm_messages('bench', '[{\"role\": \"user\", \"content\": \"benchmark call\"}]')) FROM generate_series(1, 300)" >/dev/null

# set_config SETTING...: ALTER SYSTEM each "name = value" (or RESET all), reload,
# and let the worker take it before the next round is timed
set_config() {
    local args=(-c "ALTER SYSTEM RESET ALL") kv
    for kv in "$@"; do args+=(-c "ALTER SYSTEM SET ${kv%% = *} = '${kv#* = }'"); done
    as_run_user "${PSQL[@]}" "${args[@]}" -c "SELECT pg_reload_conf()" >/dev/null
    as_run_user "${PSQL[@]}" -c "SELECT count(llm_messages('bench', '[{\"role\": \"user\", \"content\": \"warm-up\"}]')) FROM generate_series(1, 50)" >/dev/null
}
gateway_round() {	# gateway_round CONFIG ROUND
    as_run_user "${PSQL[@]}" <<SQL
DO \$\$
DECLARE t0 timestamptz; r jsonb;
BEGIN
    FOR i IN 1..$PER_ROUND LOOP
        t0 := clock_timestamp();
        r := llm_messages('bench', '[{"role": "user", "content": "benchmark call"}]');
        INSERT INTO bench_lat VALUES ('$1', $2, 'gateway', extract(epoch FROM clock_timestamp() - t0) * 1e6);
    END LOOP;
END \$\$;
SQL
}
direct_round() {	# direct_round CONFIG ROUND
    rm -f "$B/direct.lat"
    LAT_FILE="$B/direct.lat" "$B/curl_client" "http://127.0.0.1:$MOCK_PORT/v1/messages" "$B/body.json" \
        "$PER_ROUND" "x-api-key: bench-key" "anthropic-version: 2023-06-01" >/dev/null
    [ "$(id -u)" = 0 ] && chown "$RUN_USER" "$B/direct.lat"
    as_run_user "${PSQL[@]}" -c "\\copy bench_lat (us) FROM '$B/direct.lat'" \
        -c "UPDATE bench_lat SET config = '$1', round = $2, kind = 'direct' WHERE config IS NULL" >/dev/null
}

# Each round measures every configuration, direct then gateway, so a drift
# of the machine (virtual CPUs here wake at very different speeds from one
# minute to the next) touches all sides alike: the default settings, and
# the settings that trade latency for something else.
ROUNDS=${BENCH_ROUNDS:-10}
PER_ROUND=$(( (CALLS + ROUNDS - 1) / ROUNDS ))
CONFIGS=("default" "llm.durable_before_send = off" "llm.poll_us = 1000"
         "llm.durable_before_send = off; llm.poll_us = 1000")
log "overhead: ${#CONFIGS[@]} configurations, $ROUNDS rounds of $PER_ROUND sequential calls each way"
for r in $(seq 1 "$ROUNDS"); do
    for config in "${CONFIGS[@]}"; do
        if [ "$config" = default ]; then set_config; else
            IFS=';' read -r -a kvs <<<"$config"; set_config "${kvs[@]# }"; fi
        direct_round "$config" "$r"
        gateway_round "$config" "$r"
    done
done
set_config
overhead_report() {
    as_run_user "${PSQL[@]}" -F '|' <<'SQL'
WITH p AS (
    SELECT config, kind,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY us) AS med,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY us) AS p99
      FROM bench_lat GROUP BY config, kind),
r AS (
    SELECT config, round, kind, percentile_cont(0.5) WITHIN GROUP (ORDER BY us) AS med
      FROM bench_lat GROUP BY config, round, kind),
rd AS (
    SELECT g.config, percentile_cont(0.5) WITHIN GROUP (ORDER BY g.med - d.med) AS round_med
      FROM r g JOIN r d ON d.config = g.config AND d.round = g.round AND d.kind = 'direct'
     WHERE g.kind = 'gateway' GROUP BY g.config)
SELECT g.config, round(d.med::numeric, 1), round(d.p99::numeric, 1), round(g.med::numeric, 1),
       round(g.p99::numeric, 1), round((g.med - d.med)::numeric, 1), round((g.p99 - d.p99)::numeric, 1),
       round(rd.round_med::numeric, 1)
  FROM p g JOIN p d ON d.config = g.config AND d.kind = 'direct' JOIN rd ON rd.config = g.config
 WHERE g.kind = 'gateway'
 ORDER BY g.config = 'default' DESC, g.config;
SQL
}

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
# cpu_ticks PID: user + system CPU time of a process, in clock ticks
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
read -r wpid fpid < <(as_run_user "${PSQL[@]}" -F ' ' -c "SELECT worker_pid, coalesce(flusher_pid, 0) FROM llm.gateway_status()")
w0=$(cpu_ticks "$wpid"); f0=$(cpu_ticks "$fpid")
as_run_user pgbench -n -h "$B" -p "$PORT" -U postgres -c "$CLIENTS" -j 4 -T "$SECONDS_RUN" \
    -f "$B/pgbench.sql" postgres >"$B/pgbench.log" 2>&1 || true
w1=$(cpu_ticks "$wpid"); f1=$(cpu_ticks "$fpid")
hz=$(getconf CLK_TCK)
tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$B/pgbench.log" | head -1)
failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$B/pgbench.log")
processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$B/pgbench.log")
maxin=$(python3 -c "import json,urllib.request;print(json.load(urllib.request.urlopen('http://127.0.0.1:$MOCK_PORT/_mock/stats'))['max_in_flight'])")
ideal=$(echo "$CLIENTS * 1000 / $LATENCY_MS" | bc -l)
errors=$(as_run_user "${PSQL[@]}" -c "SELECT count(*) FROM llm.requests WHERE status <> 'ok'")

{
    echo "llm_gateway benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores)"
    echo "overhead: sequential llm_messages() minus a direct keep-alive libcurl client, same mock, $ROUNDS interleaved rounds of $PER_ROUND calls each way"
    printf '  %-30s %19s %19s %19s %10s\n' configuration "direct med / p99" "gateway med / p99" "overhead med / p99" "per-round"
    overhead_report | while IFS='|' read -r cfg dmed dp99 gmed gp99 omed op99 rmed; do
        printf '  %-30s %8s / %8s %8s / %8s %8s / %8s %10s\n' "$cfg" "$dmed" "$dp99" "$gmed" "$gp99" "$omed" "$op99" "$rmed"
    done
    echo "  (us; target: default median overhead <= 100 us)"
    printf 'throughput %d clients, %d ms latency: %.1f calls/s = %.1f%% of ideal %.0f/s (target >= 85%%)\n' \
        "$CLIENTS" "$LATENCY_MS" "${tps:-0}" "$(echo "${tps:-0} * 100 / $ideal" | bc -l)" "$ideal"
    echo "           processed ${processed:-0}, pgbench failures ${failed:-?}, non-ok log rows $errors, provider max in flight $maxin"
    printf 'worker CPU per call at load: %.1f us (target <= 100 us); log flusher: %.1f us\n' \
        "$(echo "($w1 - $w0) * 1000000 / $hz / ${processed:-1}" | bc -l)" \
        "$(echo "($f1 - $f0) * 1000000 / $hz / ${processed:-1}" | bc -l)"
} | tee "$B/results.txt"

# 3. Batch inference: one statement over BENCH_ROWS rows (default 10,000)
#    with llm.statement_concurrency = 256 against the mock at 200 ms, in the
#    same run as a serial statement (BENCH_SERIAL_ROWS rows, default 25) and
#    as 64 sessions making serial calls (pgbench); the worker's (and
#    flusher's) CPU per call during the pipelined statement; and the calling
#    backend's private memory (RssAnon, sampled) over BENCH_MEMORY_ROWS
#    rows (default 100,000) against a mock without latency, next to a
#    statement of a tenth as many rows.
ROWS=${BENCH_ROWS:-10000}
SERIAL_ROWS=${BENCH_SERIAL_ROWS:-25}
MEM_ROWS=${BENCH_MEMORY_ROWS:-100000}
BATCH_LATENCY_MS=200
CONC=256
mock_config() {	# mock_config LATENCY_MS: reset the mock, set its latency
    python3 - "$MOCK_PORT" "$1" <<'PY'
import json, sys, urllib.request
port, lat = sys.argv[1], int(sys.argv[2])
for path, body in (("/_mock/reset", {}), ("/_mock/config", {"latency_ms": lat})):
    urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:%s%s" % (port, path),
        data=json.dumps(body).encode(), method="POST", headers={"content-type": "application/json"})).read()
PY
}
# seconds STATEMENT...: wall time of psql running the statements
seconds() {
    local t0 t1
    t0=$(date +%s.%N)
    as_run_user "${PSQL[@]}" "$@" >/dev/null
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}
# the rows come from a table: generate_series() would keep them all in its tuplestore
as_run_user "${PSQL[@]}" -c "CREATE TABLE bench_rows AS SELECT i FROM generate_series(1, GREATEST($MEM_ROWS, $ROWS)) i" \
    -c "ANALYZE bench_rows" >/dev/null
batch_sql() {	# batch_sql ROWS: the pipelined statement (a subquery, so count() is not the call's aggregate)
    echo "SELECT count(a) FROM (SELECT llm_complete('bench', 'batch row ' || i) AS a FROM bench_rows WHERE i <= $1) s"
}
log "batch: $ROWS rows at ${BATCH_LATENCY_MS} ms, concurrency $CONC; serial $SERIAL_ROWS rows; 64 sessions"
mock_config "$BATCH_LATENCY_MS"
serial_s=$(seconds -c "SET llm.statement_concurrency = 1" -c "$(batch_sql "$SERIAL_ROWS")")
echo "SELECT llm_complete('bench', 'session call');" >"$B/pgbench_batch.sql"
[ "$(id -u)" = 0 ] && chown "$RUN_USER" "$B/pgbench_batch.sql"
as_run_user pgbench -n -h "$B" -p "$PORT" -U postgres -c 64 -j 4 -T 10 \
    -f "$B/pgbench_batch.sql" postgres >"$B/pgbench_batch.log" 2>&1 || true
sessions_tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$B/pgbench_batch.log" | head -1)
mock_config "$BATCH_LATENCY_MS"
w0=$(cpu_ticks "$wpid"); f0=$(cpu_ticks "$fpid")
batch_s=$(seconds -c "SET llm.statement_concurrency = $CONC" -c "$(batch_sql "$ROWS")")
w1=$(cpu_ticks "$wpid"); f1=$(cpu_ticks "$fpid")
batch_max=$(python3 -c "import json,urllib.request;print(json.load(urllib.request.urlopen('http://127.0.0.1:$MOCK_PORT/_mock/stats'))['max_in_flight'])")
batch_errors=$(as_run_user "${PSQL[@]}" -c "SELECT count(*) FROM llm.requests WHERE status <> 'ok' AND request_body::text LIKE '%batch row %'")

# peak_anon ROWS: the largest RssAnon (kB) of the backend running the statement
peak_anon() {
    local pid peak=0 v
    PGAPPNAME=bench_memory as_run_user "${PSQL[@]}" -c "SET llm.statement_concurrency = $CONC" \
        -c "$(batch_sql "$1")" >/dev/null &
    local psql_pid=$!
    while kill -0 "$psql_pid" 2>/dev/null; do
        pid=$(as_run_user "${PSQL[@]}" -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'bench_memory'")
        if [ -n "$pid" ]; then
            v=$(awk '/^RssAnon/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
            [ "${v:-0}" -gt "$peak" ] && peak=$v
        fi
        sleep 0.2
    done
    wait "$psql_pid"
    echo "$peak"
}
mock_config 0
mem_small=$(peak_anon $((MEM_ROWS / 10)))
mem_large=$(peak_anon "$MEM_ROWS")

{
    ideal_b=$(echo "$CONC * 1000 / $BATCH_LATENCY_MS" | bc -l)
    rate=$(echo "$ROWS / $batch_s" | bc -l)
    serial_rate=$(echo "$SERIAL_ROWS / $serial_s" | bc -l)
    printf 'batch %d rows, %d ms latency, concurrency %d: %.1f s, %.1f calls/s = %.1f%% of ideal %.0f/s (target >= 90%%)\n' \
        "$ROWS" "$BATCH_LATENCY_MS" "$CONC" "$batch_s" "$rate" "$(echo "$rate * 100 / $ideal_b" | bc -l)" "$ideal_b"
    echo "      provider max in flight $batch_max, non-ok log rows $batch_errors"
    printf '      serial statement: %.2f calls/s (pipelined: %.0fx); 64 sessions: %.1f calls/s (pipelined: %.1fx)\n' \
        "$serial_rate" "$(echo "$rate / $serial_rate" | bc -l)" "${sessions_tps:-0}" \
        "$(echo "$rate / ${sessions_tps:-1}" | bc -l)"
    printf '      worker CPU per call: %.1f us (target <= 100 us); log flusher: %.1f us\n' \
        "$(echo "($w1 - $w0) * 1000000 / $hz / $ROWS" | bc -l)" \
        "$(echo "($f1 - $f0) * 1000000 / $hz / $ROWS" | bc -l)"
    printf '      backend private memory (peak RssAnon): %d kB over %d rows, %d kB over %d rows\n' \
        "$mem_small" $((MEM_ROWS / 10)) "$mem_large" "$MEM_ROWS"
} | tee -a "$B/results.txt"

log "quotas: four quotas on every call, $CLIENTS clients, ${LATENCY_MS} ms, 10 s"
as_run_user "${PSQL[@]}" <<SQL >/dev/null
SELECT llm.set_quota('bench_role', 'requests', 1e12, 'day', role_name => 'postgres');
SELECT llm.set_quota('bench_alias', 'total_tokens', 1e12, 'hour', alias => 'bench');
SELECT llm.set_quota('bench_tag', 'cost_usd', 1e6, 'month', tag_key => 'team', tag_value => 'bench');
SELECT llm.set_quota('bench_all', 'requests', 1e12, 'minute');
SQL
mock_config "$LATENCY_MS"
echo "SELECT llm_complete('bench', 'quota call', '{\"tags\": {\"team\": \"bench\"}}');" >"$B/pgbench_quota.sql"
[ "$(id -u)" = 0 ] && chown "$RUN_USER" "$B/pgbench_quota.sql"
# the first call loads the quotas and rebuilds their windows from the log: not a per-call cost
as_run_user "${PSQL[@]}" -c "SELECT llm_complete('bench', 'quota warm-up', '{\"tags\": {\"team\": \"bench\"}}')" >/dev/null
TIMINGS="SELECT quota_checked_calls, coalesce(quota_check_us, 0), rolled_up_calls, coalesce(rollup_us, 0) FROM llm.gateway_status()"
read -r qc0 qa0 rc0 ra0 < <(as_run_user "${PSQL[@]}" -F ' ' -c "$TIMINGS")
as_run_user pgbench -n -h "$B" -p "$PORT" -U postgres -c "$CLIENTS" -j 4 -T 10 \
    -f "$B/pgbench_quota.sql" postgres >"$B/pgbench_quota.log" 2>&1 || true
read -r qc1 qa1 rc1 ra1 < <(as_run_user "${PSQL[@]}" -F ' ' -c "$TIMINGS")
quota_refused=$(as_run_user "${PSQL[@]}" -c "SELECT count(*) FROM llm.requests WHERE error_code = 'LL014'")
{
    printf 'quota check (admission + settling, 4 quotas per call): %.2f us of worker CPU per call over %d calls (target < 10 us); refused %s\n' \
        "$(echo "($qa1 * $qc1 - $qa0 * $qc0) / ($qc1 - $qc0)" | bc -l)" $((qc1 - qc0)) "$quota_refused"
    printf 'usage rollup (aggregation + upsert in the completing transaction): %.2f us of worker CPU per call over %d calls\n' \
        "$(echo "($ra1 * $rc1 - $ra0 * $rc0) / ($rc1 - $rc0)" | bc -l)" $((rc1 - rc0))
} | tee -a "$B/results.txt"

# 6. Conversations.
CHAT_CONVS=256
CHAT_TURNS=${BENCH_CHAT_TURNS:-10000}
log "conversations: $CHAT_CONVS conversations at ${BATCH_LATENCY_MS} ms; serial overhead; a history of $CHAT_TURNS turns"
as_run_user "${PSQL[@]}" -c "SELECT count(llm.new_conversation('bench', NULL, '{\"title\": \"bench\"}')) FROM generate_series(1, $CHAT_CONVS)" >/dev/null
mock_config "$BATCH_LATENCY_MS"
chat_rates=""
for round in 1 2 3; do
    t=$(seconds -c "SET llm.statement_concurrency = $CONC" \
        -c "SELECT count(a) FROM (SELECT llm_chat(id, 'round $round question') AS a FROM llm.conversations WHERE title = 'bench') s")
    chat_rates="$chat_rates $(echo "$CHAT_CONVS / $t" | bc -l)"
done
chat_max=$(python3 -c "import json,urllib.request;print(json.load(urllib.request.urlopen('http://127.0.0.1:$MOCK_PORT/_mock/stats'))['max_in_flight'])")
mock_config 0
serial_conv=$(as_run_user "${PSQL[@]}" -c "SELECT llm.new_conversation('bench')")
as_run_user "${PSQL[@]}" -c "SELECT llm_complete('bench', 'warm')" -c "SELECT llm_chat($serial_conv, 'warm')" >/dev/null
chat_file="$B/chat_calls.sql"; complete_file="$B/complete_calls.sql"
for i in $(seq 1 200); do echo "SELECT llm_chat($serial_conv, 'serial question $i');"; done >"$chat_file"
for i in $(seq 1 200); do echo "SELECT llm_complete('bench', 'serial question $i');"; done >"$complete_file"
[ "$(id -u)" = 0 ] && chown "$RUN_USER" "$chat_file" "$complete_file"
complete_s=$(seconds -f "$complete_file")
chat_s=$(seconds -f "$chat_file")
# a long history: CHAT_TURNS stored turns (written directly), the context fitted to 2,000 tokens
long_conv=$(as_run_user "${PSQL[@]}" -c "SELECT llm.new_conversation('bench', NULL, '{\"context\": {\"budget_tokens\": 2000}}')")
short_conv=$(as_run_user "${PSQL[@]}" -c "SELECT llm.new_conversation('bench', NULL, '{\"context\": {\"budget_tokens\": 2000}}')")
as_run_user "${PSQL[@]}" >/dev/null <<SQL
INSERT INTO llm.conversation_turns (conversation, seq, role, content, bytes, starts_exchange)
SELECT c, s, CASE WHEN s % 2 = 1 THEN 'user' ELSE 'assistant' END, to_jsonb('stored turn ' || s || ' with some words in it'),
       octet_length(to_jsonb('stored turn ' || s || ' with some words in it')::text), s % 2 = 1
  FROM (VALUES ($long_conv, $CHAT_TURNS), ($short_conv, 10)) v(c, n), generate_series(1, n) s;
SQL
# one_chat_ms CONV: the median of 5 calls' time inside the server, in one
# session after a first call (which prepares the statements' plans)
one_chat_ms() {
    for i in 0 1 2 3 4 5; do
        echo "EXPLAIN (ANALYZE, FORMAT JSON) SELECT llm_chat($1, 'one more');"
    done | as_run_user "${PSQL[@]}" -f - |
        python3 -c 'import json,sys
d = json.JSONDecoder(); s = sys.stdin.read(); i = 0; out = []
while True:
    while i < len(s) and s[i].isspace(): i += 1
    if i >= len(s): break
    v, i = d.raw_decode(s, i); out.append(v[0]["Execution Time"])
print(sorted(out[1:])[2])'
}
long_ms=$(one_chat_ms "$long_conv")
short_ms=$(one_chat_ms "$short_conv")
{
    set -- $chat_rates
    # every conversation in flight at once: CHAT_CONVS calls per latency
    ideal_c=$(echo "$CHAT_CONVS * 1000 / $BATCH_LATENCY_MS" | bc -l)
    printf 'conversations: %d continued by one statement at %d ms: %.1f, %.1f, %.1f calls/s in rounds 1-3 = %.1f%%, %.1f%%, %.1f%% of ideal %.0f/s; provider max in flight %s\n' \
        "$CHAT_CONVS" "$BATCH_LATENCY_MS" "$1" "$2" "$3" "$(echo "$1 * 100 / $ideal_c" | bc -l)" \
        "$(echo "$2 * 100 / $ideal_c" | bc -l)" "$(echo "$3 * 100 / $ideal_c" | bc -l)" "$ideal_c" "$chat_max"
    printf '      serial, mock at 0 ms, 200 calls: llm_chat %.2f ms per call (history growing to 400 turns), llm_complete %.2f ms: +%.2f ms\n' \
        "$(echo "$chat_s * 1000 / 200" | bc -l)" "$(echo "$complete_s * 1000 / 200" | bc -l)" \
        "$(echo "($chat_s - $complete_s) * 1000 / 200" | bc -l)"
    printf '      one llm_chat (server time, median of 5) on %d stored turns: %.2f ms; on 10 turns: %.2f ms\n' \
        "$CHAT_TURNS" "$long_ms" "$short_ms"
} | tee -a "$B/results.txt"

# 5. The usage views do not scan the log.  Synthetic completed rows (8
# roles, aliases bulk0-3, 30 days) go straight into llm.requests, and their
# rollup is computed from them in SQL, as the worker would have kept it
# (test 025_usage checks the worker's rollup equals these sums); the
# rollup of the calls made above is the worker's own.
LOG_ROWS=${BENCH_LOG_ROWS:-10000000}
log "usage views: a day of llm.usage_daily with $LOG_ROWS rows in llm.requests"
t0=$(date +%s)
as_run_user "${PSQL[@]}" <<SQL >/dev/null
SET synchronous_commit = off;
SET maintenance_work_mem = '1GB';
INSERT INTO llm.requests (created_at, finished_at, status, alias, provider, upstream_model, role_name,
                          attempts, input_tokens, output_tokens, cost_usd, latency_ms, error_code)
SELECT t, t + interval '1 s', CASE WHEN i % 50 = 0 THEN 'error' ELSE 'ok' END,
       'bulk' || (i % 4), 'mock', 'model' || (i % 4), 'role' || (i % 8), 1,
       100 + i % 900, 20 + i % 300, (100 + i % 900) * 0.000003 + (20 + i % 300) * 0.000015,
       50 + (i % 2000), CASE WHEN i % 50 = 0 THEN 'LL005' END
  FROM generate_series(1, $LOG_ROWS) i,
       LATERAL (SELECT date_trunc('day', now()) - interval '29 days'
                       + (i::float8 / $LOG_ROWS) * interval '30 days' AS t) ts;
WITH b AS (
    SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
           role_name, alias, provider, upstream_model,
           CASE WHEN latency_ms < 1 THEN 1 ELSE floor(4 * ln(latency_ms) / ln(2))::int + 2 END AS bucket,
           count(*) AS calls, count(*) FILTER (WHERE status = 'ok') AS ok,
           count(*) FILTER (WHERE status = 'error') AS errors,
           sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd
      FROM llm.requests WHERE alias LIKE 'bulk%' GROUP BY 1, 2, 3, 4, 5, 6),
g AS (
    SELECT hour, role_name, alias, provider, upstream_model, sum(calls) AS calls, sum(ok) AS ok,
           sum(errors) AS errors, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
           sum(cost_usd) AS cost_usd,
           array_agg(calls ORDER BY bucket) AS counts, array_agg(bucket ORDER BY bucket) AS buckets
      FROM b GROUP BY 1, 2, 3, 4, 5)
INSERT INTO llm.usage_hourly (hour, role_name, alias, provider, upstream_model, calls, ok, errors,
                              error_classes, input_tokens, output_tokens, cost_usd, latency_hist)
SELECT hour, role_name, alias, provider, upstream_model, calls, ok, errors,
       CASE WHEN errors > 0 THEN jsonb_build_object('LL', errors) ELSE '{}' END,
       input_tokens, output_tokens, cost_usd,
       ARRAY(SELECT coalesce(counts[array_position(buckets, k)], 0)
               FROM generate_series(1, buckets[array_upper(buckets, 1)]) k)
  FROM g;
ANALYZE llm.requests;
ANALYZE llm.usage_hourly;
SQL
fill_s=$(( $(date +%s) - t0 ))
# exec_ms QUERY: the median of 5 executions' "Execution Time" (after one warm-up)
exec_ms() {
    local i
    for i in 0 1 2 3 4 5; do
        as_run_user "${PSQL[@]}" -c "EXPLAIN (ANALYZE, FORMAT JSON) $1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Execution Time"])'
    done | tail -n 5 | sort -g | sed -n 3p
}
DAY="(now() AT TIME ZONE 'UTC')::date"
view_ms=$(exec_ms "SELECT * FROM llm.usage_daily WHERE day = $DAY")
log_ms=$(exec_ms "SELECT role_name, alias, provider, upstream_model, count(*), count(*) FILTER (WHERE status = 'error'),
    sum(input_tokens), sum(output_tokens), sum(cost_usd),
    percentile_cont(array[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_ms)
  FROM llm.requests WHERE created_at >= $DAY::timestamp AT TIME ZONE 'UTC'
   AND created_at < ($DAY + 1)::timestamp AT TIME ZONE 'UTC'
 GROUP BY 1, 2, 3, 4")
read -r rows_log rows_rollup day_rows < <(as_run_user "${PSQL[@]}" -F ' ' -c "SELECT (SELECT count(*) FROM llm.requests), (SELECT count(*) FROM llm.usage_hourly), (SELECT sum(calls) FROM llm.usage_daily WHERE day = $DAY)")
{
    printf 'usage views: a day of llm.usage_daily (%s calls) reads in %.2f ms with %s rows in llm.requests (%s rollup rows; filled in %d s);\n' \
        "$day_rows" "$view_ms" "$rows_log" "$rows_rollup" "$fill_s"
    printf '      the same day summed from llm.requests takes %.1f ms: %.0fx\n' "$log_ms" "$(echo "$log_ms / $view_ms" | bc -l)"
} | tee -a "$B/results.txt"
