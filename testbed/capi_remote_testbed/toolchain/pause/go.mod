// Wrapper module: the sandbox (pause) process of the test bed's node, our own few lines.
module capi-remote.dev/toolchain/pause

go 1.25.0
