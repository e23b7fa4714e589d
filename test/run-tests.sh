#!/usr/bin/env bash
# Run every test suite of llm_gateway on this machine.
#
#   bash test/run-tests.sh
#
# Installs missing Debian packages, builds with -Werror, installs the
# extension, then runs as an unprivileged user (root hands over to a system
# user): the mock provider's own tests, pg_regress on a temporary instance
# with the library preloaded, the TAP suites and a short libFuzzer run over
# the provider adapters.  Exits non-zero if
# anything failed and ends with one line "N passed, M failed".
#
# While developing, arguments pick suites: "mock", "regress [TESTS]" (e.g.
# regress setup log_paths), "tap [FILES]" (e.g. tap test/t/003_cancel.pl),
# "fuzz", "unit".  Runs from several checkouts of this machine take turns (one lock),
# because each installs the extension into the same PostgreSQL tree.

source "$(dirname "$0")/lib.sh"

SUITE=${1:-all}
[ $# -gt 0 ] && shift
SUITE_ARGS=("$@")
want() { [ "$SUITE" = all ] || [ "$SUITE" = "$1" ]; }

exec 9>/tmp/llm_gateway_test.lock
flock 9

ensure_packages
build_install
setup_run_user

STAGE="$LLM_TMP/test-run"
stage_tree "$STAGE"
OUT="$LLM_TMP/test-output"
rm -rf "$OUT"; mkdir -p "$OUT"
[ "$(id -u)" = 0 ] && chown "$RUN_USER" "$OUT"

PASSED=0
FAILED=0
FAILED_SUITES=()

record() {	# record SUITE PASSED FAILED
    PASSED=$((PASSED + $2)); FAILED=$((FAILED + $3))
    [ "$3" -gt 0 ] && FAILED_SUITES+=("$1")
    log "$1: $2 passed, $3 failed"
}

# 1. The mock provider's own tests: later suites trust its fault injection.
if want mock; then
log "suite: mock provider"
if as_run_user python3 "$STAGE/test/mock/test_mock_provider.py" >"$OUT/mock.log" 2>&1; then rc=0; else rc=$?; fi
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/mock.log" | tail -1 || true)
if [ -n "$line" ]; then
    p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
    [ $rc -ne 0 ] && [ "$f" = 0 ] && f=1
    record mock "$p" "$f"
else
    record mock 0 1
fi
[ $rc -ne 0 ] && tail -40 "$OUT/mock.log" >&2
fi

# 2. pg_regress, against one mock provider started here.
if want regress; then
log "suite: pg_regress"
REGRESS_PICK=()
[ ${#SUITE_ARGS[@]} -gt 0 ] && REGRESS_PICK=(REGRESS="${SUITE_ARGS[*]}")
start_mock "$OUT/mock-regress.log"
if as_run_user make -C "$STAGE" -s PG_CONFIG="$PG_BINDIR/pg_config" installcheck "${REGRESS_PICK[@]}" \
        >"$OUT/regress.log" 2>&1; then rc=0; else rc=$?; fi
stop_mock
p=$(grep -cE '\.\.\. ok' "$OUT/regress.log" || true)
f=$(grep -cE '\.\.\. FAILED' "$OUT/regress.log" || true)
[ $rc -ne 0 ] && [ "$f" = 0 ] && f=1
record pg_regress "$p" "$f"
if [ $rc -ne 0 ]; then
    cat "$OUT/regress.log" >&2
    for d in "$STAGE/regression.diffs" "$STAGE/output_iso/regression.diffs"; do
        [ -f "$d" ] && head -200 "$d" >&2
    done
fi
fi

# 3. TAP suites (each starts its own clusters and mock provider).
if want tap; then
log "suite: TAP"
TAP_PICK=()
[ ${#SUITE_ARGS[@]} -gt 0 ] && TAP_PICK=(PROVE_TESTS="${SUITE_ARGS[*]}")
if as_run_user make -C "$STAGE" -s PG_CONFIG="$PG_BINDIR/pg_config" tapcheck "${TAP_PICK[@]}" \
        PROVE_FLAGS="--timer" >"$OUT/tap.log" 2>&1; then rc=0; else rc=$?; fi
total=$(sed -n "s/^Files=[0-9]*, Tests=\([0-9]*\),.*/\1/p" "$OUT/tap.log" | tail -1 || true)
total=${total:-0}
f=$( (grep -oE 'Failed [0-9]+/[0-9]+ subtests' "$OUT/tap.log" || true) | awk -F'[ /]' '{s+=$2} END {print s+0}')
[ $rc -ne 0 ] && [ "$f" = 0 ] && f=1
record TAP "$((total - f < 0 ? 0 : total - f))" "$f"
if [ $rc -ne 0 ]; then
    cat "$OUT/tap.log" >&2
    for l in "$STAGE"/tmp_check/log/*; do
        [ -f "$l" ] && { echo "---- $l" >&2; tail -60 "$l" >&2; }
    done
fi
fi

# 3b. Standalone C unit tests (SigV4 vectors), no server.
if want unit; then
log "suite: unit"
if bash "$LLM_ROOT/test/unit/run-unit.sh" >"$OUT/unit.log" 2>&1; then rc=0; else rc=$?; fi
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/unit.log" | tail -1 || true)
if [ -n "$line" ]; then
    p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
    [ $rc -ne 0 ] && [ "$f" = 0 ] && f=1
    record unit "$p" "$f"
else
    record unit 0 1
fi
[ $rc -ne 0 ] && tail -40 "$OUT/unit.log" >&2
fi

# 4. Coverage-guided fuzzing of the provider adapters (libFuzzer), short run.
if want fuzz; then
log "suite: fuzz"
if bash "$LLM_ROOT/test/fuzz/run-fuzz.sh" "${FUZZ_RUNS:-300000}" >"$OUT/fuzz.log" 2>&1; then
    record fuzz 1 0
else
    record fuzz 0 1
    tail -30 "$OUT/fuzz.log" >&2
fi
fi

echo
if [ $FAILED -gt 0 ]; then
    echo "failed suites: ${FAILED_SUITES[*]} (logs in $OUT)"
fi
echo "$PASSED passed, $FAILED failed"
[ $FAILED -eq 0 ]
