# PKI of the local management cluster, made with openssl: one CA, a serving
# certificate for the apiserver, client certificates for every component.

openssl_quiet() { run_logged "$LOG_DIR/pki.log" openssl "$@"; }

# issue_cert NAME SUBJECT EXT_USAGE [SANS]: key + certificate signed by the local CA.
issue_cert() {
  local name=$1 subj=$2 usage=$3 sans=${4:-}
  [ -f "$PKI_DIR/$name.crt" ] && return 0
  local ext="$PKI_DIR/$name.ext"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [ -n "$sans" ] && echo "subjectAltName=$sans"
  } >"$ext"
  openssl_quiet genrsa -out "$PKI_DIR/$name.key" 2048
  openssl_quiet req -new -key "$PKI_DIR/$name.key" -subj "$subj" -out "$PKI_DIR/$name.csr"
  openssl_quiet x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/ca.crt" -CAkey "$PKI_DIR/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$ext" -out "$PKI_DIR/$name.crt"
  rm -f "$PKI_DIR/$name.csr" "$ext"
}

# write_kubeconfig NAME USER_CERT_NAME SERVER
write_kubeconfig() {
  local name=$1 cert=$2 server=$3
  cat >"$KOK_STATE_DIR/$name.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: kok-local
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$PKI_DIR/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 <"$PKI_DIR/$cert.crt")
    client-key-data: $(base64 -w0 <"$PKI_DIR/$cert.key")
contexts:
- name: kok-local
  context: {cluster: kok-local, user: $name}
current-context: kok-local
KC
  chmod 0600 "$KOK_STATE_DIR/$name.kubeconfig"
}

make_pki() {
  mkdir -p "$PKI_DIR"; chmod 0700 "$PKI_DIR"
  if [ ! -f "$PKI_DIR/ca.crt" ]; then
    openssl_quiet genrsa -out "$PKI_DIR/ca.key" 2048
    openssl_quiet req -x509 -new -key "$PKI_DIR/ca.key" -subj "/CN=kok-local-ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "$PKI_DIR/ca.crt"
  fi
  issue_cert apiserver "/CN=kube-apiserver" serverAuth \
    "IP:$NODE_IP,IP:$KUBERNETES_SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  issue_cert admin "/O=system:masters/CN=kok-local-admin" clientAuth
  issue_cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  issue_cert scheduler "/CN=system:kube-scheduler" clientAuth
  issue_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  issue_cert kube-proxy "/CN=system:kube-proxy" clientAuth
  if [ ! -f "$PKI_DIR/sa.key" ]; then
    openssl_quiet genrsa -out "$PKI_DIR/sa.key" 2048
    openssl_quiet rsa -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub"
  fi
  local server="https://$NODE_IP:6443"
  write_kubeconfig admin admin "$server"
  write_kubeconfig controller-manager controller-manager "$server"
  write_kubeconfig scheduler scheduler "$server"
  write_kubeconfig kubelet kubelet "$server"
  write_kubeconfig kube-proxy kube-proxy "$server"
}
