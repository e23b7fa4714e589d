#!/usr/bin/env bash
# Coverage-guided fuzzing of the provider adapters with libFuzzer.
#
#   bash test/fuzz/run-fuzz.sh [RUNS]      (default 200000 inputs; make fuzz)
#
# Builds test/fuzz/fuzz_adapters.c with the adapter sources under
# -fsanitize=fuzzer-no-link into a shared library, seeds a corpus from the
# recorded fixtures in test/fixtures, and runs libFuzzer inside a
# single-user postgres process (the adapters need the server's jsonb).
# A crash leaves tmp/fuzz/crash-* and exits non-zero.

source "$(dirname "$0")/../lib.sh"
PACKAGES+=(clang libclang-rt-14-dev)
RUNS=${1:-200000}

ensure_packages
setup_run_user

F="$LLM_TMP/fuzz"
rm -rf "$F"; mkdir -p "$F/corpus"
FUZZER_LIB=$(ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a | head -1)
[ -n "$FUZZER_LIB" ] || die "libclang_rt.fuzzer_no_main not found (package libclang-rt-14-dev)"
INC=$("$PG_BINDIR/pg_config" --includedir-server)

clang -O1 -g -fPIC -shared -fsanitize=fuzzer-no-link -Wall -Werror \
    -Wno-unused-command-line-argument -Wno-unknown-warning-option -Wno-ignored-attributes \
    -I"$LLM_ROOT/src" -I"$INC" -D_GNU_SOURCE \
    -o "$F/llm_gateway_fuzz.so" \
    "$LLM_ROOT/test/fuzz/fuzz_adapters.c" \
    "$LLM_ROOT"/src/providers/*.c "$LLM_ROOT/src/common/json_util.c" "$LLM_ROOT/src/common/llm_errors.c" \
    "$LLM_ROOT/src/backend/json_schema.c" \
    "$LLM_ROOT/src/common/sigv4.c" -lcrypto \
    -Wl,--whole-archive "$FUZZER_LIB" -Wl,--no-whole-archive -lstdc++

# seeds: every fixture for every adapter and entry point (first byte)
n=0
for fx in "$LLM_ROOT"/test/fixtures/*/*.json "$LLM_ROOT"/test/fuzz/seeds/*.json; do
    [ -f "$fx" ] || continue
    # every adapter x entry point (fuzz_adapters.c), for up to 8 adapters
    for b in $(seq 0 39); do
        { printf "\\$(printf '%03o' "$b")"; cat "$fx"; } >"$F/corpus/seed_$((n++))"
    done
done

[ "$(id -u)" = 0 ] && chown -R "$RUN_USER" "$F"
as_run_user initdb -D "$F/data" -A trust --no-sync >"$F/initdb.log" 2>&1 || die "initdb failed"

log "fuzzing the adapters: $RUNS inputs, $n seeds"
set +e
[ "$(id -u)" = 0 ] && chmod o+r "$LLM_ROOT/test/fuzz/json.dict"
as_run_user postgres --single -D "$F/data" -c max_stack_depth=7MB postgres >"$F/fuzz.log" 2>&1 <<SQL
CREATE FUNCTION llm_fuzz(text[]) RETURNS int AS '$F/llm_gateway_fuzz.so', 'llm_fuzz' LANGUAGE C STRICT;
SELECT llm_fuzz(ARRAY['-runs=$RUNS', '-max_len=16384', '-rss_limit_mb=4096', '-artifact_prefix=$F/', '-print_final_stats=1', '-dict=$LLM_ROOT/test/fuzz/json.dict', '$F/corpus']);
SQL
rc=$?
set -e
grep -E '^#[0-9]+ *DONE|^Done|stat::number_of_executed_units|ERROR|crash|==' "$F/fuzz.log" | tail -8
if [ $rc -ne 0 ] || ls "$F"/crash-* >/dev/null 2>&1; then
    echo "fuzz: FAILED (see $F/fuzz.log and $F/crash-*)"
    exit 1
fi
echo "fuzz: $RUNS inputs, no crash"
