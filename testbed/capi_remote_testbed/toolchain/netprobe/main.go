// Command netprobe is what a test runs in a Pod to check the cluster's network from inside it
// (the images made here have no shell, no curl, no nslookup): for each argument, an http:// URL
// is fetched and its body printed, anything else is a name resolved through the Pod's
// /etc/resolv.conf (Go's own resolver: search domains and ndots as libc applies them) and its
// addresses printed. Each is retried for up to 60 s (Service rules and DNS records appear a little
// after their objects); the first that still fails ends the probe with exit status 1.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const budget = 1 << 16 // bytes of a body printed

func probe(target string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if !strings.HasPrefix(target, "http://") {
		addresses, err := net.DefaultResolver.LookupHost(ctx, target)
		return strings.Join(addresses, " "), err
	}
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return "", err
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		return "", err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(io.LimitReader(response.Body, budget))
	if err == nil && response.StatusCode != http.StatusOK {
		err = fmt.Errorf("HTTP status %d", response.StatusCode)
	}
	return string(body), err
}

func main() {
	for _, target := range os.Args[1:] {
		deadline := time.Now().Add(60 * time.Second)
		for {
			out, err := probe(target)
			if err == nil {
				fmt.Printf("%s: %s\n", target, out)
				break
			}
			fmt.Fprintf(os.Stderr, "%s: %v\n", target, err)
			if time.Now().After(deadline) {
				os.Exit(1)
			}
			time.Sleep(time.Second)
		}
	}
}
