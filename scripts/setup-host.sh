#!/usr/bin/env bash
# Hershy host setup: Docker engine + gVisor (runsc) as the default runtime.
#
# Idempotent: run it as often as you like; a second run only checks and takes a few seconds.
# Needs root, Debian (apt), and for netstack mode a Go toolchain (>= 1.26.3 or GOTOOLCHAIN=auto)
# with the Go module proxy. Nothing is downloaded from anywhere else.
#
# What it does:
#   1. apt-get install docker.io runsc busybox-static iproute2 nginx-light (nginx: the peer
#      benchmarks/proxy_bench.py runs on loopback; apt-get update only if missing)
#   2. network mode "netstack": builds a current runsc from the Go module proxy (pinned below)
#      into /usr/local/lib/hershy/bin/runsc (about 1.5 min on 2 cores, once); mode "host":
#      uses Debian's /usr/bin/runsc with --network=host (Debian's 2022 runsc cannot use its own
#      network stack on new kernels)
#   3. merges into /etc/docker/daemon.json: runtimes.runsc, default-runtime=runsc,
#      live-restore=true, icc=false (no traffic between containers on the default bridge, so
#      one program cannot reach another's WatcherAPI directly) (other keys and other runtimes
#      are kept)
#   4. starts dockerd in the background (no systemd here) or reloads it (SIGHUP) if the
#      config changed, and waits for `docker info`
#   5. builds the local base image hershy-busybox:latest (FROM scratch + static busybox; its
#      RUN step runs under runsc, as every build step does with default-runtime runsc)
#   6. verifies that a container runs under gVisor, that the RUN step's files were kept, and
#      that a port published on 127.0.0.1 reaches a server inside; in auto mode a netstack
#      failure falls back to host; writes the network mode in use to
#      /etc/hershy/runsc-network-mode ("netstack" or "host"); prints it as the last line
#
# Environment:
#   HERSHY_RUNSC_NETWORK=auto|netstack|host   (default auto: netstack if it builds and passes
#                                              the check, else host; netstack: fail instead of
#                                              falling back)
#   HERSHY_SETUP_SKIP_VERIFY=1                 skip step 6 (the mode file is then not rewritten)
set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Pinned gVisor: a commit of the `go` branch of gvisor.dev/gvisor (the Go-buildable one, with the
# generated *_state_autogen.go files), as a pseudo-version. The module proxy here answers 403 to
# the branch query `@go`; `@latest` resolved to this one (2026-09-05). To move the pin, try
# `go list -m gvisor.dev/gvisor@latest` and check that a build and this script pass.
GVISOR_MODULE_VERSION="v0.0.0-20260905035102-160fafc42237"
HERSHY_LIB=/usr/local/lib/hershy
NETSTACK_RUNSC="$HERSHY_LIB/bin/runsc"
NETSTACK_STAMP="$HERSHY_LIB/bin/runsc.version"
BUILD_FAILED_STAMP="$HERSHY_LIB/runsc-build-failed"
DEBIAN_RUNSC=/usr/bin/runsc
DAEMON_JSON=/etc/docker/daemon.json
MODE_FILE=/etc/hershy/runsc-network-mode
DOCKERD_LOG=/var/log/dockerd.log
BASE_IMAGE=hershy-busybox:latest
APT_PACKAGES=(docker.io runsc busybox-static iproute2 python3 curl ca-certificates nginx-light)
MODE_REQUEST="${HERSHY_RUNSC_NETWORK:-auto}"
DOCKER_WAIT_SECONDS=60
# ---------------------------------------------------------------------------------------------

START_TS=$(date +%s)
log() { printf '[setup-host] %s\n' "$*"; }
die() { printf '[setup-host] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"
case "$MODE_REQUEST" in auto|netstack|host) ;; *) die "HERSHY_RUNSC_NETWORK must be auto, netstack or host (got '$MODE_REQUEST')";; esac

# Use the engine's own CLI from the docker.io package; a newer CLI on PATH also works (it
# negotiates the API version), but /usr/bin/docker matches the daemon exactly.
docker_cli() { if [[ -x /usr/bin/docker ]]; then /usr/bin/docker "$@"; else docker "$@"; fi; }

# --- 1. packages -----------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    log "installing with apt: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "apt packages present: ${APT_PACKAGES[*]}"
fi
PY=/usr/bin/python3
[[ -x $PY ]] || PY=$(command -v python3)

# --- 2. runsc for netstack mode ----------------------------------------------------------------
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # find_go

netstack_runsc_ready() {
    [[ -x $NETSTACK_RUNSC && -f $NETSTACK_STAMP && $(cat "$NETSTACK_STAMP") == "$GVISOR_MODULE_VERSION" ]]
}

build_netstack_runsc() {
    local go tmp
    go=$(find_go) || { log "no Go toolchain found: cannot build runsc for netstack mode"; return 1; }
    tmp=$(mktemp -d)
    log "building runsc gvisor.dev/gvisor@$GVISOR_MODULE_VERSION with $($go version | cut -d' ' -f3) (about 1.5 min on 2 cores; log: $HERSHY_LIB/runsc-build.log)"
    mkdir -p "$HERSHY_LIB/bin"
    # GOFLAGS=-mod=mod: the go branch has no vendor dir; CGO off: a static binary, as upstream.
    if ! (cd "$tmp" && GOFLAGS=-mod=mod CGO_ENABLED=0 GOBIN="$tmp/bin" \
            "$go" install -ldflags "-X gvisor.dev/gvisor/runsc/version.version=$GVISOR_MODULE_VERSION" \
            "gvisor.dev/gvisor/runsc@$GVISOR_MODULE_VERSION") >"$HERSHY_LIB/runsc-build.log" 2>&1; then
        log "runsc build failed; last lines of $HERSHY_LIB/runsc-build.log:"
        tail -n 15 "$HERSHY_LIB/runsc-build.log" | sed 's/^/    /'
        echo "$GVISOR_MODULE_VERSION" >"$BUILD_FAILED_STAMP"
        rm -rf "$tmp"
        return 1
    fi
    install -m 0755 "$tmp/bin/runsc" "$NETSTACK_RUNSC"
    rm -f "$BUILD_FAILED_STAMP"
    echo "$GVISOR_MODULE_VERSION" >"$NETSTACK_STAMP"
    rm -rf "$tmp"
    log "runsc built: $("$NETSTACK_RUNSC" --version | head -n1)"
}

want_mode=host
if [[ $MODE_REQUEST != host ]]; then
    if netstack_runsc_ready; then
        log "runsc for netstack present: $NETSTACK_RUNSC ($GVISOR_MODULE_VERSION)"
        want_mode=netstack
    elif [[ $MODE_REQUEST == auto && -f $BUILD_FAILED_STAMP \
            && $(cat "$BUILD_FAILED_STAMP") == "$GVISOR_MODULE_VERSION" ]]; then
        # Keep a second run fast: do not retry a build that failed (it can take minutes).
        log "an earlier build of runsc $GVISOR_MODULE_VERSION failed ($HERSHY_LIB/runsc-build.log); not retrying"
        log "  (to retry: rm $BUILD_FAILED_STAMP, or run with HERSHY_RUNSC_NETWORK=netstack)"
    elif build_netstack_runsc; then
        want_mode=netstack
    elif [[ $MODE_REQUEST == netstack ]]; then
        die "netstack mode requested but runsc could not be built"
    else
        log "falling back to network mode host (Debian runsc with --network=host)"
    fi
fi

# --- 3. /etc/docker/daemon.json ------------------------------------------------------------------
runsc_path() { if [[ $1 == netstack ]]; then echo "$NETSTACK_RUNSC"; else echo "$DEBIAN_RUNSC"; fi; }

# Prints "changed" or "unchanged". Keeps every other key, and other runtimes, as they are.
configure_daemon() {
    local mode=$1 path args
    # --overlay2=none: current runsc defaults to root:self, an overlay kept inside the sandbox,
    # so that RUN steps of `docker build` (and docker diff/commit/cp) would lose their writes.
    path=$(runsc_path "$mode")
    if [[ $mode == netstack ]]; then args='["--overlay2=none"]'; else args='["--network=host"]'; fi
    mkdir -p "$(dirname "$DAEMON_JSON")"
    "$PY" - "$DAEMON_JSON" "$path" "$args" <<'EOF'
import json, os, sys, tempfile
path, runsc_path, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cfg = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read()
    if text.strip():
        try:
            cfg = json.loads(text)
        except ValueError as e:
            sys.exit(f"{path} is not valid JSON ({e}); fix it by hand, it is left untouched")
        if not isinstance(cfg, dict) or not isinstance(cfg.get("runtimes", {}), dict):
            sys.exit(f"{path}: expected a JSON object with an object 'runtimes'; left untouched")
old = json.dumps(cfg, sort_keys=True)
runtime = {"path": runsc_path}
if args:
    runtime["runtimeArgs"] = args
cfg.setdefault("runtimes", {})["runsc"] = runtime
cfg["default-runtime"] = "runsc"
cfg["live-restore"] = True
cfg["icc"] = False
if json.dumps(cfg, sort_keys=True) == old:
    print("unchanged")
else:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    print("changed")
EOF
}

# --- 4. dockerd ------------------------------------------------------------------------------------
docker_up() { docker_cli info >/dev/null 2>&1; }

wait_docker() {
    local i
    for ((i = 0; i < DOCKER_WAIT_SECONDS * 2; i++)); do
        docker_up && return 0
        sleep 0.5
    done
    printf '[setup-host] ERROR: docker did not answer within %ss; last lines of %s:\n' \
        "$DOCKER_WAIT_SECONDS" "$DOCKERD_LOG" >&2
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    exit 1
}

ensure_dockerd() {  # $1: "changed" if daemon.json changed; $2: the runsc path it names
    local pid got want="runsc $2" hupped=0
    pid=$(pidof dockerd || true)
    if [[ -z $pid ]]; then
        log "starting dockerd (log: $DOCKERD_LOG)"
        # setsid+nohup: survives the end of this script and of the calling shell.
        setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
        disown || true
    elif [[ $1 == changed ]]; then
        log "reloading dockerd (pid $pid): kill -HUP"
        # shellcheck disable=SC2086  # pidof may list several pids
        kill -HUP $pid
        hupped=1
    fi
    wait_docker
    # The daemon must run with this config (runtimes and default-runtime are reloadable; a
    # reload is asynchronous). A dockerd started earlier with another config gets one HUP.
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
        got=$(docker_cli info --format '{{.DefaultRuntime}} {{with index .Runtimes "runsc"}}{{.Path}}{{end}}' 2>/dev/null || true)
        [[ $got == "$want" ]] && return 0
        if ((!hupped)) && pid=$(pidof dockerd); then
            log "dockerd runs with another config ($got); reloading it: kill -HUP"
            # shellcheck disable=SC2086
            kill -HUP $pid
            hupped=1
        fi
        sleep 0.5
    done
    die "dockerd reports default runtime and runsc path '$got', expected '$want' (see $DOCKERD_LOG)"
}

# --- 5. base image -------------------------------------------------------------------------------
ensure_base_image() {
    if docker_cli image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "image $BASE_IMAGE present"
        return
    fi
    log "building image $BASE_IMAGE (FROM scratch + /bin/busybox from busybox-static)"
    local ctx
    ctx=$(mktemp -d)
    cp /bin/busybox "$ctx/busybox"
    cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
LABEL org.hershy.base=busybox
CMD ["/bin/sh"]
EOF
    local rc=0 out
    out=$(docker_cli build -q -t "$BASE_IMAGE" "$ctx" 2>&1) || rc=$?
    rm -rf "$ctx"
    ((rc == 0)) || { printf '%s\n' "$out" | tail -n 15 | sed 's/^/    /'; return 1; }
}

# --- 6. verification -----------------------------------------------------------------------------
# Returns 0 if a container runs under gVisor with a working published port on 127.0.0.1.
verify_runtime() {
    local name="hershy-setup-verify-$$" kernel port body out ok=1
    # gVisor's kernel greets with "Starting gVisor..." in dmesg (under runc, dmesg is denied);
    # its uname is 4.4.0 in Debian's 2022 runsc and 4.19.0-gvisor in current ones.
    out=$(docker_cli run --rm --runtime runsc --network none "$BASE_IMAGE" /bin/busybox \
            sh -c 'uname -r; dmesg 2>&1 | head -n1; [ -e /bin/sh ] && echo run-step-kept' 2>&1) || {
        log "verify: container failed to run under runsc: $out"; return 1; }
    kernel=$(printf '%s\n' "$out" | head -n1)
    if [[ $out != *"Starting gVisor"* ]]; then
        log "verify: not running under gVisor (uname -r: $kernel; dmesg: $(printf '%s\n' "$out" | sed -n 2p))"
        return 1
    fi
    # The base image's RUN step (busybox --install) ran under runsc: its files must be there.
    if [[ $out != *run-step-kept* ]]; then
        log "verify: $BASE_IMAGE lacks /bin/sh: the writes of its RUN step were lost (runsc rootfs overlay?); removing it"
        docker_cli rmi -f "$BASE_IMAGE" >/dev/null 2>&1 || true
        return 1
    fi
    docker_cli rm -f "$name" >/dev/null 2>&1 || true
    if ! out=$(docker_cli run -d --name "$name" --runtime runsc --read-only \
            --cap-drop ALL --security-opt no-new-privileges --label org.hershy.setup=verify \
            -p 127.0.0.1::8080 "$BASE_IMAGE" \
            httpd -f -p 8080 -h /etc 2>&1); then
        log "verify: container with published port failed to start: $out"
        return 1
    fi
    # busybox httpd serves a file; /etc/hostname exists in every container (bind-mounted by docker).
    port=$(docker_cli port "$name" 8080/tcp 2>/dev/null | head -n1 | sed 's/.*://')
    if [[ -n $port ]]; then
        for _ in $(seq 1 40); do
            if body=$(curl -fsS --max-time 2 "http://127.0.0.1:$port/hostname" 2>/dev/null); then ok=0; break; fi
            sleep 0.25
        done
    fi
    if ((ok)); then
        log "verify: published port 127.0.0.1:${port:-?} -> 8080 did not answer; container log:"
        docker_cli logs "$name" 2>&1 | tail -n 10 | sed 's/^/    /'
    else
        log "verify: gVisor (uname -r $kernel), published port 127.0.0.1:$port answered (hostname ${body})"
    fi
    docker_cli rm -f "$name" >/dev/null 2>&1 || true
    return $ok
}

apply_mode() {
    local change
    # Explicit checks here: this runs inside `if ! try_mode`, where set -e does not apply.
    change=$(configure_daemon "$1") || die "could not update $DAEMON_JSON (see the error above)"
    log "daemon.json ($DAEMON_JSON): $change; runsc network mode: $1"
    ensure_dockerd "$change" "$(runsc_path "$1")"
}

try_mode() {  # apply a mode, make sure the base image exists, check it
    apply_mode "$1"
    if ! ensure_base_image; then
        log "could not build $BASE_IMAGE under runtime runsc (network mode $1)"
        return 1
    fi
    [[ ${HERSHY_SETUP_SKIP_VERIFY:-0} == 1 ]] || verify_runtime
}

mode_in_use=$want_mode
if ! try_mode "$want_mode"; then
    if [[ $want_mode == netstack && $MODE_REQUEST == auto ]]; then
        log "netstack mode failed the check: falling back to network mode host"
        mode_in_use=host
        try_mode host || die "gVisor check failed in network mode host too"
    else
        die "gVisor check failed in network mode $want_mode"
    fi
fi
if [[ ${HERSHY_SETUP_SKIP_VERIFY:-0} != 1 ]]; then
    mkdir -p "$(dirname "$MODE_FILE")"
    if [[ ! -f $MODE_FILE || $(cat "$MODE_FILE") != "$mode_in_use" ]]; then
        echo "$mode_in_use" >"$MODE_FILE"
    fi
fi

# icc is not reloadable: a dockerd that was running before daemon.json said "icc": false keeps
# inter-container traffic on until it restarts with no container running (live-restore keeps the
# old bridge otherwise). Restart it when that is safe; otherwise say what to do.
bridge_icc() {
    docker_cli network inspect bridge \
        --format '{{index .Options "com.docker.network.bridge.enable_icc"}}' 2>/dev/null || true
}
icc=$(bridge_icc)
if [[ $icc != false ]]; then
    if [[ -z $(docker_cli ps -q) ]]; then
        log "restarting dockerd so that \"icc\": false applies (no container is running)"
        pid=$(pidof dockerd || true)
        [[ -n $pid ]] && kill "$pid"
        for _ in $(seq 1 100); do pidof dockerd >/dev/null || break; sleep 0.2; done
        setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
        wait_docker
        icc=$(bridge_icc)
    fi
    if [[ $icc != false ]]; then
        log "WARNING: the running dockerd has inter-container traffic on (enable_icc=${icc:-?}); \"icc\": false applies once dockerd restarts with no container running"
    fi
fi

log "done in $(($(date +%s) - START_TS)) s: runtime runsc ($(docker_cli info --format '{{json .Runtimes.runsc}}')), network mode: $mode_in_use"
echo "$mode_in_use"
