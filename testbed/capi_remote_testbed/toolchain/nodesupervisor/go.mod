// Wrapper module: the supervisor of containerd and the kubelet on a test-bed host that becomes a
// real node (the hosts have no systemd), and the systemctl kubeadm calls; our own code.
module capi-remote.dev/toolchain/nodesupervisor

go 1.25.0
