# Shared settings and helpers for hack/local-cluster. Sourced, not executed.

KUBE_VERSION="v1.20.2"
# A second tag of the same build (see import_images): the "patch" upgrade tests roll to it.
KUBE_PATCH_ALIAS="v1.20.3"
# Debian bookworm's source package carries the full v1.20.2 tree with vendor/.
KUBE_DEB_SOURCE="kubernetes"
ETCD34_VERSION="3.4.23"

KOK_CACHE_DIR="${KOK_CACHE_DIR:-/var/cache/kok}"
KOK_STATE_DIR="${KOK_STATE_DIR:-/var/lib/kok-local}"
KOK_IMAGE_PREFIX="${KOK_IMAGE_PREFIX:-kok.local}"

KUBE_BIN_DIR="$KOK_CACHE_DIR/kubernetes-$KUBE_VERSION/bin"
IMAGE_CACHE_DIR="$KOK_CACHE_DIR/images"
LOG_DIR="$KOK_STATE_DIR/logs"
PID_DIR="$KOK_STATE_DIR/pids"
PKI_DIR="$KOK_STATE_DIR/pki"

# Addresses owned by the local cluster. None of them is routed off the machine:
# the node IP lives on lo, pods on the cni0 bridge, services are iptables DNAT.
NODE_IP="${KOK_NODE_IP:-10.200.0.1}"
POD_CIDR="10.201.0.0/16"
POD_GATEWAY="10.201.0.1"
SERVICE_CIDR="10.202.0.0/16"
KUBERNETES_SERVICE_IP="10.202.0.1"
NODE_NAME="kok-node"
BRIDGE="cni0"

log() { printf '[local-cluster] %s\n' "$*" >&2; }
die() { printf '[local-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

# run_logged LOGFILE CMD...: run quietly, on failure say what failed and where the log is.
run_logged() {
  local logfile=$1; shift
  mkdir -p "$(dirname "$logfile")"
  if ! "$@" >>"$logfile" 2>&1; then
    tail -n 20 "$logfile" >&2 || true
    die "'$*' failed; full log: $logfile"
  fi
}

require_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages, starts containerd and kubelet, and edits iptables)"
}

# require_free_disk DIR MIB
require_free_disk() {
  local dir=$1 need_mib=$2 avail
  mkdir -p "$dir"
  avail=$(df -Pm "$dir" | awk 'NR==2 {print $4}')
  [ "${avail:-0}" -ge "$need_mib" ] || die "not enough disk space in $dir: ${avail} MiB free, need ${need_mib} MiB"
}

apt_updated=""
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing from Debian: ${missing[*]}"
  if [ -z "$apt_updated" ]; then
    run_logged "$KOK_CACHE_DIR/logs/apt.log" apt-get update -q
    apt_updated=1
  fi
  run_logged "$KOK_CACHE_DIR/logs/apt.log" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

wait_for() { # wait_for SECONDS DESCRIPTION CMD...
  local timeout=$1 what=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 1
  done
}
