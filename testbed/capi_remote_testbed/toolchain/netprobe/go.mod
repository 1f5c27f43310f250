// Wrapper module: the network probe tests run in Pods of real nodes, our own few lines.
module capi-remote.dev/toolchain/netprobe

go 1.25.0
