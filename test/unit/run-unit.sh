#!/usr/bin/env bash
# Standalone C unit tests (no server): builds each test/unit/test_*.c as
# frontend code against the sources it tests and runs it.
#
#   bash test/unit/run-unit.sh     (or: bash test/run-tests.sh unit)
#
# Ends with one line "N passed, M failed" summed over the programs.

source "$(dirname "$0")/../lib.sh"
ensure_packages

U="$LLM_TMP/unit"
rm -rf "$U"; mkdir -p "$U"
INC=$("$PG_BINDIR/pg_config" --includedir-server)
LIB=$("$PG_BINDIR/pg_config" --pkglibdir)   # libpgcommon.a, libpgport.a
P=0; F=0

# test_sigv4: src/common/sigv4.c against the AWS SigV4 test vectors
gcc -std=gnu11 -Wall -Wextra -Werror -Wno-missing-field-initializers -DFRONTEND \
    -I"$LLM_ROOT/src" -I"$INC" -o "$U/test_sigv4" \
    "$LLM_ROOT/test/unit/test_sigv4.c" "$LLM_ROOT/src/common/sigv4.c" \
    -L"$LIB" -lpgcommon -lpgport -lcrypto
for t in "$U"/test_*; do
    if "$t" >"$t.log" 2>&1; then :; fi
    cat "$t.log"
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$t.log" | tail -1 || true)
    if [ -n "$line" ]; then
        P=$((P + ${line%% passed*})); f=${line#*, }; F=$((F + ${f%% failed*}))
    else
        F=$((F + 1))
    fi
done
echo "$P passed, $F failed"
[ "$F" -eq 0 ]
