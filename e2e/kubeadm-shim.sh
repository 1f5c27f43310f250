#!/bin/sh
# A stand-in for kubeadm on the e2e test bed's hosts (they run no kubelet or containers).
#
# It does, against the workload API server, the part of `kubeadm init|join|reset` that Cluster API
# observes, from the files the kubeadm bootstrap provider (CABPK) wrote:
#   init  --config /run/kubeadm/kubeadm.yaml: signs an admin client certificate with the cluster CA
#         CABPK wrote to /etc/kubernetes/pki (-> /etc/kubernetes/admin.conf), uploads the
#         ClusterConfiguration (kube-system/kubeadm-config: what KCP reads as "initialized"),
#         publishes kube-public/cluster-info for token discovery, lets bootstrap tokens register
#         Nodes, then registers this Node (control-plane label and taint, Ready) and the mirror
#         Pods of the control-plane components (Running, Ready).
#   join  --config /run/kubeadm/kubeadm-join-config.yaml: token discovery (cluster-info, CA pinned
#         by caCertHashes), then registers this Node with the bootstrap token.
#   reset: removes what init/join wrote on the host.
# Needs sh, curl, openssl, sha256sum, base64 and ip (all in the test hosts' root filesystem).
set -eu

PKI=/etc/kubernetes/pki
WORK=/run/kubeadm-shim

log() { echo "kubeadm (e2e shim): $*" >&2; }
die() { log "$*"; exit 1; }

# The value of "key:" in the top-level block "block:" of a kubeadm YAML document ("" if absent).
block_value() { # file block key
    awk -v block="$2:" -v key="$3:" '
        $0 == block { inside = 1; next }
        /^[^ ]/ { inside = 0 }
        inside && $1 == key { sub(/^ *[^ ]+: */, ""); gsub(/["\047]/, ""); print; exit }
    ' "$1"
}

# The first value of "key:" at any depth ("" if absent).
any_value() { # file key
    awk -v key="$2:" '$1 == key { sub(/^ *[^ ]+: */, ""); gsub(/["\047]/, ""); print; exit }' "$1"
}

# The document of a multi-document YAML file whose kind is $2.
document() { # file kind
    awk -v kind="kind: $2" '
        /^---/ { if (found) exit; doc = ""; next }
        { doc = doc $0 "\n" }
        $0 == kind { found = 1 }
        END { if (found) printf "%s", doc }
    ' "$1"
}

# stdin as a JSON string literal.
json_string() {
    awk 'BEGIN { printf "\"" }
         { gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); gsub(/\t/, "\\t"); printf "%s\\n", $0 }
         END { printf "\"" }'
}

now() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# api METHOD PATH [BODY] [CONTENT-TYPE]: one request to the workload API server with the current
# credentials ($AUTH_ARGS); prints the HTTP status, keeps the body in $WORK/response.
api() {
    if [ $# -ge 3 ]; then
        printf '%s' "$3" >"$WORK/request"
        set -- "$1" "$2" --data-binary "@$WORK/request" -H "Content-Type: ${4:-application/json}"
    fi
    method=$1 path=$2
    shift 2
    # shellcheck disable=SC2086 # AUTH_ARGS holds several words on purpose
    curl -sS --max-time 20 --cacert "$CA_FILE" $AUTH_ARGS -X "$method" -o "$WORK/response" \
        -w '%{http_code}' "$@" "https://$ENDPOINT$path"
}

# create PATH BODY: POST, treating "already exists" as done (a re-run is harmless).
create() {
    code=$(api POST "$1" "$2")
    case $code in
        200 | 201 | 409) ;;
        *) die "POST $1 failed ($code): $(cat "$WORK/response")" ;;
    esac
}

# patch_status PATH BODY: a merge patch of the status subresource.
patch_status() {
    code=$(api PATCH "$1/status" "$2" application/merge-patch+json)
    [ "$code" = 200 ] || die "PATCH $1/status failed ($code): $(cat "$WORK/response")"
}

wait_for_api() {
    for _ in $(seq 60); do
        if [ "$(api GET /readyz)" = 200 ]; then return 0; fi
        sleep 1
    done
    die "the API server at $ENDPOINT is not ready"
}

condition() { # type status reason: a Node condition as a kubelet posts it
    printf '{"type":"%s","status":"%s","reason":"%s","message":"posted by the e2e kubeadm shim","lastHeartbeatTime":"%s","lastTransitionTime":"%s"}' \
        "$1" "$2" "$3" "$ts" "$ts"
}

register_node() { # name labels-json taints-json
    create /api/v1/nodes "{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{\"name\":\"$1\",\"labels\":$2},\"spec\":{\"taints\":$3}}"
    address=$(ip -4 -o addr show scope global | awk '{ split($4, a, "/"); print a[1]; exit }')
    ts=$(now)
    patch_status "/api/v1/nodes/$1" "{\"status\":{\"conditions\":[$(condition Ready True KubeletReady),$(condition MemoryPressure False KubeletHasSufficientMemory),$(condition DiskPressure False KubeletHasNoDiskPressure),$(condition PIDPressure False KubeletHasSufficientPID)],\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"$address\"},{\"type\":\"Hostname\",\"address\":\"$1\"}],\"nodeInfo\":{\"kubeletVersion\":\"$VERSION\",\"operatingSystem\":\"linux\",\"architecture\":\"amd64\",\"machineID\":\"\",\"systemUUID\":\"\",\"bootID\":\"\",\"kernelVersion\":\"\",\"osImage\":\"\",\"containerRuntimeVersion\":\"\",\"kubeProxyVersion\":\"\"}}}"
    log "registered Node $1"
}

mirror_pod() { # component node
    name="$1-$2"
    create /api/v1/namespaces/kube-system/pods "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"$name\",\"namespace\":\"kube-system\",\"labels\":{\"component\":\"$1\",\"tier\":\"control-plane\"},\"annotations\":{\"kubernetes.io/config.mirror\":\"e2e-shim\",\"kubernetes.io/config.source\":\"file\"}},\"spec\":{\"nodeName\":\"$2\",\"containers\":[{\"name\":\"$1\",\"image\":\"registry.k8s.io/$1:$VERSION\"}],\"tolerations\":[{\"operator\":\"Exists\"}]}}"
    ts=$(now)
    patch_status "/api/v1/namespaces/kube-system/pods/$name" "{\"status\":{\"phase\":\"Running\",\"conditions\":[{\"type\":\"PodScheduled\",\"status\":\"True\",\"lastTransitionTime\":\"$ts\"},{\"type\":\"Initialized\",\"status\":\"True\",\"lastTransitionTime\":\"$ts\"},{\"type\":\"ContainersReady\",\"status\":\"True\",\"lastTransitionTime\":\"$ts\"},{\"type\":\"Ready\",\"status\":\"True\",\"lastTransitionTime\":\"$ts\"}]}}"
}

kubeconfig() { # server ca-file user-lines...
    server=$1 ca=$2
    shift 2
    printf 'apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n    server: %s\n    certificate-authority-data: %s\n' \
        "$server" "$(base64 -w0 "$ca")"
    printf 'contexts:\n- name: default\n  context: {cluster: kubernetes, user: default}\ncurrent-context: default\n'
    if [ $# -gt 0 ]; then printf 'users:\n- name: default\n  user:\n'; printf '    %s\n' "$@"; fi
}

init() {
    config=$1
    [ -f "$PKI/ca.crt" ] && [ -f "$PKI/ca.key" ] || die "no cluster CA in $PKI (CABPK writes it)"
    ENDPOINT=$(any_value "$config" controlPlaneEndpoint)
    [ -n "$ENDPOINT" ] || die "no controlPlaneEndpoint in $config"
    VERSION=$(any_value "$config" kubernetesVersion)
    node=$(block_value "$config" nodeRegistration name)
    node=${node:-$(hostname)}
    CA_FILE=$PKI/ca.crt

    # The admin identity kubeadm writes to admin.conf: a client certificate from the cluster CA.
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/admin.key" 2>/dev/null
    openssl req -new -key "$WORK/admin.key" -subj "/O=system:masters/CN=kubernetes-admin" \
        -out "$WORK/admin.csr"
    printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n' >"$WORK/admin.ext"
    openssl x509 -req -in "$WORK/admin.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
        -set_serial "$(date +%s)" -days 30 -extfile "$WORK/admin.ext" -out "$WORK/admin.crt" 2>/dev/null
    kubeconfig "https://$ENDPOINT" "$PKI/ca.crt" \
        "client-certificate-data: $(base64 -w0 "$WORK/admin.crt")" \
        "client-key-data: $(base64 -w0 "$WORK/admin.key")" >/etc/kubernetes/admin.conf
    chmod 600 /etc/kubernetes/admin.conf
    AUTH_ARGS="--cert $WORK/admin.crt --key $WORK/admin.key"
    wait_for_api

    # upload-config: the ClusterConfiguration, as kubeadm stores it.
    cluster_configuration=$(document "$config" ClusterConfiguration | json_string)
    create /api/v1/namespaces/kube-system/configmaps "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"kubeadm-config\",\"namespace\":\"kube-system\"},\"data\":{\"ClusterConfiguration\":$cluster_configuration}}"

    # bootstrap-token: cluster-info for discovery, readable anonymously, and the right of
    # bootstrap tokens to register Nodes (kubelet TLS bootstrap and the node authorizer, which
    # this shim does not emulate, stand behind that on a real cluster).
    cluster_info=$(kubeconfig "https://$ENDPOINT" "$PKI/ca.crt" | json_string)
    create /api/v1/namespaces/kube-public/configmaps "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"cluster-info\",\"namespace\":\"kube-public\"},\"data\":{\"kubeconfig\":$cluster_info}}"
    create /apis/rbac.authorization.k8s.io/v1/namespaces/kube-public/roles '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{"name":"kubeadm:bootstrap-signer-clusterinfo","namespace":"kube-public"},"rules":[{"apiGroups":[""],"resources":["configmaps"],"resourceNames":["cluster-info"],"verbs":["get"]}]}'
    create /apis/rbac.authorization.k8s.io/v1/namespaces/kube-public/rolebindings '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"kubeadm:bootstrap-signer-clusterinfo","namespace":"kube-public"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"kubeadm:bootstrap-signer-clusterinfo"},"subjects":[{"kind":"User","name":"system:anonymous"}]}'
    create /apis/rbac.authorization.k8s.io/v1/clusterroles '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"kubeadm-shim:register-node"},"rules":[{"apiGroups":[""],"resources":["nodes","nodes/status"],"verbs":["get","create","patch"]}]}'
    create /apis/rbac.authorization.k8s.io/v1/clusterrolebindings '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"kubeadm-shim:register-node"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"kubeadm-shim:register-node"},"subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"Group","name":"system:bootstrappers:kubeadm:default-node-token"}]}'

    register_node "$node" \
        '{"node-role.kubernetes.io/control-plane":"","node.kubernetes.io/exclude-from-external-load-balancers":""}' \
        '[{"key":"node-role.kubernetes.io/control-plane","effect":"NoSchedule"}]'
    for component in kube-apiserver kube-controller-manager kube-scheduler; do
        mirror_pod "$component" "$node"
    done
    log "control plane initialized at $ENDPOINT"
}

join() {
    config=$1
    ENDPOINT=$(block_value "$config" discovery apiServerEndpoint)
    [ -n "$ENDPOINT" ] || ENDPOINT=$(any_value "$config" apiServerEndpoint)
    token=$(any_value "$config" token)
    pins=$(awk '$1 == "-" && $2 ~ /^sha256:/ { gsub(/["\047]/, "", $2); print $2 }' "$config")
    node=$(block_value "$config" nodeRegistration name)
    node=${node:-$(hostname)}
    [ -n "$ENDPOINT" ] && [ -n "$token" ] || die "no bootstrap token discovery in $config"

    # Token discovery: cluster-info (anonymous), its CA accepted only if it matches a pin.
    CA_FILE=$WORK/discovery-ca.crt
    for _ in $(seq 60); do
        if curl -sS -k --max-time 10 -o "$WORK/cluster-info" \
            "https://$ENDPOINT/api/v1/namespaces/kube-public/configmaps/cluster-info" &&
            grep -q certificate-authority-data "$WORK/cluster-info"; then
            break
        fi
        sleep 1
    done
    sed -n 's|.*certificate-authority-data: \([A-Za-z0-9+/=]*\).*|\1|p' "$WORK/cluster-info" |
        head -n1 | base64 -d >"$CA_FILE" || die "cluster-info has no CA"
    hash="sha256:$(openssl x509 -pubkey -noout -in "$CA_FILE" | openssl pkey -pubin -outform der |
        sha256sum | cut -d' ' -f1)"
    echo "$pins" | grep -qx "$hash" || die "the cluster CA ($hash) matches no caCertHashes pin"
    install -m 0644 "$CA_FILE" "$PKI/ca.crt"
    CA_FILE=$PKI/ca.crt

    kubeconfig "https://$ENDPOINT" "$CA_FILE" "token: $token" >/etc/kubernetes/bootstrap-kubelet.conf
    chmod 600 /etc/kubernetes/bootstrap-kubelet.conf
    AUTH_ARGS="--oauth2-bearer $token"
    VERSION=""
    register_node "$node" '{}' '[]'
    log "joined $ENDPOINT as $node"
}

reset() {
    rm -rf /etc/kubernetes/pki /etc/kubernetes/manifests /etc/kubernetes/admin.conf \
        /etc/kubernetes/bootstrap-kubelet.conf /var/lib/kubelet "$WORK"
    log "reset done"
}

command=${1:-}
[ $# -gt 0 ] && shift
config=""
while [ $# -gt 0 ]; do
    case $1 in
        --config) config=$2; shift 2 ;;
        --config=*) config=${1#--config=}; shift ;;
        *) shift ;; # -v, --force, ...: nothing to do here
    esac
done
mkdir -p "$WORK" /etc/kubernetes "$PKI"
chmod 700 "$WORK"
case $command in
    init) [ -n "$config" ] || die "init needs --config"; init "$config" ;;
    join) [ -n "$config" ] || die "join needs --config"; join "$config" ;;
    reset) reset ;;
    version) echo "kubeadm e2e shim" ;;
    *) die "unsupported: kubeadm $command" ;;
esac
