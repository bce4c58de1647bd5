#!/usr/bin/env bash
# A real two-node Kubernetes (v1.34.4) on this machine, on loopback, for Hershy's Kubernetes
# runtime and its tests. Run as root on Debian bookworm. Every subcommand is idempotent.
#
#   install   apt packages (containerd, runc, etcd, CNI plugins) and builds from the Go module
#             proxy, cached under /var/cache/hershy/kubernetes/<part>-<hash of its inputs>/ (a
#             second run takes seconds): kube-apiserver, kubelet, kube-controller-manager,
#             kube-scheduler (deploy/kubernetes/build: a wrapper module, since k8s.io/kubernetes
#             itself cannot be `go install`ed), kubectl only if none is installed, gVisor's
#             containerd-shim-runsc-v1 (deploy/kubernetes/build/shim: patched, see there), the
#             CNCF distribution registry (deploy/kubernetes/build/registry), a hostPath volume
#             provisioner and a pause binary packed as the sandbox image (deploy/kubernetes/build/cmd).
#   up        starts etcd, the API server (RBAC on), controller-manager, scheduler, a registry on
#             127.0.0.1, the provisioner, and two nodes n1 and n2 (a kubelet with its own containerd
#             each, gVisor as runtime handler `runsc`, a CNI bridge each); applies
#             deploy/kubernetes/cluster.yaml (namespace hershy, RuntimeClass gvisor, StorageClass
#             hershy-local); waits until both nodes are Ready and a gVisor Pod runs on each; writes
#             /run/hershy-kubernetes/env. A second `up` of a healthy cluster does nothing.
#   down      stops all it started, unmounts, removes its interfaces, iptables chains and cgroups,
#             and its state (etcd, volumes, registry); keeps the build cache and the PKI
#             ($STATE/pki: the CA and the users' certificates, so kubeconfigs stay valid).
#   status    prints what runs; exit 0 only when the cluster is usable.
#
# Networking: everything listens on 127.0.0.1, except the kubelets, which refuse a loopback node
# IP: each gets an address on an interface this script creates (hershy-k8s0, 10.250.0.N/32,
# local to this machine; a dummy interface, or an empty bridge where there is no dummy driver),
# and the API server reaches them by that InternalIP. Pods (10.251.N.0/24 on bridge hershy-brN;
# this machine routes to them) may reach other Pods and answer connections from this machine,
# and nothing else: iptables chains HERSHY-K8S-* drop anything else they send (to this machine,
# to Docker's containers, to the outside). hostPorts on 127.0.0.1 work (CNI portmap).
#
# Volumes: hostPath directories under $STATE/volumes with no node affinity (both nodes share this
# disk), so a Pod's volume follows it when it is rescheduled (`kubectl drain`). A node that stops
# answering has its Pods evicted after 30 s of NotReady (the API server's default tolerations).
#
# Timings seen (2 cores, shared, load 12-18): install cold ~50 min (kube-apiserver alone ~30; on
# an idle machine ~10 min), with a warm Go build cache ~45 s, warm 0 s; up ~15 s; down ~20 s.
#
# Environment: HERSHY_K8S_REGISTRY_PORT (default 15050), HERSHY_K8S_APISERVER_PORT (16443),
# HERSHY_K8S_ROLE_FILE (default deploy/kubernetes/role.yaml: the Role bound to user hershy-host),
# GO (a Go toolchain >= 1.26.3; default: go on PATH or /usr/local/go/bin/go).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
K8S_VERSION=v1.34.4
CACHE=/var/cache/hershy/kubernetes
RUN=/run/hershy-kubernetes
STATE=/var/lib/hershy-kubernetes
LOGS=$RUN/logs
PKI=$STATE/pki
BUILD_DIR=$REPO/deploy/kubernetes/build
RUNSC=/usr/local/lib/hershy/bin/runsc # built by scripts/setup-host.sh (netstack mode)
APISERVER_PORT=${HERSHY_K8S_APISERVER_PORT:-16443}
REGISTRY_PORT=${HERSHY_K8S_REGISTRY_PORT:-15050}
ETCD_PORT=23790
ETCD_PEER_PORT=23800
# The Role file: the script's checkout's, else the current directory's (a checkout of the Host's
# adapter where this script is not merged yet).
ROLE_FILE=${HERSHY_K8S_ROLE_FILE:-$REPO/deploy/kubernetes/role.yaml}
[[ -n ${HERSHY_K8S_ROLE_FILE:-} || -f $ROLE_FILE || ! -f $PWD/deploy/kubernetes/role.yaml ]] \
    || ROLE_FILE=$PWD/deploy/kubernetes/role.yaml
NODES=(n1 n2)
DUMMY_IF=hershy-k8s0
SERVICE_CIDR=10.252.0.0/24
PAUSE_IMAGE=hershy.local/pause:1
STORAGE_CLASS=hershy-local
RUNTIME_CLASS=gvisor
NAMESPACE=hershy
APT_PACKAGES=(containerd runc etcd-server etcd-client containernetworking-plugins iptables openssl curl python3 iproute2 patch)
STATUS_NOTE=/tmp/k8s-cluster-status

log() { printf '[setup-kubernetes] %s\n' "$*"; }
die() { printf '[setup-kubernetes] ERROR: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root"

# Per node: index 1..2 -> addresses, ports, names.
node_index() { case $1 in n1) echo 1;; n2) echo 2;; *) die "unknown node $1";; esac; }
node_ip() { echo "10.250.0.$(node_index "$1")"; }
node_pod_cidr() { echo "10.251.$(node_index "$1").0/24"; }
node_bridge() { echo "hershy-br$(node_index "$1")"; }
node_kubelet_port() { echo $((10250 + 10 * ($(node_index "$1") - 1))); }
node_healthz_port() { echo $((10248 + 20 * ($(node_index "$1") - 1))); }

# --- build cache ---------------------------------------------------------------------------------
# shellcheck source=lib.sh
source "$REPO/scripts/lib.sh"  # find_go

# Hash of a directory's files (excluding the given subdirectories), the Go version and a salt.
inputs_hash() {
    local dir=$1 salt=$2; shift 2
    local prune=() d
    for d in "$@"; do prune+=(-path "./$d" -prune -o); done
    {
        echo "$salt"
        (cd "$dir" && find . "${prune[@]}" -type f -print | LC_ALL=C sort | xargs sha256sum)
    } | sha256sum | cut -c1-16
}

GO_VERSION=unknown
resolve_cache_paths() {
    local go
    if go=$(find_go); then GO_VERSION=$("$go" env GOVERSION); fi
    K8S_OUT=$CACHE/kubernetes-$K8S_VERSION-$(inputs_hash "$BUILD_DIR" "$GO_VERSION" shim registry)
    SHIM_OUT=$CACHE/runsc-shim-$(inputs_hash "$BUILD_DIR/shim" "$GO_VERSION")
    REGISTRY_OUT=$CACHE/registry-$(inputs_hash "$BUILD_DIR/registry" "$GO_VERSION")
}

# Version stamps make a cache entry authoritative; `up` never builds, it only checks.
cached() { [[ -f $1/.complete ]]; }

KUBE_LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34 -X k8s.io/component-base/version.gitTreeState=clean"

build_kubernetes() {
    local go=$1 out=$K8S_OUT cmds=(kube-apiserver kubelet kube-controller-manager kube-scheduler)
    command -v kubectl >/dev/null || cmds+=(kubectl)
    mkdir -p "$out.tmp"
    log "building Kubernetes $K8S_VERSION (${cmds[*]}) from the Go module proxy (cold: ~10 min on 2 cores; log $out.log)"
    local pkgs=() c
    for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    (cd "$BUILD_DIR" && CGO_ENABLED=0 "$go" build -trimpath -ldflags "$KUBE_LDFLAGS" -o "$out.tmp/" "${pkgs[@]}" \
        && CGO_ENABLED=0 "$go" build -trimpath -ldflags "-s -w" -o "$out.tmp/" ./cmd/hershy-provisioner ./cmd/hershy-pause) \
        >"$out.log" 2>&1 || { tail -n 30 "$out.log" >&2; die "Kubernetes build failed (log $out.log)"; }
    make_pause_image "$out.tmp/hershy-pause" "$out.tmp/pause-image.tar"
    touch "$out.tmp/.complete"
    rm -rf "$out" && mv "$out.tmp" "$out"
}

# gVisor's shim with two patches (see deploy/kubernetes/build/shim/go.mod): the two modules are
# copied from the module cache next to a copy of the wrapper module and patched there.
build_shim() {
    local go=$1 out=$SHIM_OUT src=$CACHE/runsc-shim.src mod ver dir
    log "building gVisor's containerd-shim-runsc-v1 (patched; ~2 min cold; log $out.log)"
    rm -rf "$src" && mkdir -p "$src" "$out.tmp"
    cp "$BUILD_DIR/shim/go.mod" "$BUILD_DIR/shim/go.sum" "$src/"
    for mod in gvisor.dev/gvisor:gvisor github.com/containerd/containerd/v2:containerd-v2; do
        ver=$(sed -n "s#^\t${mod%%:*} \(v[^ ]*\).*#\1#p" "$BUILD_DIR/shim/go.mod" | head -n1)
        [[ -n $ver ]] || die "no version of ${mod%%:*} in shim/go.mod"
        dir=$(cd "$src" && GOFLAGS=-mod=mod "$go" mod download -json "${mod%%:*}@$ver" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
        cp -r "$dir" "$src/${mod##*:}" && chmod -R u+w "$src/${mod##*:}"
    done
    (cd "$src/gvisor" && patch -s -p1 <"$BUILD_DIR/shim/gvisor-shim-oom-score.patch")
    (cd "$src/containerd-v2" && patch -s -p1 <"$BUILD_DIR/shim/containerd-shim-start-address.patch")
    (cd "$src" && CGO_ENABLED=0 "$go" build -trimpath -ldflags "-s -w" -o "$out.tmp/containerd-shim-runsc-v1" gvisor.dev/gvisor/shim) \
        >"$out.log" 2>&1 || { tail -n 30 "$out.log" >&2; die "shim build failed (log $out.log)"; }
    rm -rf "$src"
    touch "$out.tmp/.complete"
    rm -rf "$out" && mv "$out.tmp" "$out"
}

build_registry() {
    local go=$1 out=$REGISTRY_OUT
    log "building the distribution registry (~2 min cold; log $out.log)"
    mkdir -p "$out.tmp"
    (cd "$BUILD_DIR/registry" && CGO_ENABLED=0 "$go" build -trimpath -ldflags "-s -w" -o "$out.tmp/registry" github.com/distribution/distribution/v3/cmd/registry) \
        >"$out.log" 2>&1 || { tail -n 30 "$out.log" >&2; die "registry build failed (log $out.log)"; }
    touch "$out.tmp/.complete"
    rm -rf "$out" && mv "$out.tmp" "$out"
}

# A docker-archive (`docker save` format) holding one layer with /pause: `ctr images import` reads it.
make_pause_image() {
    "$PY" - "$1" "$2" "$PAUSE_IMAGE" <<'EOF'
import hashlib, io, json, sys, tarfile
binary, out, tag = sys.argv[1:4]
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w") as t:
    info = t.gettarinfo(binary, arcname="pause"); info.uid = info.gid = 0; info.uname = info.gname = ""
    info.mtime = 0
    with open(binary, "rb") as f: t.addfile(info, f)
layer_bytes = layer.getvalue()
diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
config = json.dumps({"architecture": "amd64", "os": "linux",
    "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
    "rootfs": {"type": "layers", "diff_ids": [diff_id]}, "history": [{"created_by": "hershy-pause"}]}).encode()
config_name = hashlib.sha256(config).hexdigest() + ".json"
manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": ["layer.tar"]}]).encode()
with tarfile.open(out, mode="w") as t:
    for name, data in (("layer.tar", layer_bytes), (config_name, config), ("manifest.json", manifest)):
        info = tarfile.TarInfo(name); info.size = len(data); info.mode = 0o644
        t.addfile(info, io.BytesIO(data))
EOF
}

PY=/usr/bin/python3
[[ -x $PY ]] || PY=$(command -v python3 || echo python3)

cmd_install() {
    local start missing=() p go
    start=$(date +%s)
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing with apt: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
    fi
    PY=/usr/bin/python3
    [[ -x $RUNSC ]] || die "no $RUNSC: run scripts/setup-host.sh first (it builds runsc from the Go module proxy)"
    go=$(find_go) || die "no Go toolchain >= 1.26.3 (on PATH, in \$GO or /usr/local/go/bin, as scripts/setup-host.sh needs too)"
    resolve_cache_paths
    mkdir -p "$CACHE"
    export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
    # apiserver and kubelet first (the long part), the small ones in parallel with them.
    cached "$SHIM_OUT" || build_shim "$go" &
    local shim_pid=$!
    cached "$K8S_OUT" || build_kubernetes "$go"
    wait "$shim_pid" || die "shim build failed"
    cached "$REGISTRY_OUT" || build_registry "$go"
    # No kubectl on this machine: the one built above, on PATH (the tests call `kubectl`).
    if ! command -v kubectl >/dev/null && [[ -x $K8S_OUT/kubectl ]]; then
        ln -sfn "$K8S_OUT/kubectl" /usr/local/bin/kubectl
    fi
    # Old cache entries of other inputs are left for a rollback; remove by hand if space matters.
    log "installed in $(($(date +%s) - start)) s: $K8S_OUT, $SHIM_OUT, $REGISTRY_OUT"
}

require_installed() {
    resolve_cache_paths
    local d
    for d in "$K8S_OUT" "$SHIM_OUT" "$REGISTRY_OUT"; do
        cached "$d" || die "not installed ($d missing): run '$0 install' first"
    done
    [[ -x $RUNSC ]] || die "no $RUNSC: run scripts/setup-host.sh first"
    command -v etcd >/dev/null && command -v containerd >/dev/null && [[ -x /usr/lib/cni/bridge ]] \
        || die "apt packages missing: run '$0 install' first"
    KUBECTL=$(command -v kubectl || echo "$K8S_OUT/kubectl")
}

# --- processes -------------------------------------------------------------------------------
# start NAME CMD...: runs CMD in its own session, output to $LOGS/NAME.log, pid in $RUN/pids/NAME.
start() {
    local name=$1; shift
    mkdir -p "$RUN/pids" "$LOGS"
    setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN/pids/$name"
}
running() { local p; p=$(cat "$RUN/pids/$1" 2>/dev/null) && [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }

# stop_processes NAME...: SIGTERM to all at once, then SIGKILL to what is left after 5 s.
stop_processes() {
    local name pid pids=() i alive
    for name in "$@"; do
        pid=$(cat "$RUN/pids/$name" 2>/dev/null) || continue
        kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
        rm -f "$RUN/pids/$name"
    done
    for ((i = 0; i < 50; i++)); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || return 0
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}

print_log_tails() {
    local f
    for f in "$LOGS"/*.log; do
        [[ -f $f ]] || continue
        printf '\n----- %s (last 15 lines) -----\n' "$f" >&2
        tail -n 15 "$f" >&2
    done
}
fail() { printf '[setup-kubernetes] ERROR: %s\n' "$*" >&2; print_log_tails; exit 1; }

# wait_for SECONDS DESCRIPTION CMD...: polls CMD every 0.2 s.
wait_for() {
    local seconds=$1 what=$2 deadline; shift 2
    deadline=$(($(date +%s) + seconds))
    until "$@" >/dev/null 2>&1; do
        (($(date +%s) < deadline)) || fail "timed out after ${seconds}s waiting for $what"
        sleep 0.2
    done
}

kc() { "$KUBECTL" --kubeconfig "$PKI/admin.kubeconfig" "$@"; }

# --- PKI and kubeconfigs -----------------------------------------------------------------------
# cert NAME CN O SAN...: an ECDSA P-256 key and a certificate signed by the cluster CA.
cert() {
    local name=$1 cn=$2 org=$3 subj; shift 3
    subj="/CN=$cn"; [[ -n $org ]] && subj="/O=$org$subj"
    local ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth"
    (($#)) && ext+=$'\n'"subjectAltName=$(IFS=,; echo "$*")"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$subj" \
        -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 365 -extfile <(echo "$ext") -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr"
}

kubeconfig() {
    local name=$1 user=$2 namespace=${3:-default}
    cat >"$PKI/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hershy
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $user
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: hershy
  context: {cluster: hershy, user: $user, namespace: $namespace}
current-context: hershy
EOF
}

# Bump when make_pki issues other certificates: a kept PKI of another version is made anew.
PKI_VERSION=1
make_pki() {
    [[ $(cat "$PKI/.complete" 2>/dev/null) == "$PKI_VERSION" ]] && return 0
    rm -rf "$PKI" && mkdir -p "$PKI" && chmod 0700 "$PKI"
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
        -subj "/CN=hershy-test-cluster-ca" -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    cert apiserver kube-apiserver "" DNS:localhost DNS:kubernetes DNS:kubernetes.default \
        DNS:kubernetes.default.svc IP:127.0.0.1 IP:10.252.0.1
    cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
    cert admin hershy-admin system:masters
    cert controller-manager system:kube-controller-manager ""
    cert scheduler system:kube-scheduler ""
    cert provisioner hershy-provisioner ""
    cert hershy-host hershy-host ""
    kubeconfig admin hershy-admin
    kubeconfig controller-manager system:kube-controller-manager
    kubeconfig scheduler system:kube-scheduler
    kubeconfig provisioner hershy-provisioner
    kubeconfig hershy-host hershy-host "$NAMESPACE"
    local n
    for n in "${NODES[@]}"; do
        cert "kubelet-$n" "system:node:$n" system:nodes
        kubeconfig "kubelet-$n" "system:node:$n"
    done
    echo "$PKI_VERSION" >"$PKI/.complete"
}

# --- networking ------------------------------------------------------------------------------
setup_network() {
    local n
    # A dummy interface where the kernel has the module, else an empty bridge (these VMs' kernels
    # have no dummy driver): either only holds local addresses.
    ip link show "$DUMMY_IF" >/dev/null 2>&1 || ip link add "$DUMMY_IF" type dummy 2>/dev/null \
        || ip link add "$DUMMY_IF" type bridge
    for n in "${NODES[@]}"; do
        ip addr show dev "$DUMMY_IF" | grep -q "inet $(node_ip "$n")/" || ip addr add "$(node_ip "$n")/32" dev "$DUMMY_IF"
    done
    ip link set "$DUMMY_IF" up
    sysctl -qw net.ipv4.ip_forward=1
    local ipt
    for ipt in iptables ip6tables; do
        command -v $ipt >/dev/null || continue
        $ipt -N HERSHY-K8S-INPUT 2>/dev/null || $ipt -F HERSHY-K8S-INPUT
        $ipt -N HERSHY-K8S-FORWARD 2>/dev/null || $ipt -F HERSHY-K8S-FORWARD
        # Pods may answer this machine and talk to each other, and send nothing else.
        $ipt -A HERSHY-K8S-INPUT -i hershy-br+ -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
        $ipt -A HERSHY-K8S-INPUT -i hershy-br+ -j DROP
        $ipt -A HERSHY-K8S-FORWARD -i hershy-br+ -o hershy-br+ -j ACCEPT
        $ipt -A HERSHY-K8S-FORWARD -i hershy-br+ -j DROP
        $ipt -A HERSHY-K8S-FORWARD -o hershy-br+ -j DROP
        $ipt -C INPUT -j HERSHY-K8S-INPUT 2>/dev/null || $ipt -I INPUT 1 -j HERSHY-K8S-INPUT
        $ipt -C FORWARD -j HERSHY-K8S-FORWARD 2>/dev/null || $ipt -I FORWARD 1 -j HERSHY-K8S-FORWARD
    done
}

teardown_network() {
    local n br ipt table chain
    for n in "${NODES[@]}"; do
        br=$(node_bridge "$n")
        ip link show "$br" >/dev/null 2>&1 && ip link del "$br"
    done
    ip link show "$DUMMY_IF" >/dev/null 2>&1 && ip link del "$DUMMY_IF"
    for ipt in iptables ip6tables; do
        command -v $ipt >/dev/null || continue
        while $ipt -D INPUT -j HERSHY-K8S-INPUT 2>/dev/null; do :; done
        while $ipt -D FORWARD -j HERSHY-K8S-FORWARD 2>/dev/null; do :; done
        for chain in HERSHY-K8S-INPUT HERSHY-K8S-FORWARD; do
            $ipt -F $chain 2>/dev/null && $ipt -X $chain 2>/dev/null || true
        done
        # The portmap plugin's chains (CNI-HOSTPORT-*, CNI-DN-*), and the bridge plugin's CNI-*
        # masquerade chains, with every rule that jumps to them. No one else here uses CNI.
        for table in nat filter; do
            local rules
            rules=$($ipt -t $table -S 2>/dev/null | grep -E '^-A .* -j CNI-' || true)
            while IFS= read -r rule; do
                [[ -n $rule ]] || continue
                # shellcheck disable=SC2086
                eval "$ipt -t $table ${rule/-A /-D }" 2>/dev/null || true
            done <<<"$rules"
            for chain in $($ipt -t $table -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^CNI-/ {print $2}'); do
                $ipt -t $table -F "$chain" 2>/dev/null || true
            done
            for chain in $($ipt -t $table -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^CNI-/ {print $2}'); do
                $ipt -t $table -X "$chain" 2>/dev/null || true
            done
        done
    done
}

# --- cgroups (v1: the kubelet's cgroupRoot must exist in every hierarchy) ---------------------
cgroup_dirs() { local n=$1 h; for h in /sys/fs/cgroup/*/; do [[ -f ${h}cgroup.procs ]] && echo "${h}hershy-$n"; done; }
setup_cgroups() {
    local n=$1 d
    for d in $(cgroup_dirs "$n"); do
        mkdir -p "$d"
        if [[ -f $(dirname "$d")/cpuset.cpus ]]; then
            [[ -n $(cat "$d/cpuset.cpus") ]] || cat "$(dirname "$d")/cpuset.cpus" >"$d/cpuset.cpus"
            [[ -n $(cat "$d/cpuset.mems") ]] || cat "$(dirname "$d")/cpuset.mems" >"$d/cpuset.mems"
        fi
    done
}
teardown_cgroups() {
    local n=$1 d p
    for d in $(cgroup_dirs "$n"); do
        [[ -d $d ]] || continue
        # Anything still inside was started for this node: kill it, then remove the tree.
        for p in $(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
}

# --- node: containerd + kubelet ----------------------------------------------------------------
write_node_config() {
    local n=$1 dir=$STATE/$n rdir=$RUN/$n
    mkdir -p "$dir/cni" "$rdir/cni/net.d" "$rdir/runsc" "$dir/kubelet"
    cat >"$dir/runsc.toml" <<EOF
binary_name = "$RUNSC"
root = "$rdir/runsc"
EOF
    cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$dir/containerd"
state = "$rdir/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$rdir/containerd.sock"
[ttrpc]
  address = "$rdir/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runsc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc]
      runtime_type = "io.containerd.runsc.v1"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc.options]
        TypeUrl = "io.containerd.runsc.v1.options"
        ConfigPath = "$dir/runsc.toml"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$rdir/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."127.0.0.1:$REGISTRY_PORT"]
    endpoint = ["http://127.0.0.1:$REGISTRY_PORT"]
EOF
    cat >"$rdir/cni/net.d/10-hershy.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "hershy-$n",
  "plugins": [
    {"type": "bridge", "bridge": "$(node_bridge "$n")", "isGateway": true, "ipMasq": false,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$(node_pod_cidr "$n")"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$dir/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
  ]
}
EOF
    cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $(node_ip "$n")
port: $(node_kubelet_port "$n")
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(node_healthz_port "$n")
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: /hershy-$n
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$rdir/containerd.sock
imageServiceEndpoint: unix://$rdir/containerd.sock
serializeImagePulls: false
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
resolvConf: ""
podPidsLimit: 4096
maxPods: 110
podLogsDir: $dir/pod-logs
nodeStatusReportFrequency: 10s
EOF
}

start_node() {
    local n=$1 dir=$STATE/$n rdir=$RUN/$n
    write_node_config "$n"
    setup_cgroups "$n"
    if ! running "containerd-$n"; then
        start "containerd-$n" env PATH="$SHIM_OUT:/usr/local/lib/hershy/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
            containerd --config "$dir/containerd.toml"
    fi
}

start_kubelet() {
    local n=$1 dir=$STATE/$n rdir=$RUN/$n
    if ! ctr -a "$rdir/containerd.sock" -n k8s.io images list -q 2>/dev/null | grep -qxF "$PAUSE_IMAGE"; then
        ctr -a "$rdir/containerd.sock" -n k8s.io images import "$K8S_OUT/pause-image.tar" >/dev/null \
            || fail "could not import the pause image into $n's containerd"
    fi
    running "kubelet-$n" && return 0
    start "kubelet-$n" env PATH="/usr/sbin:/usr/bin:/sbin:/bin" "$K8S_OUT/kubelet" \
        --config "$dir/kubelet.yaml" --kubeconfig "$PKI/kubelet-$n.kubeconfig" \
        --root-dir "$dir/kubelet" --cert-dir "$dir/kubelet/pki" \
        --hostname-override "$n" --node-ip "$(node_ip "$n")" \
        --node-labels "hershy.dev/test-node=$n"
}

# --- control plane ----------------------------------------------------------------------------
apiserver_ready() { curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null; }
etcd_ready() { curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
registry_ready() { curl -sf --max-time 2 "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null; }

port_free_or_ours() {
    local port=$1 name=$2
    if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
        running "$name" || fail "port $port is taken by another process (needed by $name)"
    fi
}

start_control_plane() {
    port_free_or_ours "$ETCD_PORT" etcd
    port_free_or_ours "$APISERVER_PORT" kube-apiserver
    port_free_or_ours "$REGISTRY_PORT" registry
    # etcd on a tmpfs: the cluster is throwaway, and fsyncs on this disk cost seconds under load.
    mkdir -p "$RUN/etcd"
    mountpoint -q "$RUN/etcd" || mount -t tmpfs -o size=1g,mode=0700 hershy-etcd "$RUN/etcd"
    running etcd || start etcd etcd --name hershy --data-dir "$RUN/etcd/data" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "hershy=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "" \
        --quota-backend-bytes 1073741824
    mkdir -p "$STATE/registry" "$STATE/volumes"
    cat >"$STATE/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $STATE/registry}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$REGISTRY_PORT
EOF
    running registry || start registry env OTEL_TRACES_EXPORTER=none OTEL_SDK_DISABLED=true \
        "$REGISTRY_OUT/registry" serve "$STATE/registry.yml"
    wait_for 30 etcd etcd_ready
    running kube-apiserver || start kube-apiserver "$K8S_OUT/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
        --endpoint-reconciler-type none \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
        --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types InternalIP \
        --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
        --service-account-issuer https://kubernetes.default.svc \
        --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
        --allow-privileged=false --profiling=false \
        --default-not-ready-toleration-seconds 30 --default-unreachable-toleration-seconds 30
}

start_controllers() {
    running kube-controller-manager || start kube-controller-manager "$K8S_OUT/kube-controller-manager" \
        --kubeconfig "$PKI/controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
        --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
        --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
        --profiling=false
    running kube-scheduler || start kube-scheduler "$K8S_OUT/kube-scheduler" \
        --kubeconfig "$PKI/scheduler.kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false --profiling=false
    running provisioner || start provisioner "$K8S_OUT/hershy-provisioner" \
        --kubeconfig "$PKI/provisioner.kubeconfig" --storage-class "$STORAGE_CLASS" --root "$STATE/volumes"
}

# The user hershy-host gets the Role(s) in $ROLE_FILE, bound in namespace hershy (ClusterRoles
# bound cluster-wide). Without that file the user exists but may do nothing.
bind_host_role() {
    [[ -f $ROLE_FILE ]] || { log "no $ROLE_FILE: user hershy-host gets no binding"; return 0; }
    kc apply -n "$NAMESPACE" -f "$ROLE_FILE" >/dev/null || fail "kubectl apply $ROLE_FILE failed"
    local kind name
    while read -r kind name; do
        case $kind in
            Role) kc create rolebinding "hershy-host-$name" -n "$NAMESPACE" --role "$name" --user hershy-host \
                      --dry-run=client -o yaml | kc apply -f - >/dev/null ;;
            ClusterRole) kc create clusterrolebinding "hershy-host-$name" --clusterrole "$name" --user hershy-host \
                      --dry-run=client -o yaml | kc apply -f - >/dev/null ;;
        esac
    done < <(kc get -n "$NAMESPACE" -f "$ROLE_FILE" -o jsonpath='{range .items[*]}{.kind} {.metadata.name}{"\n"}{end}' 2>/dev/null \
             || kc get -n "$NAMESPACE" -f "$ROLE_FILE" -o jsonpath='{.kind} {.metadata.name}{"\n"}')
    log "user hershy-host bound to the Role(s) in $ROLE_FILE"
}

smoke_pods() {
    local n
    for n in "${NODES[@]}"; do
        kc apply -f - >/dev/null <<EOF || fail "could not create the smoke Pod on $n"
apiVersion: v1
kind: Pod
metadata:
  name: hershy-smoke-$n
  namespace: default
spec:
  nodeName: $n
  runtimeClassName: $RUNTIME_CLASS
  automountServiceAccountToken: false
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  containers:
  - name: pause
    image: $PAUSE_IMAGE
    imagePullPolicy: Never
EOF
    done
    for n in "${NODES[@]}"; do
        wait_for 60 "the gVisor smoke Pod on $n to run" \
            sh -c "'$KUBECTL' --kubeconfig '$PKI/admin.kubeconfig' get pod -n default hershy-smoke-$n -o jsonpath='{.status.phase}' | grep -qx Running"
    done
    kc delete pod -n default "${NODES[@]/#/hershy-smoke-}" --grace-period=0 --wait=false >/dev/null 2>&1 || true
}

write_env() {
    mkdir -p "$RUN"
    cat >"$RUN/env.tmp" <<EOF
KUBECONFIG=$PKI/admin.kubeconfig
HERSHY_K8S_HOST_KUBECONFIG=$PKI/hershy-host.kubeconfig
HERSHY_K8S_REGISTRY=127.0.0.1:$REGISTRY_PORT
HERSHY_K8S_STORAGE_CLASS=$STORAGE_CLASS
HERSHY_K8S_RUNTIME_CLASS=$RUNTIME_CLASS
HERSHY_K8S_NAMESPACE=$NAMESPACE
HERSHY_K8S_NODES="${NODES[*]}"
EOF
    mv "$RUN/env.tmp" "$RUN/env"
}

COMPONENTS=(etcd registry kube-apiserver kube-controller-manager kube-scheduler provisioner containerd-n1 containerd-n2 kubelet-n1 kubelet-n2)

healthy() {
    local c
    for c in "${COMPONENTS[@]}"; do running "$c" || return 1; done
    [[ -f $RUN/env && -f $PKI/admin.kubeconfig ]] || return 1
    apiserver_ready || return 1
    registry_ready || return 1
    local ready
    ready=$(kc get nodes -o jsonpath='{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{" "}{end}' 2>/dev/null) || return 1
    for c in "${NODES[@]}"; do [[ " $ready" == *" $c=True "* ]] || return 1; done
}

cmd_up() {
    local start n
    start=$(date +%s%N)
    require_installed
    if healthy; then
        bind_host_role
        log "already up and healthy (env: $RUN/env)"
        return 0
    fi
    if [[ -d $RUN/pids ]] && compgen -G "$RUN/pids/*" >/dev/null; then
        log "a previous cluster is partly running: tearing it down first"
        cmd_down
    fi
    mkdir -p "$RUN" "$LOGS" "$STATE"
    make_pki
    setup_network
    start_control_plane
    # containerds start while the API server comes up.
    for n in "${NODES[@]}"; do start_node "$n"; done
    wait_for 60 kube-apiserver apiserver_ready
    start_controllers
    kc apply -f "$REPO/deploy/kubernetes/cluster.yaml" >/dev/null || fail "kubectl apply cluster.yaml failed"
    for n in "${NODES[@]}"; do
        wait_for 30 "containerd of $n" test -S "$RUN/$n/containerd.sock"
        start_kubelet "$n"
    done
    wait_for 30 registry registry_ready
    bind_host_role
    wait_for 90 "nodes ${NODES[*]} to be Ready" kc wait --for=condition=Ready node "${NODES[@]}" --timeout=2s
    wait_for 60 "the default ServiceAccounts" sh -c "'$KUBECTL' --kubeconfig '$PKI/admin.kubeconfig' get sa default -n default && '$KUBECTL' --kubeconfig '$PKI/admin.kubeconfig' get sa default -n $NAMESPACE"
    smoke_pods
    write_env
    log "up in $(( ($(date +%s%N) - start) / 1000000 )) ms; env: $RUN/env"
}

# Kill every process whose command line mentions PATTERN (our own paths only).
kill_matching() {
    local pattern=$1 f pid
    for f in $(grep -laF -- "$pattern" /proc/[0-9]*/cmdline 2>/dev/null); do
        pid=${f#/proc/}; pid=${pid%/cmdline}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        kill -KILL "$pid" 2>/dev/null || true
    done
}

cmd_down() {
    local n c
    resolve_cache_paths
    KUBECTL=$(command -v kubectl || echo "$K8S_OUT/kubectl")
    # Let the kubelets tear their Pods down (CNI DEL frees the hostPort rules and veths) while the
    # API server is still there; whatever is left afterwards is killed below.
    if running kube-apiserver && [[ -f $PKI/admin.kubeconfig ]] && apiserver_ready; then
        kc delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
        for ((c = 0; c < 50; c++)); do
            local left=0
            for n in "${NODES[@]}"; do
                [[ -S $RUN/$n/containerd.sock ]] || continue
                # Running tasks: a stopped sandbox (its network already torn down) stays listed
                # as a container until the kubelet's garbage collection, a minute later.
                left=$((left + $(ctr -a "$RUN/$n/containerd.sock" -n k8s.io tasks list -q 2>/dev/null | wc -l)))
            done
            ((left == 0)) && break
            sleep 0.2
        done
    fi
    stop_processes kubelet-n1 kubelet-n2 provisioner kube-scheduler kube-controller-manager
    for n in "${NODES[@]}"; do
        # Sandboxes and shims of this node (their command lines name its state directories).
        kill_matching "$RUN/$n/"
    done
    stop_processes containerd-n1 containerd-n2 kube-apiserver registry etcd
    for n in "${NODES[@]}"; do teardown_cgroups "$n"; done
    # Mounts under our directories (netns, shm, overlay rootfs, kubelet volumes, etcd tmpfs).
    local m
    for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^($RUN|$STATE)(/|$)" | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    teardown_network
    # The kubelets' links to their containers' logs (a fixed directory shared with any kubelet).
    find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete 2>/dev/null || true
    # Everything but the PKI (generating it takes seconds; the next `up` reuses it).
    find "$STATE" -mindepth 1 -maxdepth 1 ! -name pki -exec rm -rf {} + 2>/dev/null || true
    rm -rf "$RUN"
    log "down (the build cache $CACHE is kept)"
}

cmd_status() {
    require_installed
    local c ok=0
    for c in "${COMPONENTS[@]}"; do
        if running "$c"; then printf '  %-24s running (pid %s)\n' "$c" "$(cat "$RUN/pids/$c")"; else printf '  %-24s not running\n' "$c"; ok=1; fi
    done
    if [[ -f $PKI/admin.kubeconfig ]] && apiserver_ready; then
        echo "  api server               ready at https://127.0.0.1:$APISERVER_PORT"
        kc get nodes -o wide 2>/dev/null | sed 's/^/  /'
    else
        echo "  api server               not ready"; ok=1
    fi
    registry_ready && echo "  registry                 127.0.0.1:$REGISTRY_PORT" || { echo "  registry                 not answering"; ok=1; }
    if ((ok == 0)) && healthy; then echo "usable; env: $RUN/env"; return 0; fi
    echo "not usable"; return 1
}

# (Sourced with HERSHY_K8S_SOURCE_ONLY=1: only the functions, for debugging.)
[[ ${HERSHY_K8S_SOURCE_ONLY:-} == 1 ]] && return 0

case ${1:-} in
    install) cmd_install ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
