# Build Kubernetes server binaries from Debian's source package, cached by version.

KUBE_COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubeadm)

kube_binaries_cached() {
  local c
  for c in "${KUBE_COMPONENTS[@]}"; do [ -x "$KUBE_BIN_DIR/$c" ] || return 1; done
}

build_kubernetes() {
  kube_binaries_cached && return 0
  local work="$KOK_CACHE_DIR/build-$KUBE_VERSION" blog="$KOK_CACHE_DIR/logs/build-kubernetes.log"
  require_free_disk "$KOK_CACHE_DIR" 6000
  log "building Kubernetes $KUBE_VERSION from Debian's source package (cold: ~4 min on 2 cores; log: $blog)"
  mkdir -p "$KOK_CACHE_DIR/logs"; : >"$blog"
  if [ ! -f /etc/apt/sources.list.d/kok-deb-src.sources ]; then
    cat >/etc/apt/sources.list.d/kok-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt_updated=""
  fi
  apt_install golang-go golang-github-modern-go-reflect2-dev make rsync dpkg-dev
  [ -n "$apt_updated" ] || { run_logged "$blog" apt-get update -q; apt_updated=1; }
  rm -rf "$work"; mkdir -p "$work/dl" "$work/gopath/src/k8s.io" "$work/home"
  ( cd "$work/dl" && run_logged "$blog" apt-get source --download-only "$KUBE_DEB_SOURCE" )
  local orig
  orig=$(ls "$work"/dl/kubernetes_*.orig.tar.* 2>/dev/null | head -n 1)
  [ -n "$orig" ] || die "no kubernetes orig tarball downloaded; log: $blog"
  mkdir -p "$work/src"
  run_logged "$blog" tar -xf "$orig" -C "$work/src" --strip-components=1
  # The vendored reflect2 v1.0.1 crashes under Go >= 1.18 (SIGSEGV in UnsafeIterate):
  # replace it with Debian's 1.0.2 sources before building anything.
  local r2=vendor/github.com/modern-go/reflect2
  rm -rf "${work:?}/src/$r2"; mkdir -p "$work/src/$r2"
  dpkg -L golang-github-modern-go-reflect2-dev | grep -E '/reflect2/[^/]+\.(go|s)$' | grep -v '_test.go$' \
    | xargs -I{} cp {} "$work/src/$r2/"
  ln -sfn "$work/src" "$work/gopath/src/k8s.io/kubernetes"
  local what=() c
  for c in "${KUBE_COMPONENTS[@]}"; do what+=("cmd/$c"); done
  # `make WHAT=...` first runs every code generator (about 2 of the 6 minutes),
  # yet the source already holds their output (zz_generated.{deepcopy,defaults,
  # conversion,prerelease-lifecycle}.go are checked in). Only the apiserver's
  # OpenAPI definitions are not: generate those, then build.
  ( cd "$work/gopath/src/k8s.io/kubernetes" && \
    export GOPATH="$work/gopath" GO111MODULE=off CGO_ENABLED=0 HOME="$work/home" \
      GOCACHE="$work/gocache" KUBE_GIT_VERSION="$KUBE_VERSION" KUBE_GIT_TREE_STATE=clean && \
    run_logged "$blog" make gen_openapi && \
    run_logged "$blog" hack/make-rules/build.sh "${what[@]}" )
  mkdir -p "$KUBE_BIN_DIR"
  for c in "${KUBE_COMPONENTS[@]}"; do
    local out
    out=$(find "$work/src/_output" -type f -name "$c" -perm -u+x | head -n 1)
    [ -n "$out" ] || die "build produced no $c; log: $blog"
    install -m 0755 "$out" "$KUBE_BIN_DIR/$c"
  done
  # The source tree and Go cache are 3+ GB; only the binaries are kept.
  rm -rf "$work"
  log "Kubernetes $KUBE_VERSION binaries cached in $KUBE_BIN_DIR"
}
