# Tenant worker nodes on this machine (hack/tenant-node). Sourced, not executed.
#
# Each node is a network namespace (veth to the host bridge kokn0), a persistent
# mount namespace in which the usual node paths (/etc/kubernetes,
# /var/lib/kubelet, /run/containerd, ...) are the node's own directories under
# $KOK_STATE_DIR/nodes/NAME/fs, and a UTS namespace whose hostname is the node
# name. In it run a containerd and a kubelet of their own, in the cgroup
# /kokn-NAME (the kubelet's --cgroup-root), so everything a node started is
# found again by its cgroup and its namespaces.

TNODE_DIR="$KOK_STATE_DIR/nodes"
# A private mount holding the mount and UTS namespace files (a namespace file
# must sit on a mount without shared propagation).
TNODE_RUN_DIR="/run/kok-nodes"
TNODE_BRIDGE="kokn0"
TNODE_GATEWAY="10.203.0.1"
TNODE_CIDR="10.203.0.0/16"
TNODE_PREFIX="kokn-"          # cgroup names: kokn-NAME
TNODE_VETH_PREFIX="vethkok"   # host side of a node's veth: vethkokN (N = last octet of its IP)
# The management ranges (node IP, pods, Services): pod traffic leaving a node
# for them is masqueraded, since the host has no route back to tenant pod IPs.
TNODE_MGMT_RANGES="10.200.0.0/16 10.201.0.0/16 10.202.0.0/16 $TNODE_GATEWAY/32"
# Where a node may send anything at all: the management ranges and the nodes.
TNODE_ALLOWED_EGRESS="10.200.0.0/14"
TNODE_CRI_SOCKET="/run/containerd/containerd.sock"
# Paths each node has for itself; the source is fs/<path with / as _>.
TNODE_PRIVATE_DIRS=(/etc/kubernetes /etc/cni/net.d /var/lib/kubelet /var/lib/containerd /var/lib/cni
                    /var/log/pods /var/log/containers /run/containerd /run/netns)
# Images every node has without pulling (besides the management cluster's).
TNODE_IMAGES=("pause:$PAUSE_TAG" "busybox:$BUSYBOX_TAG" "kube-proxy:$KUBE_VERSION" "toolbox:$TOOLBOX_TAG")

tnode_dir() { echo "$TNODE_DIR/$1"; }
# The node's namespaces are files in $TNODE_RUN_DIR, never in /run/netns: `ip
# netns add` would turn /run/netns into a mount of itself, and then the
# management containerd could no longer delete the netns files of pods it made
# before (unlinkat: device or resource busy).
tnode_netns() { echo "$TNODE_RUN_DIR/$1.net"; }
tnode_net() { # tnode_net NAME CMD...: CMD in the node's network namespace only
  local name=$1; shift
  nsenter --net="$(tnode_netns "$name")" -- "$@"
}
tnode_cgroup() { echo "$TNODE_PREFIX$1"; }
tnode_names() { # every node with a state dir
  local d
  for d in "$TNODE_DIR"/*/; do [ -f "$d/ip" ] && basename "$d"; done
  return 0
}
tnode_src() { echo "$(tnode_dir "$1")/fs/$(echo "${2#/}" | tr / _)"; }

tnode_validate_name() {
  [[ "$1" =~ ^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$ ]] || die "node name '$1': use 1 to 32 of a-z, 0-9 and '-' (a DNS label)"
}

# tnode_enter NAME CMD...: run CMD in the node's namespaces (network, mount, UTS).
tnode_enter() {
  local name=$1; shift
  nsenter --net="$(tnode_netns "$name")" --mount="$TNODE_RUN_DIR/$name.mnt" \
    --uts="$TNODE_RUN_DIR/$name.uts" -- "$@"
}

# --- cgroups ----------------------------------------------------------------

tnode_cgroup_dirs() { # every cgroup v1/v2 directory of the node, one per hierarchy
  local cg; cg=$(tnode_cgroup "$1")
  local h
  for h in /sys/fs/cgroup/*/; do [ -d "$h$cg" ] && echo "$h$cg"; done
  return 0
}

# The kubelet's --cgroup-root must exist in every hierarchy; containerd, kubelet
# and kubeadm run in its "daemons" child (shims inherit it), pods in "kubepods".
tnode_make_cgroups() {
  local cg h; cg=$(tnode_cgroup "$1")
  for h in /sys/fs/cgroup/*/; do
    [ -f "${h}cgroup.procs" ] || continue
    mkdir -p "$h$cg/daemons"
    if [ -f "${h}cpuset.cpus" ]; then
      cat "${h}cpuset.cpus" >"$h$cg/cpuset.cpus"; cat "${h}cpuset.mems" >"$h$cg/cpuset.mems"
      cat "${h}cpuset.cpus" >"$h$cg/daemons/cpuset.cpus"; cat "${h}cpuset.mems" >"$h$cg/daemons/cpuset.mems"
    fi
  done
}

tnode_join_cgroup() { # tnode_join_cgroup NAME PID
  local cg h; cg=$(tnode_cgroup "$1")
  for h in /sys/fs/cgroup/*/; do
    [ -f "$h$cg/daemons/cgroup.procs" ] && echo "$2" >"$h$cg/daemons/cgroup.procs" 2>/dev/null
  done
  return 0
}

tnode_cgroup_pids() {
  local d
  for d in $(tnode_cgroup_dirs "$1"); do
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -u
}

# Processes in the node's network or mount namespace (kubeadm, a shell from
# `tenant-node exec`, hostNetwork containers) that may not be in its cgroup.
tnode_ns_pids() {
  local name=$1 netino="" mntino="" pat=()
  mountpoint -q "$(tnode_netns "$name")" 2>/dev/null && netino=$(stat -L -c %i "$(tnode_netns "$name")" 2>/dev/null)
  mountpoint -q "$TNODE_RUN_DIR/$name.mnt" 2>/dev/null && mntino=$(stat -L -c %i "$TNODE_RUN_DIR/$name.mnt" 2>/dev/null)
  # Never the host's own namespaces (a half-made node must not match every process).
  [ "$netino" = "$(stat -L -c %i /proc/self/ns/net)" ] && netino=""
  [ "$mntino" = "$(stat -L -c %i /proc/self/ns/mnt)" ] && mntino=""
  [ -n "$netino" ] && pat+=(-lname "net:\\[$netino\\]")
  [ -n "$mntino" ] && { [ ${#pat[@]} -gt 0 ] && pat+=(-o); pat+=(-lname "mnt:\\[$mntino\\]"); }
  [ ${#pat[@]} -gt 0 ] || return 0
  find /proc/[0-9]*/ns/net /proc/[0-9]*/ns/mnt -maxdepth 0 \( "${pat[@]}" \) 2>/dev/null | cut -d/ -f3 | sort -u
}

tnode_kill_all() { # SIGKILL everything the node runs, until nothing is left
  local name=$1 i pids
  for i in $(seq 1 30); do
    pids=$( { tnode_cgroup_pids "$name"; tnode_ns_pids "$name"; } | grep -vx "$$" | sort -u)
    [ -z "$pids" ] && return 0
    kill -KILL $pids 2>/dev/null || true
    sleep 0.3
  done
  log "warning: processes of node $name still alive: $pids"
}

tnode_remove_cgroups() {
  local d
  for d in $(tnode_cgroup_dirs "$1"); do
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ -d "$d" ] && log "warning: could not remove cgroup $d"
  done
  return 0
}

# --- daemons ------------------------------------------------------------------

tnode_pid() { # tnode_pid NAME DAEMON: the pid if that daemon of the node is alive
  local name=$1 d=$2 pid f
  f="$(tnode_dir "$name")/pids/$d.pid"
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  grep -q "$d" <<<"$(tr '\0' ' ' <"/proc/$pid/cmdline")" || return 1
  # A recycled pid must not be mistaken for ours: it is in the node's network namespace.
  [ "$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null)" = "$(stat -L -c %i "$(tnode_netns "$name")" 2>/dev/null)" ] || return 1
  echo "$pid"
}

# tnode_spawn NAME DAEMON CMD...: start CMD in the node's namespaces and cgroup, in the background.
tnode_spawn() {
  local name=$1 d=$2; shift 2
  local dir; dir=$(tnode_dir "$name")
  mkdir -p "$dir/pids" "$dir/logs"
  printf '\n==== %s start %s\n' "$d" "$(date -u +%FT%TZ)" >>"$dir/logs/$d.log"
  ( tnode_join_cgroup "$name" "$BASHPID"
    exec setsid nsenter --net="$(tnode_netns "$name")" --mount="$TNODE_RUN_DIR/$name.mnt" \
      --uts="$TNODE_RUN_DIR/$name.uts" -- "$@" ) >>"$dir/logs/$d.log" 2>&1 </dev/null &
  local pid=$! i netino
  echo "$pid" >"$dir/pids/$d.pid"
  # Until nsenter has run, the pid is still a copy of this script in the host's namespaces.
  netino=$(stat -L -c %i "$(tnode_netns "$name")")
  for i in $(seq 1 50); do
    [ "$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null)" = "$netino" ] && return 0
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
}

tnode_stop() { # tnode_stop NAME DAEMON: TERM, then KILL after 10 s
  local pid i
  if pid=$(tnode_pid "$1" "$2"); then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(tnode_dir "$1")/pids/$2.pid"
}

# --- network ------------------------------------------------------------------

# SAFETY: the management cluster's KOK-LOCAL-SAFETY chain drops every forwarded
# packet except cni0 -> cni0 (and anything in or out of an external interface,
# first). Nodes add exactly three exceptions, before its final DROP: node <->
# node on kokn0, node -> management pods/Services, management pods -> nodes.
TNODE_SAFETY_RULES=("-i $TNODE_BRIDGE -o $TNODE_BRIDGE -j RETURN" "-i $TNODE_BRIDGE -o $BRIDGE -j RETURN"
                    "-i $BRIDGE -o $TNODE_BRIDGE -j RETURN")

tnode_require_safety() {
  iptables -t mangle -C FORWARD -j "$SAFETY_CHAIN" 2>/dev/null ||
    die "the management cluster's forwarding safety chain $SAFETY_CHAIN is missing (is 'hack/local-cluster up' running?); refusing to create a node"
  local ifc
  for ifc in $(external_interfaces); do
    [ "$ifc" = "$TNODE_BRIDGE" ] && continue
    iptables -t mangle -C "$SAFETY_CHAIN" -o "$ifc" -j DROP 2>/dev/null &&
      iptables -t mangle -C "$SAFETY_CHAIN" -i "$ifc" -j DROP 2>/dev/null ||
      die "$SAFETY_CHAIN does not drop forwarding on the external interface $ifc; refusing to create a node"
  done
  local last
  last=$(iptables -t mangle -S "$SAFETY_CHAIN" | tail -n 1)
  [ "$last" = "-A $SAFETY_CHAIN -j DROP" ] || die "$SAFETY_CHAIN does not end in a DROP ('$last'); refusing to create a node"
}

tnode_allow_forwarding() {
  local r n
  for r in "${TNODE_SAFETY_RULES[@]}"; do
    # shellcheck disable=SC2086
    iptables -t mangle -C "$SAFETY_CHAIN" $r 2>/dev/null && continue
    n=$(iptables -t mangle -S "$SAFETY_CHAIN" | grep -c '^-A')
    # shellcheck disable=SC2086
    iptables -t mangle -I "$SAFETY_CHAIN" "$n" $r   # just before the final DROP
  done
}

tnode_disallow_forwarding() {
  local r
  iptables -t mangle -S "$SAFETY_CHAIN" >/dev/null 2>&1 || return 0
  for r in "${TNODE_SAFETY_RULES[@]}"; do
    # shellcheck disable=SC2086
    while iptables -t mangle -D "$SAFETY_CHAIN" $r 2>/dev/null; do :; done
  done
}

tnode_setup_bridge() {
  if ! ip link show "$TNODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$TNODE_BRIDGE" type bridge
  fi
  # (no `ip | grep -q`: with pipefail, grep closing the pipe early can fail the test)
  grep -q " $TNODE_GATEWAY/" <<<"$(ip addr show dev "$TNODE_BRIDGE")" || ip addr add "$TNODE_GATEWAY/16" dev "$TNODE_BRIDGE"
  ip link set "$TNODE_BRIDGE" up
}

tnode_alloc_ip() { # the lowest free 10.203.0.N
  local n used
  used=$(cat "$TNODE_DIR"/*/ip 2>/dev/null || true)
  for n in $(seq 2 254); do
    grep -qxF "10.203.0.$n" <<<"$used" || { echo "10.203.0.$n"; return 0; }
  done
  die "no free node IP left in 10.203.0.2-254"
}

# The node's network namespace: eth0 (veth to kokn0) with its IP, a default
# route via the host (which forwards only to kokn0 and cni0, see above), and
# masquerading of pod traffic to the management ranges.
tnode_setup_netns() {
  local name=$1 ip=$2 veth r
  veth="$TNODE_VETH_PREFIX${ip##*.}"
  ip link del "$veth" 2>/dev/null || true
  # Made inside the node, its host end then moved to this script's (the host's) namespace.
  tnode_net "$name" ip link add eth0 type veth peer name "$veth"
  tnode_net "$name" ip link set "$veth" netns "$$"
  ip link set "$veth" master "$TNODE_BRIDGE" up
  tnode_net "$name" ip link set lo up
  tnode_net "$name" ip addr add "$ip/16" dev eth0
  tnode_net "$name" ip link set eth0 up
  tnode_net "$name" ip route add default via "$TNODE_GATEWAY" dev eth0
  tnode_net "$name" sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward
    [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
    [ -e /proc/sys/net/bridge/bridge-nf-call-ip6tables ] && echo 1 >/proc/sys/net/bridge/bridge-nf-call-ip6tables
    true'
  tnode_net "$name" iptables -t nat -N KOK-NODE-MASQ
  for r in $TNODE_MGMT_RANGES; do
    tnode_net "$name" iptables -t nat -A KOK-NODE-MASQ -d "$r" -j MASQUERADE
  done
  tnode_net "$name" iptables -t nat -A POSTROUTING -o eth0 ! -s "$ip" -j KOK-NODE-MASQ
  # Out of eth0 only to the lab's ranges and (added by tnode_link_peers) the
  # peers' pod CIDRs; anything else (a resolver from a copied resolv.conf, a
  # cluster DNS IP without a Service, the internet) is refused at once, inside
  # the node, before the host's safety chain would have to drop it.
  tnode_net "$name" iptables -N KOK-NODE-EGRESS
  tnode_net "$name" iptables -A KOK-NODE-EGRESS -d "$TNODE_ALLOWED_EGRESS" -j RETURN
  tnode_net "$name" iptables -A KOK-NODE-EGRESS -j REJECT --reject-with icmp-net-unreachable
  tnode_net "$name" iptables -I OUTPUT 1 -o eth0 -j KOK-NODE-EGRESS
  tnode_net "$name" iptables -I FORWARD 1 -o eth0 -j KOK-NODE-EGRESS
}

tnode_allow_egress() { # NAME CIDR: let the node send to CIDR (a peer's pod CIDR)
  tnode_net "$1" iptables -C KOK-NODE-EGRESS -d "$2" -j RETURN 2>/dev/null ||
    tnode_net "$1" iptables -I KOK-NODE-EGRESS 1 -d "$2" -j RETURN
}

tnode_disallow_egress() { # NAME CIDR
  while tnode_net "$1" iptables -D KOK-NODE-EGRESS -d "$2" -j RETURN 2>/dev/null; do :; done
}

# --- mount and UTS namespaces ---------------------------------------------------

tnode_run_dir_ready() {
  mkdir -p "$TNODE_RUN_DIR"
  if ! mountpoint -q "$TNODE_RUN_DIR"; then
    mount --bind "$TNODE_RUN_DIR" "$TNODE_RUN_DIR"
  fi
  mount --make-private "$TNODE_RUN_DIR"
}

# Mount points of the private dirs must exist on the host; those this script
# creates are recorded and removed with the last node.
tnode_host_mountpoints() {
  local d
  for d in "${TNODE_PRIVATE_DIRS[@]}"; do
    [ -d "$d" ] && continue
    mkdir -p "$d"
    echo "$d" >>"$TNODE_DIR/.created-mountpoints"
  done
}

# The node's network, mount and UTS namespaces, kept by their files in
# $TNODE_RUN_DIR (re-entered with nsenter); the mount namespace set up inside.
tnode_make_namespaces() {
  local name=$1 dir d srcs=() 
  dir=$(tnode_dir "$name")
  for d in "${TNODE_PRIVATE_DIRS[@]}"; do
    mkdir -p "$(tnode_src "$name" "$d")"
    srcs+=("$(tnode_src "$name" "$d"):$d")
  done
  # As the kubelet package leaves it: an empty static pod directory.
  mkdir -p "$(tnode_src "$name" /etc/kubernetes)/manifests"
  # Its own /etc/hosts (the node name resolves to its IP) and a resolver on its
  # own loopback: no process of the node ever asks the host's DNS server.
  printf '127.0.0.1 localhost\n%s %s\n' "$(cat "$dir/ip")" "$name" >"$dir/hosts"
  echo "nameserver 127.0.0.1" >"$dir/resolv.conf"
  srcs+=("$dir/hosts:/etc/hosts" "$dir/resolv.conf:/etc/resolv.conf")
  touch "$TNODE_RUN_DIR/$name.mnt" "$TNODE_RUN_DIR/$name.uts" "$(tnode_netns "$name")"
  # In the new namespace: drop the copies of other clusters' and nodes' mounts
  # (pod volumes, container rootfs, netns files) so they are not pinned here,
  # then bind the node's own directories over the usual paths.
  unshare --mount="$TNODE_RUN_DIR/$name.mnt" --uts="$TNODE_RUN_DIR/$name.uts" --net="$(tnode_netns "$name")" \
    --propagation private \
    bash -c '
      set -e
      name=$1 state=$2 run=$3; shift 3
      hostname "$name"
      awk "{print \$2}" /proc/self/mounts | grep -E "^($state/.|/run/kok-local(/|\$)|/run/netns(/|\$)|$run(/|\$)|/run/containerd/.)" \
        | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
      for pair in "$@"; do mount --bind "${pair%%:*}" "${pair#*:}"; done
    ' tnode-setup "$name" "$KOK_STATE_DIR" "$TNODE_RUN_DIR" "${srcs[@]}"
}

# --- configuration ------------------------------------------------------------

tnode_write_containerd_config() {
  cat >"$(tnode_dir "$1")/containerd.toml" <<TOML
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "$TNODE_CRI_SOCKET"
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
    conf_dir = "/etc/cni/net.d"
TOML
}

# Written once the tenant's kube-controller-manager has given the node its pod CIDR.
tnode_write_cni_config() { # NAME POD_CIDR
  local name=$1 cidr=$2 gw
  gw=$(python3 -c 'import ipaddress,sys; print(next(ipaddress.ip_network(sys.argv[1]).hosts()))' "$cidr")
  cat >"$(tnode_src "$name" /etc/cni/net.d)/10-kok-node.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "kok-node",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$cidr", "gateway": "$gw"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

# The lab's flags on top of what kubeadm wrote (systemd's KUBELET_EXTRA_ARGS).
tnode_kubelet_extra_args() { # NAME IP
  local name=$1 ip=$2
  echo "--node-ip=$ip --cgroup-driver=cgroupfs --cgroup-root=/$(tnode_cgroup "$name") --fail-swap-on=false"
  echo "--address=0.0.0.0"
  # Local images cannot be pulled again: never collect them, never evict for disk.
  echo "--image-gc-high-threshold=100 --image-gc-low-threshold=99"
  echo "--eviction-hard=memory.available<100Mi,nodefs.available<1%,nodefs.inodesFree<1%,imagefs.available<1%"
}

# The kubelet as systemd's kubeadm drop-in (10-kubeadm.conf) starts it.
tnode_start_kubelet() { # NAME IP
  local name=$1 ip=$2
  # shellcheck disable=SC2016
  tnode_spawn "$name" kubelet bash -c '
    KUBELET_KUBEADM_ARGS=""
    [ -f /var/lib/kubelet/kubeadm-flags.env ] && . /var/lib/kubelet/kubeadm-flags.env
    # shellcheck disable=SC2086
    exec "$0" --bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf \
      --config=/var/lib/kubelet/config.yaml $KUBELET_KUBEADM_ARGS "$@"' \
    "$KUBE_BIN_DIR/kubelet" $(tnode_kubelet_extra_args "$name" "$ip")
}

tnode_kubectl() { # tnode_kubectl NAME ARGS...: kubectl with the node's own credentials
  local name=$1; shift
  tnode_enter "$name" kubectl --kubeconfig /etc/kubernetes/kubelet.conf --request-timeout=5s "$@"
}

# --- routes between the nodes of one tenant -------------------------------------

# Nodes of one tenant share the join endpoint. Each reaches the other's pod CIDR
# via its node IP, inside the node namespaces only: two tenants may use the same
# pod CIDR, and the host never routes tenant pod ranges.
tnode_peers() { # NAME: the other nodes with the same endpoint
  local name=$1 ep other
  ep=$(cat "$(tnode_dir "$name")/endpoint" 2>/dev/null) || return 0
  for other in $(tnode_names); do
    [ "$other" = "$name" ] && continue
    [ "$(cat "$(tnode_dir "$other")/endpoint" 2>/dev/null)" = "$ep" ] && echo "$other"
  done
  return 0
}

tnode_link_peers() {
  local name=$1 peer mine theirs
  mine=$(cat "$(tnode_dir "$name")/podcidr" 2>/dev/null) || return 0
  for peer in $(tnode_peers "$name"); do
    theirs=$(cat "$(tnode_dir "$peer")/podcidr" 2>/dev/null) || continue
    tnode_net "$name" ip route replace "$theirs" via "$(cat "$(tnode_dir "$peer")/ip")" dev eth0
    tnode_allow_egress "$name" "$theirs"
    tnode_net "$peer" ip route replace "$mine" via "$(cat "$(tnode_dir "$name")/ip")" dev eth0
    tnode_allow_egress "$peer" "$mine"
  done
}

tnode_unlink_peers() {
  local name=$1 peer mine
  mine=$(cat "$(tnode_dir "$name")/podcidr" 2>/dev/null) || return 0
  for peer in $(tnode_peers "$name"); do
    tnode_net "$peer" ip route del "$mine" via "$(cat "$(tnode_dir "$name")/ip")" 2>/dev/null || true
    tnode_disallow_egress "$peer" "$mine" 2>/dev/null || true
  done
}

# --- lifecycle ----------------------------------------------------------------

tnode_remove() { # best effort, idempotent
  local name=$1 dir ip
  dir=$(tnode_dir "$name")
  local errexit=""; [[ $- == *e* ]] && errexit=1
  set +e
  tnode_unlink_peers "$name"
  # The node is going away as a whole: no graceful stops, SIGKILL for all.
  tnode_kill_all "$name"
  rm -rf "$dir/pids"
  # The mount namespace (and with it every mount the node made: container
  # rootfs, pod volumes, pod netns files) ends with its last process and file.
  local f
  for f in "$TNODE_RUN_DIR/$name.mnt" "$TNODE_RUN_DIR/$name.uts" "$(tnode_netns "$name")"; do
    mountpoint -q "$f" 2>/dev/null && { umount "$f" 2>/dev/null || umount -l "$f"; }
    rm -f "$f"
  done
  # (nodes made before the namespace files moved out of /run/netns)
  [ -e "/run/netns/$TNODE_PREFIX$name" ] && ip netns del "$TNODE_PREFIX$name" 2>/dev/null
  ip=$(cat "$dir/ip" 2>/dev/null)
  [ -n "$ip" ] && ip link del "$TNODE_VETH_PREFIX${ip##*.}" 2>/dev/null
  tnode_remove_cgroups "$name"
  # Nothing of the node is mounted on the host; make sure before deleting.
  local m
  for m in $(awk '{print $2}' /proc/self/mounts | grep -E "^$dir/" | sort -r); do umount -l "$m"; done
  rm -rf "$dir"
  [ -n "$(tnode_names)" ] || tnode_remove_shared
  [ -z "$errexit" ] || set -e
}

# With the last node gone: the bridge, the forwarding exceptions, the run dir,
# the mount points this script created on the host.
tnode_remove_shared() {
  local errexit=""; [[ $- == *e* ]] && errexit=1
  set +e
  ip link del "$TNODE_BRIDGE" 2>/dev/null
  tnode_disallow_forwarding
  if mountpoint -q "$TNODE_RUN_DIR" 2>/dev/null; then umount "$TNODE_RUN_DIR" 2>/dev/null || umount -l "$TNODE_RUN_DIR"; fi
  rm -rf "$TNODE_RUN_DIR"
  local d
  if [ -f "$TNODE_DIR/.created-mountpoints" ]; then
    for d in $(sort -ru "$TNODE_DIR/.created-mountpoints"); do
      rmdir "$d" 2>/dev/null
    done
    rm -f "$TNODE_DIR/.created-mountpoints"
  fi
  rmdir "$TNODE_DIR" 2>/dev/null
  [ -z "$errexit" ] || set -e
  return 0
}

tnode_remove_all() {
  local name
  # Also the remains of a node whose state dir is gone: netns, cgroups, namespace files.
  for name in $( { tnode_names
                   ip netns list 2>/dev/null | awk '{print $1}' | sed -n "s/^$TNODE_PREFIX//p"
                   ls /sys/fs/cgroup/pids/ 2>/dev/null | sed -n "s/^$TNODE_PREFIX//p"
                   ls "$TNODE_RUN_DIR" 2>/dev/null | sed -n 's/\.\(mnt\|uts\|net\)$//p'; } | sort -u); do
    log "removing node $name"
    tnode_remove "$name"
  done
  tnode_remove_shared
}
