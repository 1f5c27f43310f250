// Command nodesupervisor supervises containerd and the kubelet on a test-bed host that becomes a
// real Kubernetes node. The hosts have no systemd; kubeadm (re)starts the kubelet through
// `systemctl`, so the same binary installed as /usr/bin/systemctl is a client that asks this
// supervisor to start, stop, restart, enable or report a unit.
//
// Invariants: the supervisor is the only parent of the services (and, as a child subreaper, of
// every orphan below them: containerd's shims), so it reaps everything it started; a unit that is
// wanted is restarted when it exits (systemd's Restart=always); stopping a unit waits until its
// process is gone; every request and reply is one bounded line.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	socketPath   = "/run/capi-node/supervisor.sock"
	logDir       = "/var/log/capi-node"
	enabledDir   = "/etc/capi-node/enabled" // one empty file per enabled unit, like *.wants links
	restartDelay = 2 * time.Second          // kubeadm's kubelet unit says 10 s; tests are short
	stopTimeout  = 15 * time.Second
	maxLine      = 4096
	maxEnvFile   = 64 << 10
)

// The kubelet's command line, as kubeadm's systemd drop-in (10-kubeadm.conf) builds it.
var kubeletBase = []string{
	"/usr/bin/kubelet",
	"--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf",
	"--kubeconfig=/etc/kubernetes/kubelet.conf",
	"--config=/var/lib/kubelet/config.yaml",
}

type unit struct {
	name   string
	argv   func() []string
	wanted bool // started and not stopped: restart when it exits
	pid    int
	exited chan struct{} // closed when pid is reaped
}

type supervisor struct {
	mu    sync.Mutex
	units map[string]*unit
}

func main() {
	if filepath.Base(os.Args[0]) == "systemctl" {
		os.Exit(systemctl(os.Args[1:]))
	}
	if err := serve(); err != nil {
		fmt.Fprintln(os.Stderr, "nodesupervisor:", err)
		os.Exit(1)
	}
}

func serve() error {
	const prSetChildSubreaper = 36
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		return fmt.Errorf("becoming a child subreaper: %v", errno)
	}
	for _, dir := range []string{filepath.Dir(socketPath), logDir, enabledDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	s := &supervisor{units: map[string]*unit{
		"containerd": {name: "containerd", argv: func() []string { return []string{"/usr/bin/containerd"} }},
		"kubelet":    {name: "kubelet", argv: kubeletArgv},
	}}
	signals := make(chan os.Signal, 16)
	signal.Notify(signals, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT)
	_ = os.Remove(socketPath)
	listener, err := net.Listen("unix", socketPath)
	if err != nil {
		return err
	}
	for _, name := range s.names() {
		if enabled(name) {
			s.start(name)
		}
	}
	go func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			go s.handle(conn)
		}
	}()
	for sig := range signals {
		if sig == syscall.SIGCHLD {
			s.reap()
			continue
		}
		listener.Close()
		for _, name := range s.names() {
			s.stop(name)
		}
		return nil
	}
	return nil
}

func (s *supervisor) names() []string {
	names := make([]string, 0, len(s.units))
	for name := range s.units {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

func enabled(name string) bool {
	_, err := os.Stat(filepath.Join(enabledDir, name))
	return err == nil
}

// start runs the unit unless it runs already; the caller does not hold s.mu.
func (s *supervisor) start(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.units[name]
	u.wanted = true
	if u.pid == 0 {
		s.spawn(u)
	}
}

// spawn starts u's process; s.mu is held. A failed exec is logged and retried like an exit.
func (s *supervisor) spawn(u *unit) {
	argv := u.argv()
	logFile, err := os.OpenFile(filepath.Join(logDir, u.name+".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nodesupervisor: %s log: %v\n", u.name, err)
		return
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "nodesupervisor: starting %s\n", strings.Join(argv, " "))
	attr := &os.ProcAttr{
		Env:   []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Files: []*os.File{nil, logFile, logFile},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	}
	proc, err := os.StartProcess(argv[0], argv, attr)
	if err != nil {
		fmt.Fprintf(logFile, "nodesupervisor: %s: %v\n", u.name, err)
		go s.restartLater(u.name)
		return
	}
	u.pid = proc.Pid
	u.exited = make(chan struct{})
}

func (s *supervisor) restartLater(name string) {
	time.Sleep(restartDelay)
	s.mu.Lock()
	defer s.mu.Unlock()
	if u := s.units[name]; u.wanted && u.pid == 0 {
		s.spawn(u)
	}
}

// reap collects every exited child: a unit's process (restarted if still wanted) or an orphan.
func (s *supervisor) reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		s.mu.Lock()
		for _, u := range s.units {
			if u.pid != pid {
				continue
			}
			u.pid = 0
			close(u.exited)
			if u.wanted {
				go s.restartLater(u.name)
			}
		}
		s.mu.Unlock()
	}
}

// stop ends the unit (SIGTERM, then SIGKILL after stopTimeout) and waits until it is reaped.
func (s *supervisor) stop(name string) {
	s.mu.Lock()
	u := s.units[name]
	u.wanted = false
	pid, exited := u.pid, u.exited
	s.mu.Unlock()
	if pid == 0 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(stopTimeout):
		_ = syscall.Kill(pid, syscall.SIGKILL)
		<-exited
	}
}

func (s *supervisor) active(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.units[name].pid != 0
}

// handle answers one request line "<verb> <unit>" with one reply line.
func (s *supervisor) handle(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(stopTimeout + 5*time.Second))
	line, err := bufio.NewReaderSize(conn, maxLine).ReadSlice('\n')
	if err != nil {
		return
	}
	fields := strings.Fields(string(line))
	if len(fields) != 2 {
		fmt.Fprintln(conn, "error bad request")
		return
	}
	verb, name := fields[0], fields[1]
	if _, ok := s.units[name]; !ok {
		fmt.Fprintln(conn, "unknown")
		return
	}
	switch verb {
	case "start":
		s.start(name)
	case "stop":
		s.stop(name)
	case "restart":
		s.stop(name)
		s.start(name)
	case "enable":
		if err := os.WriteFile(filepath.Join(enabledDir, name), nil, 0o644); err != nil {
			fmt.Fprintln(conn, "error", err)
			return
		}
	case "disable":
		_ = os.Remove(filepath.Join(enabledDir, name))
	case "is-enabled":
		fmt.Fprintln(conn, map[bool]string{true: "enabled", false: "disabled"}[enabled(name)])
		return
	case "is-active":
	default:
		fmt.Fprintln(conn, "error unknown verb")
		return
	}
	fmt.Fprintln(conn, map[bool]string{true: "active", false: "inactive"}[s.active(name)])
}

// kubeletArgv adds KUBELET_KUBEADM_ARGS (written by kubeadm) and KUBELET_EXTRA_ARGS (the
// operator's), read at each start as systemd reads the drop-in's EnvironmentFiles.
func kubeletArgv() []string {
	argv := append([]string{}, kubeletBase...)
	argv = append(argv, strings.Fields(envValue("/var/lib/kubelet/kubeadm-flags.env", "KUBELET_KUBEADM_ARGS"))...)
	return append(argv, strings.Fields(envValue("/etc/default/kubelet", "KUBELET_EXTRA_ARGS"))...)
}

func envValue(path, key string) string {
	file, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer file.Close()
	data := make([]byte, maxEnvFile)
	n, _ := file.Read(data)
	for _, line := range strings.Split(string(data[:n]), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok && k == key {
			return strings.Trim(v, `"'`)
		}
	}
	return ""
}

// systemctl is the client: the verbs kubeadm and an operator use, for the supervised units.
func systemctl(args []string) int {
	var words []string
	now := false
	for _, arg := range args {
		switch {
		case arg == "--now":
			now = true
		case strings.HasPrefix(arg, "-"):
		default:
			words = append(words, arg)
		}
	}
	if len(words) == 0 {
		fmt.Fprintln(os.Stderr, "systemctl (capi-remote node supervisor): no verb")
		return 1
	}
	verb, units := words[0], words[1:]
	if verb == "daemon-reload" {
		return 0
	}
	code := 0
	for _, name := range units {
		name = strings.TrimSuffix(name, ".service")
		verbs := []string{verb}
		if now && (verb == "enable" || verb == "disable") {
			verbs = append(verbs, map[string]string{"enable": "start", "disable": "stop"}[verb])
		}
		for _, v := range verbs {
			wire := v
			if v == "status" {
				wire = "is-active"
			}
			reply, err := request(wire, name)
			if err != nil {
				fmt.Fprintln(os.Stderr, "systemctl: the node supervisor does not answer:", err)
				return 1
			}
			if c := report(v, name, reply); c > code {
				code = c
			}
		}
	}
	return code
}

func report(verb, name, reply string) int {
	switch {
	case reply == "unknown":
		fmt.Fprintf(os.Stderr, "Unit %s.service could not be found.\n", name)
		return 4
	case strings.HasPrefix(reply, "error"):
		fmt.Fprintln(os.Stderr, "systemctl:", reply)
		return 1
	case verb == "is-active" || verb == "is-enabled":
		fmt.Println(reply)
		if reply == "active" || reply == "enabled" {
			return 0
		}
		return map[string]int{"is-active": 3, "is-enabled": 1}[verb]
	case verb == "status":
		fmt.Printf("* %s.service (capi-remote node supervisor)\n     Loaded: loaded\n     Active: %s\n", name, reply)
		if reply == "active" {
			return 0
		}
		return 3
	}
	return 0
}

func request(verb, name string) (string, error) {
	conn, err := net.DialTimeout("unix", socketPath, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(stopTimeout + 10*time.Second))
	if _, err := fmt.Fprintf(conn, "%s %s\n", verb, name); err != nil {
		return "", err
	}
	line, err := bufio.NewReaderSize(conn, maxLine).ReadSlice('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(line)), nil
}
