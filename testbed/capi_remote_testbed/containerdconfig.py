"""containerd's CRI plugin configuration for the test bed's nodes (the machine's node and the
hosts prepared as nodes): nothing is pulled (the sandbox image is one made here), no SELinux,
overlayfs snapshots, runc v2, and ``restrict_oom_score_adj`` because this VM gives root no
``CAP_SYS_RESOURCE``: without it runc fails every sandbox (``failed to update
/proc/self/oom_score_adj: Permission denied``).
"""

from __future__ import annotations


def cri_plugin(sandbox_image: str, cni_bin_dir: str, cni_conf_dir: str) -> str:
    """The ``[plugins."io.containerd.grpc.v1.cri"]`` section of a version 2 config."""
    return f"""\
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin_dir}"
    conf_dir = "{cni_conf_dir}"
"""
