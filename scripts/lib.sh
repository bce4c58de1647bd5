# Shell functions the setup scripts share; sourced (not run) by setup-host.sh and
# setup-kubernetes.sh.

# The Go toolchain to build with: $GO, else `go` on PATH, else /usr/local/go/bin/go.
find_go() {
    local g
    for g in "${GO:-}" "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go; do
        [[ -n $g && -x $g ]] && { echo "$g"; return 0; }
    done
    return 1
}
