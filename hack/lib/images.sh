# Container images built without a registry: a docker-save tarball written by hand
# (manifest.json + config + one layer) and imported into containerd.

PAUSE_TAG="3.2"
BUSYBOX_TAG="1.35"

image_tarball() { # image_tarball NAME TAG -> path in the cache
  echo "$IMAGE_CACHE_DIR/${1//\//_}_$2.tar"
}

# pack_image NAME TAG ROOTFS ENTRYPOINT_JSON: write a single-layer docker-save tarball.
pack_image() {
  local name=$1 tag=$2 rootfs=$3 entrypoint=$4
  local out tmp layer_sha config config_sha
  out=$(image_tarball "$name" "$tag")
  tmp=$(mktemp -d "$IMAGE_CACHE_DIR/.pack.XXXXXX")
  mkdir -p "$tmp/layer" "$rootfs/tmp" "$rootfs/etc"
  chmod 1777 "$rootfs/tmp"
  [ -f "$rootfs/etc/passwd" ] || printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
  [ -f "$rootfs/etc/group" ] || printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
  tar --numeric-owner --owner=0 --group=0 --sort=name --mtime='2020-01-01' \
    -C "$rootfs" -cf "$tmp/layer/layer.tar" .
  layer_sha=$(sha256sum "$tmp/layer/layer.tar" | cut -d' ' -f1)
  config=$(printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":%s,"Env":["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"kok hack/local-cluster"}]}' \
    "$entrypoint" "$layer_sha")
  config_sha=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
  printf '%s' "$config" >"$tmp/$config_sha.json"
  printf '[{"Config":"%s.json","RepoTags":["%s/%s:%s"],"Layers":["layer/layer.tar"]}]' \
    "$config_sha" "$KOK_IMAGE_PREFIX" "$name" "$tag" >"$tmp/manifest.json"
  tar -C "$tmp" -cf "$out.partial" manifest.json "$config_sha.json" layer
  mv "$out.partial" "$out"
  rm -rf "$tmp"
}

# copy_with_libs ROOTFS BINARY...: copy dynamically linked binaries and the libraries they load.
copy_with_libs() {
  local rootfs=$1; shift
  local bin lib
  for bin in "$@"; do
    install -D -m 0755 "$bin" "$rootfs/usr/local/bin/$(basename "$bin")"
    for lib in $(ldd "$bin" 2>/dev/null | grep -oE '/[^ ]+' | sort -u); do
      [ -e "$lib" ] && install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
    done
  done
}

add_busybox() { # a static shell and coreutils, so probes and `kubectl exec` work
  local rootfs=$1 applet
  install -D -m 0755 /bin/busybox "$rootfs/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
  done
}

build_pause_image() {
  local root; root=$(mktemp -d)
  mkdir -p "$root/src"
  cat >"$root/src/pause.c" <<'C'
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
static void done(int sig) { (void)sig; exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGINT, done); signal(SIGTERM, done); signal(SIGCHLD, reap);
  for (;;) pause();
}
C
  sed -i '1i #include <sys/wait.h>' "$root/src/pause.c"
  mkdir -p "$root/rootfs"
  run_logged "$KOK_CACHE_DIR/logs/images.log" gcc -static -O2 -o "$root/rootfs/pause" "$root/src/pause.c"
  pack_image pause "$PAUSE_TAG" "$root/rootfs" '["/pause"]'
  rm -rf "$root"
}

build_busybox_image() {
  local root; root=$(mktemp -d)
  add_busybox "$root"
  pack_image busybox "$BUSYBOX_TAG" "$root" '["/bin/sh"]'
  rm -rf "$root"
}

build_etcd_image() { # build_etcd_image TAG ETCD_BIN ETCDCTL_BIN [ETCDUTL_BIN]
  local tag=$1; shift
  local root; root=$(mktemp -d)
  copy_with_libs "$root" "$@"
  add_busybox "$root"
  mkdir -p "$root/var/lib/etcd"
  pack_image etcd "$tag" "$root" '["/usr/local/bin/etcd"]'
  rm -rf "$root"
}

build_kube_image() { # static Go binaries: the image is the binary and a busybox
  local c=$1 root; root=$(mktemp -d)
  install -D -m 0755 "$KUBE_BIN_DIR/$c" "$root/usr/local/bin/$c"
  add_busybox "$root"
  pack_image "$c" "$KUBE_VERSION" "$root" "[\"/usr/local/bin/$c\"]"
  rm -rf "$root"
}

# kube-proxy (iptables mode) runs iptables, ip6tables, their -save/-restore and
# conntrack. They come from the host, with the backend the host's iptables uses
# (nf_tables on bookworm), so the rules kube-proxy writes on a tenant node and
# those the CNI plugins write there (with the host's binaries) live in one backend.
build_kube_proxy_image() {
  local root backend multi t lib; root=$(mktemp -d)
  install -D -m 0755 "$KUBE_BIN_DIR/kube-proxy" "$root/usr/local/bin/kube-proxy"
  add_busybox "$root"
  backend=nft
  iptables --version 2>/dev/null | grep -q legacy && backend=legacy
  multi=/usr/sbin/xtables-$backend-multi
  [ -x "$multi" ] || die "no $multi to put in the kube-proxy image"
  copy_with_libs "$root" "$multi"
  for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf "$(basename "$multi")" "$root/usr/local/bin/$t"
  done
  # iptables loads its match and target extensions at run time.
  mkdir -p "$root/usr/lib/x86_64-linux-gnu"
  cp -a /usr/lib/x86_64-linux-gnu/xtables "$root/usr/lib/x86_64-linux-gnu/"
  for lib in $(ldd /usr/lib/x86_64-linux-gnu/xtables/*.so 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u); do
    [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
  if command -v conntrack >/dev/null; then copy_with_libs "$root" "$(command -v conntrack)"; fi
  cp /etc/protocols /etc/services "$root/etc/" 2>/dev/null || true
  pack_image kube-proxy "$KUBE_VERSION" "$root" '["/usr/local/bin/kube-proxy"]'
  rm -rf "$root"
}

# etcd 3.5 comes from Debian trixie's etcd-server .deb, fetched with an apt
# configuration of its own so the host's sources are never changed.
fetch_etcd35() {
  local dir="$KOK_CACHE_DIR/etcd35" apt="$KOK_CACHE_DIR/apt-trixie"
  if [ -x "$dir/usr/bin/etcd" ]; then echo "$dir"; return 0; fi
  mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$dir"
  cat >"$apt/sources.list" <<'SRC'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
SRC
  local opts=(-o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o Dir::State::Lists="$apt/lists" -o Dir::Cache::Archives="$apt/archives"
              -o Dir::Cache::pkgcache="" -o Dir::Cache::srcpkgcache="" -o APT::Sandbox::User=root)
  run_logged "$KOK_CACHE_DIR/logs/images.log" apt-get "${opts[@]}" update -q
  ( cd "$apt" && run_logged "$KOK_CACHE_DIR/logs/images.log" apt-get "${opts[@]}" download etcd-server etcd-client )
  local deb
  for deb in "$apt"/etcd-server_*.deb "$apt"/etcd-client_*.deb; do dpkg -x "$deb" "$dir"; done
  [ -x "$dir/usr/bin/etcd" ] || die "trixie etcd-server .deb had no /usr/bin/etcd; log: $KOK_CACHE_DIR/logs/images.log"
  echo "$dir"
}

etcd35_version() { # the version string of the cached trixie etcd, e.g. 3.5.16
  "$1/usr/bin/etcd" --version 2>/dev/null | awk '/etcd Version/ {print $3}'
}

# All image tags the local cluster provides, "name:tag" per line.
local_images() {
  local e35="${ETCD35_TAG:-}"
  # On an 'up' of a running cluster build_images did not run: take the 3.5 tag
  # from the cache, so an image the kubelet's image GC removed comes back too.
  if [ -z "$e35" ]; then
    local t
    for t in "$IMAGE_CACHE_DIR"/etcd_3.5.*.tar; do
      [ -f "$t" ] && { t=${t##*/etcd_}; e35=${t%.tar}; }
    done
  fi
  echo "pause:$PAUSE_TAG"
  echo "busybox:$BUSYBOX_TAG"
  echo "etcd:$ETCD34_VERSION"
  [ -n "$e35" ] && echo "etcd:$e35"
  echo "kube-apiserver:$KUBE_VERSION"
  echo "kube-controller-manager:$KUBE_VERSION"
  echo "kube-scheduler:$KUBE_VERSION"
  echo "kube-proxy:$KUBE_VERSION"
  echo "toolbox:$TOOLBOX_TAG"
}

# busybox plus kubectl, for pods that talk to their cluster's API with their
# service-account token (busybox's static wget crashes in glibc's NSS and
# cannot present a token over TLS).
TOOLBOX_TAG="1"
build_toolbox_image() {
  local root; root=$(mktemp -d)
  add_busybox "$root"
  copy_with_libs "$root" "$(readlink -f "$(command -v kubectl)")"
  pack_image toolbox "$TOOLBOX_TAG" "$root" '["/bin/sh"]'
  rm -rf "$root"
}

build_images() {
  mkdir -p "$IMAGE_CACHE_DIR"
  [ -f "$(image_tarball pause $PAUSE_TAG)" ] || build_pause_image
  [ -f "$(image_tarball busybox $BUSYBOX_TAG)" ] || build_busybox_image
  [ -f "$(image_tarball etcd $ETCD34_VERSION)" ] || build_etcd_image "$ETCD34_VERSION" /usr/bin/etcd /usr/bin/etcdctl
  local e35dir
  e35dir=$(fetch_etcd35)
  ETCD35_TAG=$(etcd35_version "$e35dir")
  [ -n "$ETCD35_TAG" ] || die "could not read the version of $e35dir/usr/bin/etcd (does it run on this glibc?)"
  if [ ! -f "$(image_tarball etcd "$ETCD35_TAG")" ]; then
    local bins=("$e35dir/usr/bin/etcd" "$e35dir/usr/bin/etcdctl")
    [ -x "$e35dir/usr/bin/etcdutl" ] && bins+=("$e35dir/usr/bin/etcdutl")
    build_etcd_image "$ETCD35_TAG" "${bins[@]}"
  fi
  local c
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    [ -f "$(image_tarball "$c" "$KUBE_VERSION")" ] || build_kube_image "$c"
  done
  [ -f "$(image_tarball kube-proxy "$KUBE_VERSION")" ] || build_kube_proxy_image
  [ -f "$(image_tarball toolbox "$TOOLBOX_TAG")" ] || build_toolbox_image
}

import_images() {
  local img have
  have=$(ctr_ images ls -q 2>/dev/null || true)
  while read -r img; do
    grep -qxF "$KOK_IMAGE_PREFIX/$img" <<<"$have" && continue
    run_logged "$LOG_DIR/images.log" ctr_ images import "$(image_tarball "${img%%:*}" "${img#*:}")"
  done < <(local_images)
  # The same Kubernetes build under the next patch tag: only v1.20.2 can be
  # built here, and the upgrade tests need a second version to roll to.
  local c
  for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    grep -qxF "$KOK_IMAGE_PREFIX/$c:$KUBE_PATCH_ALIAS" <<<"$have" && continue
    run_logged "$LOG_DIR/images.log" ctr_ images tag "$KOK_IMAGE_PREFIX/$c:$KUBE_VERSION" "$KOK_IMAGE_PREFIX/$c:$KUBE_PATCH_ALIAS"
  done
}
