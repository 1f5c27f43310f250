// Command coredns is CoreDNS at the pinned version with the plugins kubeadm's Corefile names
// (errors, health, ready, kubernetes, prometheus, forward, cache, loop, reload, loadbalance):
// CoreDNS's compile-time plugin selection, so the build needs none of the cloud providers'
// modules the full plugin set pulls in.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func init() {
	// The order of CoreDNS's plugin.cfg, restricted to the plugins above.
	dnsserver.Directives = []string{
		"reload", "ready", "health", "prometheus", "errors", "log", "loadbalance", "cache",
		"kubernetes", "loop", "forward",
	}
}

func main() { coremain.Run() }
