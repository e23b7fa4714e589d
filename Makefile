# llm_gateway: PGXS build.
#
#   make && sudo make install     build and install the extension
#   bash test/run-tests.sh        every test suite (installs what it needs)
#   bash test/run-demo.sh         throwaway cluster + mock provider + examples
#   make bench                    benchmarks (builds and installs first)
#   make fuzz [FUZZ_RUNS=N]       libFuzzer over the provider adapters

EXTENSION   = llm_gateway
EXTVERSION  = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" $(EXTENSION).control)

MODULE_big  = llm_gateway
SRCS        = $(sort $(wildcard src/*.c src/*/*.c))
OBJS        = $(SRCS:.c=.o)
DATA        = $(wildcard sql/$(EXTENSION)--*.sql)

PG_CPPFLAGS = -Isrc -DLLM_GATEWAY_VERSION=\"$(EXTVERSION)\"
PG_CFLAGS   = -std=gnu11 -Wall -Wextra -Werror \
              -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare
SHLIB_LINK  = -lcurl -lcrypto

# pg_regress runs on its own temporary instance with the library preloaded;
# the test runner exports MOCK_PORT for the mock provider the tests talk to.
REGRESS      = setup validation adapters adapter_gemini adapter_bedrock adapter_ollama adapter_vertex messages errors on_error pipeline estimate quotas request_log routing credentials log_paths structured_output embeddings embed_kinds embed_bedrock context_errors conversations
REGRESS_OPTS = --temp-config=test/regress.conf --temp-instance=./tmp_check --encoding=UTF8

# Isolation specs (specs/*.spec) interleave sessions step by step, on their
# own temporary instance; the worker serves the database they run in.
ISOLATION      = quota_race
ISOLATION_OPTS = --temp-config=test/regress.conf --temp-instance=./tmp_check_iso --encoding=UTF8

# TAP tests live under test/t (PostgreSQL::Test::Cluster); "make tapcheck"
# runs them (installcheck runs only pg_regress, so the two report apart).
PROVE_TESTS ?= test/t/*.pl

EXTRA_CLEAN = tmp_check tmp_check_iso output_iso results regression.diffs regression.out log test/master.key

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# after the include, which sets it: pgxs.mk expands it only when the
# isolation suite runs, and test/regress.conf names this database
ISOLATION_TESTDB = contrib_regression

$(OBJS): $(wildcard src/*.h src/*/*.h)

# The master key of the pg_regress instance (test/regress.conf names it):
# 32 random bytes as hex, readable only by whoever runs the tests.
test/master.key:
	umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > $@

installcheck: test/master.key

.PHONY: tapcheck bench fuzz
tapcheck:
	$(prove_installcheck)

bench:
	bash test/bench/run-bench.sh

fuzz:
	bash test/fuzz/run-fuzz.sh $(FUZZ_RUNS)
