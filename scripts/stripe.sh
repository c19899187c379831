# localstripe (PyPI, pinned) on loopback for the Stripe end-to-end tests.
# Source this file, then: stripe_start (exports SYNCFLOW_TEST_STRIPE_URL), stripe_stop.
# Installs the pinned localstripe with pip if it is missing or another version.

LOCALSTRIPE_VERSION=1.15.10

stripe_installed_version() {
    python3 -c 'import importlib.metadata as m; print(m.version("localstripe"))' 2>/dev/null
}

stripe_install() {
    command -v python3 >/dev/null || { echo "python3 not found: install Debian's python3 and python3-pip" >&2; return 1; }
    [ "$(stripe_installed_version)" = "$LOCALSTRIPE_VERSION" ] && return 0
    echo "installing localstripe $LOCALSTRIPE_VERSION (pip)…" >&2
    python3 -m pip --version >/dev/null 2>&1 || {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && apt-get install -y -qq python3-pip >&2
    }
    # Debian's system Python refuses global installs without the second flag.
    python3 -m pip install -q "localstripe==$LOCALSTRIPE_VERSION" >&2 \
        || python3 -m pip install -q --break-system-packages "localstripe==$LOCALSTRIPE_VERSION" >&2
    [ "$(stripe_installed_version)" = "$LOCALSTRIPE_VERSION" ] || { echo "localstripe install failed" >&2; return 1; }
}

stripe_start() {
    stripe_install || return 1
    local port dir
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    dir=$(dirname "${BASH_SOURCE[0]}")
    STRIPE_LOG=$(mktemp /tmp/syncflow-localstripe.XXXXXX.log)
    python3 "$dir/localstripe.py" --port "$port" >"$STRIPE_LOG" 2>&1 &
    STRIPE_PID=$!
    # Ready when it answers; give up after 30 s.
    local deadline=$((SECONDS + 30))
    until python3 -c "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$port/_config/data', method='DELETE'), timeout=1)" 2>/dev/null; do
        if ! kill -0 "$STRIPE_PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
            echo "localstripe did not start:" >&2; cat "$STRIPE_LOG" >&2; stripe_stop; return 1
        fi
        sleep 0.2
    done
    export SYNCFLOW_TEST_STRIPE_URL="http://127.0.0.1:$port"
    echo "localstripe $LOCALSTRIPE_VERSION on $SYNCFLOW_TEST_STRIPE_URL (log $STRIPE_LOG)" >&2
}

stripe_stop() {
    [ -n "${STRIPE_PID:-}" ] || return 0
    kill "$STRIPE_PID" 2>/dev/null || true
    wait "$STRIPE_PID" 2>/dev/null || true
    rm -f "$STRIPE_LOG"
    unset STRIPE_PID SYNCFLOW_TEST_STRIPE_URL
}
