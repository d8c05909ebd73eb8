# Start, stop and inspect the one-node management cluster.

RUN_DIR="/run/kok-local"
CONTAINERD_SOCK="$RUN_DIR/containerd.sock"
ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380
# Ports the cluster listens on; all bound to loopback or the node IP on lo.
CLUSTER_PORTS="$ETCD_CLIENT_PORT $ETCD_PEER_PORT 6443 10248 10249 10250 10256 10257 10259"
# Started in this order, stopped in reverse.
DAEMONS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
# Sysctls that the bridge plugin, kubelet or kube-proxy change: saved at `up`, restored at `down`.
SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.route_localnet vm.overcommit_memory kernel.panic
         kernel.panic_on_oops net.bridge.bridge-nf-call-iptables)
SAFETY_CHAIN="KOK-LOCAL-SAFETY"

ctr_() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }
kubectl_() { kubectl --kubeconfig "$KOK_STATE_DIR/admin.kubeconfig" "$@"; }

install_deps() {
  apt_install containerd runc containernetworking-plugins iptables conntrack busybox-static \
    etcd-server etcd-client openssl iproute2 gcc libc6-dev ca-certificates procps kmod
}

# --- processes -------------------------------------------------------------

daemon_pid() { # prints the pid if the daemon from our pid file is alive and is what we started
  local name=$1 pid
  [ -f "$PID_DIR/$name.pid" ] || return 1
  pid=$(cat "$PID_DIR/$name.pid")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  # A recycled pid must not be mistaken for ours.
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$name" || return 1
  echo "$pid"
}

start_daemon() { # start_daemon NAME CMD...
  local name=$1; shift
  mkdir -p "$PID_DIR" "$LOG_DIR"
  printf '\n==== %s start %s\n' "$name" "$(date -u +%FT%TZ)" >>"$LOG_DIR/$name.log"
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$PID_DIR/$name.pid"
}

stop_daemon() {
  local name=$1 pid i
  if pid=$(daemon_pid "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_DIR/$name.pid"
}

must_become() { # must_become SECONDS DAEMON DESCRIPTION CMD...
  local timeout=$1 name=$2 what=$3; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    daemon_pid "$name" >/dev/null || { tail -n 15 "$LOG_DIR/$name.log" >&2; die "$name exited before $what; log: $LOG_DIR/$name.log"; }
    [ $SECONDS -lt $deadline ] || { tail -n 15 "$LOG_DIR/$name.log" >&2; die "$name: no $what after ${timeout}s; log: $LOG_DIR/$name.log"; }
    sleep 0.5
  done
}

check_ports_free() {
  local p owner
  for p in $CLUSTER_PORTS; do
    owner=$(ss -ltnpH "sport = :$p" 2>/dev/null | head -n 1)
    [ -z "$owner" ] || die "port $p is already taken: $owner"
  done
}

# --- network ---------------------------------------------------------------

save_sysctls() {
  # Kept across a crash: the first `up` records the machine's own values.
  [ -f "$KOK_STATE_DIR/sysctl.saved" ] && return 0
  local k
  for k in "${SYSCTLS[@]}"; do
    [ -e "/proc/sys/${k//.//}" ] && echo "$k=$(cat "/proc/sys/${k//.//}")"
  done >"$KOK_STATE_DIR/sysctl.saved"
}

restore_sysctls() {
  [ -f "$KOK_STATE_DIR/sysctl.saved" ] || return 0
  local kv
  while read -r kv; do
    echo "${kv#*=}" >"/proc/sys/$(echo "${kv%%=*}" | tr . /)" 2>/dev/null || log "warning: could not restore $kv"
  done <"$KOK_STATE_DIR/sysctl.saved"
  rm -f "$KOK_STATE_DIR/sysctl.saved"
}

# SAFETY: forwarded packets may only go from the pod bridge to the pod bridge.
# Installed before any pod exists, so no pod packet can leave the machine.
install_safety_rules() {
  iptables -t mangle -N "$SAFETY_CHAIN" 2>/dev/null || iptables -t mangle -F "$SAFETY_CHAIN"
  iptables -t mangle -A "$SAFETY_CHAIN" -i "$BRIDGE" -o "$BRIDGE" -j RETURN
  iptables -t mangle -A "$SAFETY_CHAIN" -j DROP
  iptables -t mangle -C FORWARD -j "$SAFETY_CHAIN" 2>/dev/null || iptables -t mangle -I FORWARD 1 -j "$SAFETY_CHAIN"
  # Belt and braces, as measured on this machine kind: the external interfaces by name.
  local ifc
  for ifc in $(external_interfaces); do
    iptables -t mangle -C "$SAFETY_CHAIN" -o "$ifc" -j DROP 2>/dev/null || iptables -t mangle -I "$SAFETY_CHAIN" 1 -o "$ifc" -j DROP
    iptables -t mangle -C "$SAFETY_CHAIN" -i "$ifc" -j DROP 2>/dev/null || iptables -t mangle -I "$SAFETY_CHAIN" 1 -i "$ifc" -j DROP
  done
  iptables -t mangle -C FORWARD -j "$SAFETY_CHAIN" >/dev/null 2>&1 || die "could not install the forwarding safety rules"
}

external_interfaces() {
  # kokn0 and vethkok*: the tenant nodes' bridge and veths (hack/tenant-node).
  ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -vE "^(lo|$BRIDGE|kokn0|veth.*)$" || true
}

setup_network() {
  save_sysctls
  install_safety_rules
  ip addr show dev lo | grep -q " $NODE_IP/32" || ip addr add "$NODE_IP/32" dev lo
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr show dev "$BRIDGE" | grep -q " $POD_GATEWAY/" || ip addr add "$POD_GATEWAY/16" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # The host reaches ClusterIPs through kube-proxy's DNAT; the route keeps those
  # packets on the bridge instead of the default route.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
  echo 1 >/proc/sys/net/ipv4/ip_forward
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null || true
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
  return 0
}

# Remove every rule and chain the cluster added: ours, kubelet's and kube-proxy's
# (KUBE-*), the CNI plugins' (CNI-*).
purge_iptables() {
  local t line chain
  command -v iptables-save >/dev/null || return 0
  for t in filter nat mangle raw; do
    iptables-save -t "$t" 2>/dev/null | grep -E "^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j (KUBE-|CNI-|$SAFETY_CHAIN)" \
      | while read -r line; do eval "iptables -t $t -D ${line#-A }" 2>/dev/null || true; done
    for chain in $(iptables-save -t "$t" 2>/dev/null | grep -oE "^:(KUBE-|CNI-|$SAFETY_CHAIN)[^ ]*" | tr -d :); do
      iptables -t "$t" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables-save -t "$t" 2>/dev/null | grep -oE "^:(KUBE-|CNI-|$SAFETY_CHAIN)[^ ]*" | tr -d :); do
      iptables -t "$t" -X "$chain" 2>/dev/null || true
    done
  done
}

teardown_network() {
  purge_iptables
  ip route del "$SERVICE_CIDR" 2>/dev/null || true
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  # veths of dead pods vanish with their netns; remove the netns containerd made.
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-' || true); do
    ip netns delete "$ns" 2>/dev/null || true
  done
  ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
  restore_sysctls
}

# --- pods and mounts -------------------------------------------------------

kill_pod_processes() {
  # kubelet (cgroupfs driver) puts every container of every pod under kubepods/.
  local i pids
  for i in $(seq 1 20); do
    pids=$(find /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/memory/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u || true)
    [ -z "$pids" ] && break
    kill -KILL $pids 2>/dev/null || true
    sleep 0.3
  done
  local shim
  for shim in $(pgrep -f "containerd-shim.*$CONTAINERD_SOCK" || true); do kill -KILL "$shim" 2>/dev/null || true; done
  local d
  for d in /sys/fs/cgroup/*/kubepods; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

unmount_cluster_mounts() {
  local m
  for m in $(awk '{print $2}' /proc/self/mounts | grep -E "^($KOK_STATE_DIR|$RUN_DIR)/" | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: could not unmount $m"
  done
}

# --- configuration ---------------------------------------------------------

write_configs() {
  mkdir -p "$KOK_STATE_DIR/containerd" "$KOK_STATE_DIR/cni/net.d" "$KOK_STATE_DIR/kubelet" "$RUN_DIR"
  cat >"$KOK_STATE_DIR/containerd/config.toml" <<TOML
version = 2
root = "$KOK_STATE_DIR/containerd/root"
state = "$RUN_DIR/containerd"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$KOK_IMAGE_PREFIX/pause:$PAUSE_TAG"
  # Required here: the VM lacks CAP_SYS_RESOURCE, so a negative oom_score_adj fails every sandbox.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$KOK_STATE_DIR/cni/net.d"
TOML
  cat >"$KOK_STATE_DIR/cni/net.d/10-kok-local.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "kok-local",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$KOK_STATE_DIR/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  cat >"$KOK_STATE_DIR/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI_DIR/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failSwapOn: false
clusterDomain: cluster.local
maxPods: 250
serializeImagePulls: false
# Local images cannot be pulled again: never collect them, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
YAML
}

# --- lifecycle -------------------------------------------------------------

any_daemon_recorded() { ls "$PID_DIR"/*.pid >/dev/null 2>&1; }

cluster_healthy() {
  local d
  for d in "${DAEMONS[@]}"; do daemon_pid "$d" >/dev/null || return 1; done
  kubectl_ get --raw /readyz >/dev/null 2>&1
}

teardown() {
  # Best effort: every step runs even when an earlier one found nothing to do.
  set +e
  local d i
  # Tenant nodes (hack/tenant-node) first: they live on this cluster's network.
  tnode_remove_all
  stop_daemon kubelet
  kill_pod_processes
  for ((i=${#DAEMONS[@]}-1; i>=0; i--)); do
    d=${DAEMONS[$i]}
    [ "$d" = kubelet ] || stop_daemon "$d"
  done
  # Anything of ours still running without a pid file (a crash mid-start).
  pkill -KILL -f -- "--config $KOK_STATE_DIR/containerd/config.toml" 2>/dev/null || true
  kill_pod_processes
  unmount_cluster_mounts
  teardown_network
  rm -rf "$RUN_DIR" "$KOK_STATE_DIR/cni/ipam" "$PID_DIR"
  set -e
}

start_control_plane() {
  local bin=$KUBE_BIN_DIR
  start_daemon etcd etcd --name kok-local --data-dir "$KOK_STATE_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "kok-local=http://127.0.0.1:$ETCD_PEER_PORT"
  must_become 30 etcd "health" etcdctl --endpoints "127.0.0.1:$ETCD_CLIENT_PORT" endpoint health

  start_daemon kube-apiserver "$bin/kube-apiserver" \
    --advertise-address="$NODE_IP" --bind-address="$NODE_IP" --secure-port=6443 --insecure-port=0 \
    --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --client-ca-file="$PKI_DIR/ca.crt" --tls-cert-file="$PKI_DIR/apiserver.crt" --tls-private-key-file="$PKI_DIR/apiserver.key" \
    --kubelet-client-certificate="$PKI_DIR/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI_DIR/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-key-file="$PKI_DIR/sa.pub" --service-account-signing-key-file="$PKI_DIR/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --allow-privileged=true --profiling=false
  must_become 90 kube-apiserver "/readyz" kubectl_ get --raw /readyz

  start_daemon kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$KOK_STATE_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$KOK_STATE_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$KOK_STATE_DIR/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --port=0 --secure-port=10257 --leader-elect=false \
    --cluster-signing-cert-file="$PKI_DIR/ca.crt" --cluster-signing-key-file="$PKI_DIR/ca.key" \
    --root-ca-file="$PKI_DIR/ca.crt" --service-account-private-key-file="$PKI_DIR/sa.key" \
    --use-service-account-credentials=true --service-cluster-ip-range="$SERVICE_CIDR" --profiling=false
  start_daemon kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig="$KOK_STATE_DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig="$KOK_STATE_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig="$KOK_STATE_DIR/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --port=0 --secure-port=10259 --leader-elect=false --profiling=false
}

start_node() {
  local bin=$KUBE_BIN_DIR
  start_daemon kubelet "$bin/kubelet" --config="$KOK_STATE_DIR/kubelet/config.yaml" \
    --kubeconfig="$KOK_STATE_DIR/kubelet.kubeconfig" --container-runtime=remote \
    --container-runtime-endpoint="unix://$CONTAINERD_SOCK" --node-ip="$NODE_IP" --hostname-override="$NODE_NAME" \
    --root-dir="$KOK_STATE_DIR/kubelet/root" --cert-dir="$KOK_STATE_DIR/kubelet/pki"
  start_daemon kube-proxy "$bin/kube-proxy" --kubeconfig="$KOK_STATE_DIR/kube-proxy.kubeconfig" \
    --hostname-override="$NODE_NAME" --cluster-cidr="$POD_CIDR" --proxy-mode=iptables \
    --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 \
    --nodeport-addresses="$NODE_IP/32" --conntrack-max-per-core=0
}

node_ready() {
  [ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# Ready as reported by this kubelet run, not a status left in etcd by an earlier one.
node_ready_since() { # node_ready_since RFC3339_UTC
  node_ready || return 1
  local beat
  beat=$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}')
  [[ "$beat" > "$1" || "$beat" == "$1" ]]
}

cmd_up() {
  require_root
  local t0=$SECONDS
  if cluster_healthy; then
    log "the cluster is already running"
    # Images added since it was started (a newer checkout) are imported now.
    import_images
    cmd_status
    return 0
  fi
  if any_daemon_recorded || ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "found the remains of an earlier run (killed without 'down'); cleaning up first"
    teardown
  fi
  install_deps
  require_free_disk "$KOK_CACHE_DIR" 4000
  require_free_disk "$KOK_STATE_DIR" 2000
  build_kubernetes
  build_images
  check_ports_free
  # From here on, a failure tears down whatever was started.
  trap 'rc=$?; if [ $rc -ne 0 ]; then log "up failed; stopping what was started"; teardown; fi' EXIT
  mkdir -p "$KOK_STATE_DIR" "$LOG_DIR"
  setup_network
  make_pki
  write_configs
  start_daemon containerd containerd --config "$KOK_STATE_DIR/containerd/config.toml"
  must_become 30 containerd "socket" ctr_ version
  import_images
  start_control_plane
  local started_at; started_at=$(date -u +%FT%TZ)
  start_node
  must_become 60 kubelet "healthz" curl_ok http://127.0.0.1:10248/healthz
  must_become 120 kubelet "Ready node" node_ready_since "$started_at"
  # kube-proxy is ready once its healthz answers (it has synced the Services).
  must_become 30 kube-proxy "healthz" curl_ok http://127.0.0.1:10256/healthz
  trap - EXIT
  log "cluster up in $((SECONDS - t0))s; node $NODE_NAME Ready"
  log "use it: export KUBECONFIG=$KOK_STATE_DIR/admin.kubeconfig   (or: eval \"\$(hack/local-cluster env)\")"
}

curl_ok() { python3 - "$1" <<'PY'
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2).read()
PY
}

cmd_down() {
  require_root
  teardown
  log "cluster stopped; processes, mounts, iptables rules, routes and sysctls restored (data kept in $KOK_STATE_DIR)"
}

cmd_status() {
  local d pid rc=0
  echo "daemons:"
  for d in "${DAEMONS[@]}"; do
    if pid=$(daemon_pid "$d"); then echo "  $d running (pid $pid)"; else echo "  $d not running"; rc=1; fi
  done
  echo "node:"
  if node_ready; then
    kubectl_ get nodes -o wide 2>/dev/null | sed 's/^/  /'
  else
    echo "  $NODE_NAME not Ready"; rc=1
  fi
  echo "images (prefix $KOK_IMAGE_PREFIX):"
  if daemon_pid containerd >/dev/null; then
    ctr_ images ls -q 2>/dev/null | grep "^$KOK_IMAGE_PREFIX/" | sed 's/^/  /'
  else
    echo "  (containerd not running)"
  fi
  echo "kubeconfig: $KOK_STATE_DIR/admin.kubeconfig"
  return $rc
}

cmd_env() {
  echo "export KUBECONFIG=$KOK_STATE_DIR/admin.kubeconfig"
  echo "export KOK_IMAGE_PREFIX=$KOK_IMAGE_PREFIX"
  echo "export KOK_KUBE_PATCH_TAG=$KUBE_PATCH_ALIAS"
  # The etcd 3.5 image the upgrade tests move tenants to (3.4 -> 3.5).
  if [ -x "$KOK_CACHE_DIR/etcd35/usr/bin/etcd" ]; then
    echo "export KOK_ETCD35_TAG=$(etcd35_version "$KOK_CACHE_DIR/etcd35")"
  fi
}
