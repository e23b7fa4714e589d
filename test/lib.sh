# test/lib.sh: set-up shared by run-tests.sh, run-demo.sh and the benchmark.
#
# Sourced, not run.  It installs what a fresh Debian 12 machine lacks, builds
# and installs the extension, and runs commands as an unprivileged OS user,
# because initdb and postgres refuse to run as root.

set -euo pipefail

LLM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LLM_TMP="$LLM_ROOT/tmp"
LLM_TEST_USER=llm_gateway_test

PACKAGES=(postgresql-15 postgresql-server-dev-15 libcurl4-openssl-dev libssl-dev
          libipc-run-perl make gcc python3 ca-certificates openssl)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# as_root CMD...: run CMD as root (directly, or through sudo for a normal user).
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_packages: apt-get install whatever of PACKAGES is missing.
ensure_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    PG_BINDIR=$(/usr/lib/postgresql/15/bin/pg_config --bindir)
    export PATH="$PG_BINDIR:$PATH"
}

# build_install: compile with -Werror and install into the PostgreSQL tree.
build_install() {
    log "building llm_gateway"
    make -C "$LLM_ROOT" -s PG_CONFIG="$PG_BINDIR/pg_config" >/dev/null
    log "installing llm_gateway"
    as_root make -C "$LLM_ROOT" -s PG_CONFIG="$PG_BINDIR/pg_config" install >/dev/null
}

# RUN_USER: who runs the servers.  Root hands over to LLM_TEST_USER,
# anyone else runs them as themselves.
setup_run_user() {
    if [ "$(id -u)" = 0 ]; then
        id "$LLM_TEST_USER" >/dev/null 2>&1 ||
            useradd --system --user-group --home-dir /nonexistent --shell /usr/sbin/nologin "$LLM_TEST_USER"
        RUN_USER=$LLM_TEST_USER
    else
        RUN_USER=$(id -un)
    fi
    mkdir -p "$LLM_TMP"
    [ "$(id -u)" = 0 ] && chown "$RUN_USER" "$LLM_TMP"
    return 0
}

# as_run_user CMD...: run CMD as RUN_USER with PATH and the test env kept.
as_run_user() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$RUN_USER" -- env PATH="$PATH" HOME="$LLM_TMP" "$@"
    else
        "$@"
    fi
}

# stage_tree DIR: copy the source tree (without build and run products) to
# DIR, owned by RUN_USER, so pg_regress and prove can write their results.
stage_tree() {
    local dir=$1
    rm -rf "$dir"
    mkdir -p "$dir"
    tar -C "$LLM_ROOT" --exclude=./tmp --exclude=./.git --exclude=./tmp_check \
        --exclude=./results --exclude='*.o' --exclude='*.so' -cf - . | tar -C "$dir" -xf -
    [ "$(id -u)" = 0 ] && chown -R "$RUN_USER" "$dir"
    return 0
}

# free_port: print a TCP port nobody listens on right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_mock LOGFILE [ARGS...]: start the mock provider as RUN_USER, set MOCK_PID and
# MOCK_PORT.  It prints its port once it listens, so no guessing or sleeping.
start_mock() {
    local logfile=$1; shift
    local portfile="$LLM_TMP/mock.$$.port"
    rm -f "$portfile"
    # setpriv execs the mock in this process (runuser would fork and keep
    # the mock alive when killed), so $! is the mock and stop_mock stops it
    if [ "$(id -u)" = 0 ]; then
        ( exec setpriv --reuid="$RUN_USER" --regid="$RUN_USER" --init-groups \
              env PATH="$PATH" HOME="$LLM_TMP" \
              python3 "$LLM_ROOT/test/mock/mock_provider.py" --port 0 \
              --port-file "$portfile" --quiet "$@" >"$logfile" 2>&1 ) &
    else
        python3 "$LLM_ROOT/test/mock/mock_provider.py" --port 0 \
            --port-file "$portfile" --quiet "$@" >"$logfile" 2>&1 &
    fi
    MOCK_PID=$!
    local i
    for i in $(seq 1 100); do
        [ -s "$portfile" ] && break
        kill -0 "$MOCK_PID" 2>/dev/null || die "mock provider failed to start: $(cat "$logfile")"
        sleep 0.05
    done
    [ -s "$portfile" ] || die "mock provider did not report its port"
    MOCK_PORT=$(cat "$portfile")
    rm -f "$portfile"
    export MOCK_PORT
}

stop_mock() {
    if [ -n "${MOCK_PID:-}" ]; then
        kill "$MOCK_PID" 2>/dev/null || true
        wait "$MOCK_PID" 2>/dev/null || true
    fi
    MOCK_PID=
    return 0
}

# make_cluster DIR [EXTRA_CONF]: initdb DIR/data as RUN_USER with the library
# preloaded, serving database postgres on a free port over a socket in DIR.
# Sets PORT.
make_cluster() {
    local dir=$1 extra=${2:-}
    PORT=$(free_port)
    as_run_user initdb -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1 ||
        die "initdb failed: $(cat "$dir/initdb.log")"
    # the master key that encrypts llm.credentials: 32 random bytes as hex, mode 0600
    as_run_user sh -c "umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \\n' > '$dir/master.key'"
    cat >>"$dir/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$dir'
shared_preload_libraries = 'llm_gateway'
llm.database = 'postgres'
llm.master_key_file = '$dir/master.key'
$extra
CONF
}
