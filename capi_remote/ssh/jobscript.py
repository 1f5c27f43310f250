"""The SSH work of one bootstrap as scripts, for a Kubernetes Job to run with OpenSSH's ``ssh``
and ``scp`` instead of the controller's runner (``provisionJob`` mode).

Two scripts:

- :func:`host_script`: runs **on the host, as root**. It drives the very same helpers of
  :mod:`capi_remote.ssh.hostscript` that the runner sends one by one (``begin``, one helper per
  step, ``finish``), in the same order, with the same state directory, marker names, host lock and
  success sentinel. A bootstrap run by a Job and one run by the runner therefore agree on what is
  done: either may resume the other, and neither repeats a finished step. It also keeps the lock's
  heartbeat, enforces the step deadline (killing the step's process group, as the runner does) and,
  when its SSH session goes away (the Job's Pod was deleted), kills the running step and releases
  the lock, like a cancelled runner job. It holds the bootstrap data: it is uploaded with ``scp``
  (mode 0600), and removes itself as soon as the shell has opened it.
- :data:`CONTAINER_SCRIPT`: runs in the Job's container. It builds the ``known_hosts`` the host
  key policy asks for, copies the host script with ``scp``, runs it with ``ssh`` (through sudo
  unless the login is root) and passes its output through. ``sshCommand``/``scpCommand`` are
  read as shell words (quotes work, as in k0smotron's Job script); they run in the tenant's own
  image, so this gives the tenant nothing its image does not. Without a key in the Secret the
  commands log in by themselves (tsh, sft, an ssh with its own config); without a host-key
  policy either (mode ``command``) they get no option of ours at all, only ``-p``/``-P``. On
  success it writes a small report (result, hostname, addresses, host key fingerprint) to
  ``/dev/termination-log``; on failure the output's tail becomes the Pod's termination message
  (``FallbackToLogsOnError``). Everything secret comes from files of the mounted Secret, never
  from arguments or environment values.

Lines starting with ``capi-remote-job `` are the protocol: ``step``, ``skip``, ``running``,
``failed <Reason> <message>`` (the reasons of :mod:`capi_remote.ssh.errors`), ``result``,
``hostname``, ``address``, ``fingerprint``. :func:`parse_report` and :func:`classify_failure`
read them back.
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Iterable

import attrs

from capi_remote.bootstrap.plan import BootstrapPlan, MakeDirectory, RunCommand, Step, WriteFile
from capi_remote.ssh import errors, hostscript
from capi_remote.ssh.executor import step_name
from capi_remote.ssh.hostkeys import is_fingerprint
from capi_remote.ssh.settings import SSHSettings

PREFIX = "capi-remote-job"
#: The container script's ``$0`` (``sh -c SCRIPT NAME``): its shell's messages start with it.
SCRIPT_NAME = "capi-remote-provision"
#: Where the Job's container finds the Secret's files.
SECRET_MOUNT = "/var/run/capi-remote"
#: Keys of the Job's Secret.
KEY_PRIVATE_KEY = "ssh-privatekey"
KEY_KNOWN_HOSTS = "known_hosts"
KEY_FINGERPRINTS = "fingerprints"
KEY_SUDO_PASSWORD = "sudo-password"
KEY_HOST_SCRIPT = "bootstrap.sh"
#: Host key mode of a Job whose own ssh/scp commands log in and verify the host (provisionJob
#: without sshKeyRef or hostKeyPolicy): the container adds no option to them.
COMMAND_VERIFIES = "command"
#: At most this many addresses are reported (the termination message holds 4 KiB).
MAX_REPORTED_ADDRESSES = 16
_B64_DELIMITER = "CAPI_REMOTE_B64"

_HOST_PRELUDE = r"""
case $0 in */.capi-remote-bootstrap-*.sh) rm -f -- "$0" ;; esac
umask 077
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
nl='
'
say() { printf 'capi-remote-job %s\n' "$*"; }
t=$(mktemp -d 2>/dev/null) || {
  say failed RemoteError cannot create a temporary directory
  exit 1
}
locked=0 watcher=
finish_up() {
  if [ -n "$watcher" ]; then kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null; fi
  rm -rf "$t"
}
trap finish_up EXIT
trap 'exit 1' HUP INT TERM
release_lock() {
  if [ "$locked" = 1 ]; then locked=0; release < /dev/null > /dev/null 2>&1; fi
}
fail() {
  _reason=$1; shift
  release_lock
  say failed "$_reason" "$@"
  exit 1
}
call() {
  reply=$("$@" 2>"$t/err"; echo x)
  reply=${reply%x}
  status=${reply%%"${nl}capi-remote tail${nl}"*}
}
has() {
  case "${nl}${status}" in *"${nl}capi-remote $1${nl}"*|*"${nl}capi-remote $1 "*) return 0 ;; esac
  return 1
}
arg() {
  printf '%s\n' "$status" | while IFS= read -r _l; do
    case $_l in
      "capi-remote $1 "*) _a=${_l#"capi-remote $1 "}; printf '%s\n' "${_a%% *}"; break ;;
    esac
  done
}
show_tail() {
  case $reply in
    *"${nl}capi-remote tail${nl}"*) printf '%s\n' "${reply#*"${nl}capi-remote tail${nl}"}" ;;
  esac
}
uptime_s() { read -r _up _ < /proc/uptime; echo "${_up%.*}"; }
payload() { base64 -d > "$t/p" || fail RemoteError base64 is missing on the host; }
feed() { { printf 'capi-remote-payload\n'; cat "$t/p"; } | "$@"; }
watch() {
  trap '' PIPE
  trap 'exit 0' TERM
  _n=0
  while sleep 1; do
    _n=$((_n + 1))
    if [ -f "$t/step" ]; then
      read -r _b _deadline < "$t/step" || continue
      if [ "$(uptime_s)" -ge "$_deadline" ]; then
        : > "$t/timeout"
        kill_step "$_b" < /dev/null > /dev/null 2>&1
        rm -f "$t/step"
      fi
    fi
    [ $((_n % heartbeat_every)) -eq 0 ] || continue
    if ! say running 2>/dev/null; then
      # The SSH session is gone (the Job's Pod was deleted or its node died): stop like a
      # cancelled runner job, so the host is not left locked or busy.
      : > "$t/abort"
      if read -r _b _ < "$t/step" 2>/dev/null; then
        kill_step "$_b" < /dev/null > /dev/null 2>&1
      fi
      release < /dev/null > /dev/null 2>&1
      exit 0
    fi
    _hb=$(heartbeat < /dev/null 2>/dev/null)
    case $_hb in *"capi-remote lost"*) : > "$t/lost" ;; esac
  done
}
check_stop() {
  if [ -e "$t/abort" ]; then locked=0; exit 1; fi
  if [ -e "$t/lost" ]; then locked=0; fail HostLocked another controller took over the host lock; fi
}
"""

_HOST_BEGIN = r"""
call begin < /dev/null
if has bootstrapped; then
  say result already-bootstrapped
  facts
  exit 0
fi
if has foreign; then
  fail HostNotClean "the host was bootstrapped for another machine ($sentinel exists, and this" \
    "machine never ran here): clean the host (reset the node, remove $sentinel) or reboot it"
fi
if has unsafe-lock; then
  fail UnsafeLockDirectory "refusing the host lock's directory:" \
    "$(printf '%s\n' "$status" | sed -n 's/^capi-remote unsafe-lock //p')"
fi
if has locked; then
  fail HostLocked "the host is locked by $(arg locked)"
fi
if has changed; then
  fail BootstrapChanged "other bootstrap data already ran on this machine: delete" \
    "the state directory $state on the host to accept the new plan"
fi
has ready || fail RemoteError unexpected answer from the begin helper: "$(head -c 200 "$t/err")"
locked=1
done_steps=" $(printf '%s\n' "$status" | while read -r _w _k _n _rc; do
  [ "$_k" = rc ] && [ "$_rc" = 0 ] && printf '%s ' "$_n"; done)"
watch &
watcher=$!
"""

_HOST_FUNCTIONS = r"""
file_step() {
  _i=$1 _d=$2; shift 2
  call feed "$@"
  if has failed; then fail StepFailed "step $_i ($_d) failed: $(head -c 300 "$t/err")"; fi
  if has truncated; then fail ConnectionLost "step $_i ($_d): the content did not arrive intact"; fi
  [ "$(arg rc)" = 0 ] || fail RemoteError "unexpected answer for step $_i"
}
command_step() {
  _i=$1 _d=$2 _b=$3; shift 3
  printf '%s %s\n' "$_b" $(($(uptime_s) + step_timeout)) > "$t/step"
  call feed "$@"
  rm -f "$t/step"
  check_stop
  if [ -e "$t/timeout" ]; then
    show_tail
    fail StepTimeout "step $_i ($_d) did not finish within ${step_timeout}s and was stopped"
  fi
  if has interrupted; then
    fail StepInterrupted "step $_i ($_d) was started before but its process is gone" \
      "without an exit code; delete its .start and .pid files under $state/steps to run" \
      "it again"
  fi
  if has busy; then fail HostLocked "another job claimed step $_i"; fi
  if has truncated; then fail ConnectionLost "step $_i ($_d): the command did not arrive intact"; fi
  _rc=$(arg rc)
  [ -n "$_rc" ] || fail RemoteError "unexpected answer for step $_i"
  if [ "$_rc" != 0 ]; then
    show_tail
    fail StepFailed "step $_i ($_d) exited with $_rc"
  fi
}
facts() {
  say hostname "$(cat /proc/sys/kernel/hostname 2>/dev/null)"
  ip -o addr show 2>/dev/null | {
    _c=0
    while read -r _ _if _fam _addr _rest; do
      case $_rest in *"scope host"*) continue ;; esac
      case $_fam in inet|inet6) ;; *) continue ;; esac
      _scope=${_rest#*scope }
      _scope=${_scope%% *}
      say address "${_if%%@*}" "$_fam" "$_addr" "$_scope"
      _c=$((_c + 1))
      [ "$_c" -lt __MAX_ADDRESSES__ ] || break
    done
  }
}
"""

_HOST_FINISH = r"""
check_stop
kill "$watcher" 2>/dev/null
wait "$watcher" 2>/dev/null
watcher=
check_stop
call finish < /dev/null
locked=0
has complete ||
  fail BootstrapIncomplete "all steps ran but $sentinel is missing:" \
    "the bootstrap data must create it"
say result provisioned
facts
exit 0
"""


def _function(name: str, command: str) -> str:
    """A shell function running one helper command line; extra arguments are appended."""
    return f'{name}() {{ {command} "$@"; }}\n'


def _step_block(index: int, total: int, step: Step, base: str, settings: SSHSettings) -> str:
    describe = step.describe()
    number = index + 1
    name = base.rsplit("/", 1)[-1]
    lines = [
        f"# step {number} of {total}",
        "check_stop",
        f'case "$done_steps" in *" {name} "*) say skip {number} {total} ;; *)',
        f"say step {number} {total} {shlex.quote(describe)}",
    ]
    data: bytes
    if isinstance(step, RunCommand):
        data = (step.to_shell() + "\n").encode()
        command = hostscript.run_step(
            base=base,
            script_sha256=hostscript.sha256(data),
            rerun_interrupted=False,
            tail_bytes=settings.output_tail_bytes,
        )
        call = f"command_step {number} {shlex.quote(describe)} {shlex.quote(base)} {command}"
    else:
        assert isinstance(step, WriteFile | MakeDirectory)
        command, data = hostscript.file_step(step, base)
        call = f"file_step {number} {shlex.quote(describe)} {command}"
    encoded = base64.encodebytes(data).decode("ascii")
    lines += [f"payload <<'{_B64_DELIMITER}'", encoded.rstrip("\n"), _B64_DELIMITER, call, ";;"]
    lines.append("esac")
    return "\n".join(lines) + "\n"


def host_script(
    plan: BootstrapPlan,
    *,
    machine_uid: str,
    owner: str,
    settings: SSHSettings | None = None,
    step_timeout: float | None = None,
    adopt: bool = False,
) -> bytes:
    """The whole bootstrap of ``plan`` as one POSIX ``sh`` script to run as root on the host.

    ``owner`` identifies the Job in the host lock (no spaces); ``adopt`` as in the runner's
    ``Job``. Exit status 0 with a
    ``capi-remote-job result`` line means bootstrapped; otherwise the last ``capi-remote-job
    failed <Reason> ...`` line says why.
    """
    settings = settings or SSHSettings()
    if not owner or any(c.isspace() for c in owner):
        raise ValueError("owner must be a non-empty word")
    state = f"{settings.state_root}/{machine_uid}"
    timeout = int(step_timeout or settings.step_timeout)
    heartbeat_every = max(1, int(settings.lock_heartbeat_interval))
    header = [
        "#!/bin/sh",
        f"# capi-remote: bootstrap of machine {machine_uid} ({len(plan.steps)} steps, plan",
        f"# {plan.digest}), for {owner}. Generated: the runner's helpers and markers",
        "# (docs/ssh-runner.md), driven from one script.",
    ]
    variables = (
        f"owner={shlex.quote(owner)} state={shlex.quote(state)}"
        f" sentinel={shlex.quote(settings.sentinel_path)}"
        f" step_timeout={timeout} heartbeat_every={heartbeat_every}\n"
    )
    lock = settings.lock_path
    functions = "".join(
        [
            _function(
                "begin",
                hostscript.begin(
                    state_root=settings.state_root,
                    machine_uid=machine_uid,
                    plan_digest=plan.digest,
                    lock=lock,
                    owner=owner,
                    stale_after=settings.lock_stale_after,
                    sentinel=settings.sentinel_path,
                    adopt=adopt,
                ),
            ),
            _function("heartbeat", hostscript.heartbeat(lock=lock, owner=owner)),
            _function("release", hostscript.release(lock=lock, owner=owner)),
            _function(
                "finish", hostscript.finish(lock=lock, owner=owner, sentinel=settings.sentinel_path)
            ),
            # kill_step takes the step's base as its first argument: the helper is built with a
            # placeholder base that the function replaces.
            "kill_step() { _kb=$1; shift; "
            + hostscript.kill_step(base="__BASE__", grace=settings.kill_grace, tail_bytes=0)
            .replace(shlex.quote("__BASE__"), '"$_kb"')
            .replace("__BASE__", '"$_kb"')
            + "; }\n",
        ]
    )
    steps = "".join(
        _step_block(
            index, len(plan.steps), step, f"{state}/steps/{step_name(index, step)}", settings
        )
        for index, step in enumerate(plan.steps)
    )
    text = (
        "\n".join(header)
        + "\n"
        + variables
        + _HOST_PRELUDE
        + functions
        + _HOST_FUNCTIONS.replace("__MAX_ADDRESSES__", str(MAX_REPORTED_ADDRESSES))
        + _HOST_BEGIN
        + steps
        + _HOST_FINISH
    )
    return text.encode()


# -- the container side --------------------------------------------------------------------------

#: Runs in the Job's container (``/bin/sh -c``); all inputs are environment variables holding no
#: secrets (address, port, user, commands, modes) and the Secret's files under SECRET_MOUNT.
CONTAINER_SCRIPT = r"""set -u
d=${CAPI_REMOTE_SECRET_DIR:-__MOUNT__}
say() { printf 'capi-remote-job %s\n' "$*"; }
# With trust-on-first-use, the key ssh accepted: said on every exit after a connection, last on
# a failure (the log's tail is the termination message), so even a failed Job's key is pinned.
accepted() {
  [ "${strict:-}" = accept-new ] && [ -s "${t:-}/known_hosts" ] || return 0
  _fp=$(fingerprint_of "$t/known_hosts")
  [ -z "$_fp" ] || say fingerprint "$_fp"
}
fail() { say failed "$@"; accepted; exit 1; }
t=$(mktemp -d 2>/dev/null) || { t=/tmp/capi-remote.$$ && mkdir -m 700 "$t"; } ||
  fail RemoteError cannot create a temporary directory
trap 'rm -rf "$t"' EXIT
# Pod deletion: end ssh at once (the host script then stops the step and frees the host lock).
trap 'trap "" TERM INT; kill -TERM 0 2>/dev/null; exit 143' TERM INT
umask 077
host=$CAPI_REMOTE_ADDRESS port=$CAPI_REMOTE_PORT user=$CAPI_REMOTE_USER
remote_file=".capi-remote-bootstrap-$CAPI_REMOTE_MACHINE_UID.sh"
case $host in *:*) scp_host="[$host]" ;; *) scp_host=$host ;; esac
if [ -e "$d/ssh-privatekey" ]; then
  cat "$d/ssh-privatekey" > "$t/id" || fail InvalidCredentials cannot read the private key file
fi
cat "$d/bootstrap.sh" > "$t/bootstrap.sh" || fail RemoteError cannot read the bootstrap script
ssh_cmd() { eval "$CAPI_REMOTE_SSH \"\$@\""; }
scp_cmd() { eval "$CAPI_REMOTE_SCP \"\$@\""; }
: > "$t/known_hosts"
known=$t/known_hosts strict=yes
fingerprint_of() {
  set -- $(ssh-keygen -E sha256 -lf "$1" 2>/dev/null)
  printf '%s' "${2:-}"
}
case $CAPI_REMOTE_HOST_KEYS in
  known-hosts)
    cat "$d/known_hosts" > "$t/known_hosts" || fail HostKeyUnknown cannot read known_hosts ;;
  pinned)
    ssh-keyscan -p "$port" -T "$CAPI_REMOTE_CONNECT_TIMEOUT" "$host" > "$t/scan" 2> "$t/scan.err"
    [ -s "$t/scan" ] ||
      fail HostUnreachable "no host key from $host port $port (ssh-keyscan):" "$(cat "$t/scan.err")"
    seen=
    while IFS= read -r line; do
      case $line in ''|'#'*) continue ;; esac
      printf '%s\n' "$line" > "$t/one"
      fp=$(fingerprint_of "$t/one")
      [ -n "$fp" ] || continue
      seen="$seen $fp"
      while IFS= read -r pin; do
        if [ "$pin" = "$fp" ]; then printf '%s\n' "$line" >> "$t/known_hosts"; fi
      done < "$d/fingerprints"
    done < "$t/scan"
    [ -s "$t/known_hosts" ] ||
      fail HostKeyMismatch "the host presented${seen:- no readable key};" \
        "none matches the pinned fingerprint" ;;
  trust-on-first-use) strict=accept-new ;;
  insecure) strict=no known=/dev/null ;;
  command) strict= ;;
  *) fail RemoteError "unknown host key mode $CAPI_REMOTE_HOST_KEYS" ;;
esac
quiet=-q
if [ -z "$strict" ]; then
  set -- # the commands bring their own login and host verification: nothing of ours
  quiet=
else
  set -- -o BatchMode=yes -o "UserKnownHostsFile=$known" -o GlobalKnownHostsFile=/dev/null \
    -o "StrictHostKeyChecking=$strict" -o "ConnectTimeout=$CAPI_REMOTE_CONNECT_TIMEOUT" \
    -o ServerAliveInterval=15 -o ServerAliveCountMax=4 -o LogLevel=ERROR
  [ ! -e "$t/id" ] || set -- "$@" -o IdentitiesOnly=yes -o "IdentityFile=$t/id"
fi
say copying the bootstrap script to "$user@$host" port "$port"
scp_cmd $quiet -P "$port" "$@" "$t/bootstrap.sh" "$user@$scp_host:$remote_file" ||
  fail SSH "$CAPI_REMOTE_SCP could not copy the bootstrap script to $host (see the lines above)"
input=/dev/null
case $CAPI_REMOTE_PRIVILEGE in
  root) run="sh ./$remote_file" ;;
  sudo) run="sudo -n sh ./$remote_file" ;;
  sudo-password) run="sudo -S -p '' sh ./$remote_file"; input=$d/sudo-password ;;
  *) fail RemoteError "unknown privilege mode $CAPI_REMOTE_PRIVILEGE" ;;
esac
run="$run; rc=\$?; rm -f ./$remote_file; exit \$rc"
{
  ssh_cmd -p "$port" "$@" "$user@$host" "$run" < "$input" 2>&1
  echo "capi-remote-job exit $?"
} |
  while IFS= read -r line; do
    case $line in
      'capi-remote-job exit '*) printf '%s\n' "${line#capi-remote-job exit }" > "$t/rc" ;;
      'capi-remote-job result '*|'capi-remote-job hostname '*|'capi-remote-job address '*)
        printf '%s\n' "$line" >> "$t/report"; printf '%s\n' "$line" ;;
      *) printf '%s\n' "$line" ;;
    esac
  done &
wait $!
rc=255
[ -f "$t/rc" ] && read -r rc < "$t/rc"
if [ "$rc" = 0 ] && [ -s "$t/report" ]; then
  accepted >> "$t/report"
  cat "$t/report" > "${CAPI_REMOTE_TERMINATION_LOG:-/dev/termination-log}" 2>/dev/null || true
  say done
  exit 0
fi
[ "$rc" = 255 ] && fail SSH "$CAPI_REMOTE_SSH exited with 255 (see the lines above)"
accepted
exit 1
""".replace("__MOUNT__", SECRET_MOUNT)


# -- reading the output back -------------------------------------------------------------------


@attrs.frozen
class JobReport:
    """What a successful Job reported (its container's termination message)."""

    already_bootstrapped: bool
    hostname: str = ""
    #: (interface, family, address/prefix, scope)
    addresses: tuple[tuple[str, str, str, str], ...] = ()
    fingerprint: str | None = None


def parse_report(text: str) -> JobReport | None:
    """The report of a successful Job; None if ``text`` holds no ``result`` line."""
    result: str | None = None
    hostname = ""
    addresses: list[tuple[str, str, str, str]] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != PREFIX:
            continue
        kind, args = words[1], words[2:]
        if kind == "result" and args:
            result = args[0]
        elif kind == "hostname" and args:
            hostname = args[0]
        elif kind == "address" and len(args) == 4:
            addresses.append((args[0], args[1], args[2], args[3]))
    if result is None:
        return None
    return JobReport(
        already_bootstrapped=result == "already-bootstrapped",
        hostname=hostname,
        addresses=tuple(addresses),
        fingerprint=accepted_fingerprint(text),
    )


def accepted_fingerprint(text: str) -> str | None:
    """The key a trust-on-first-use Job accepted (its last ``fingerprint`` line), from a
    successful Job's report or a failed one's output tail; None if it says none, or nothing
    that looks like a fingerprint."""
    said = [
        words[2]
        for words in (line.split() for line in text.splitlines())
        if len(words) == 3 and words[:2] == [PREFIX, "fingerprint"]
    ]
    if not said or not is_fingerprint(said[-1]):
        return None
    return said[-1]


def _ssh_error_classes() -> Iterable[type[errors.SSHError]]:
    pending: list[type[errors.SSHError]] = [errors.SSHError]
    while pending:
        cls = pending.pop()
        yield cls
        pending.extend(cls.__subclasses__())


#: reason → retryable, for every typed SSH error (the host script reports these reasons).
RETRYABLE: dict[str, bool] = {
    cls.reason: bool(cls.retryable)
    for cls in _ssh_error_classes()
    if isinstance(getattr(cls, "reason", None), str)
}

# What OpenSSH prints, mapped to the runner's reasons (first match wins).
_OPENSSH_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), reason)
    for pattern, reason in (
        (r"REMOTE HOST IDENTIFICATION HAS CHANGED", "HostKeyMismatch"),
        (r"No \S+ host key is known for", "HostKeyUnknown"),
        (r"Host key verification failed", "HostKeyMismatch"),
        (r"Permission denied \(", "AuthenticationFailed"),
        (r"Load key .*: (invalid format|error in libcrypto)", "InvalidCredentials"),
        (r"sudo: (a password is required|a terminal is required)", "SudoFailed"),
        (r"sudo: \d+ incorrect password", "SudoFailed"),
        (r"is not in the sudoers file", "SudoFailed"),
        (
            r"Connection refused|Connection timed out|No route to host|Network is unreachable"
            r"|Could not resolve hostname|Name or service not known|kex_exchange_identification"
            r"|Connection closed by|Connection reset by|Operation timed out",
            "HostUnreachable",
        ),
        (
            r"(^|\s)(ssh|scp|ssh-keyscan|ssh-keygen)(: not found|: command not found)",
            "ImageLacksSSH",
        ),
        (r"exec: \S*(ssh|scp)\S*: not found|executable file not found", "ImageLacksSSH"),
        # The container script's own shell (its $0 is SCRIPT_NAME) missing a command:
        # sshCommand/scpCommand name any tool (tsh, sft).
        (rf"(^|\n){SCRIPT_NAME}: \d+: (eval: )?\S+: not found", "ImageLacksSSH"),
    )
)


@attrs.frozen
class JobFailure:
    """Why a Job failed, in the runner's terms when its output says so."""

    reason: str
    message: str
    retryable: bool


def classify_failure(output: str) -> JobFailure:
    """From a failed Job's output tail: the host script's or the container's ``failed`` line
    (a runner reason), else what OpenSSH printed, else ``Unknown`` (retryable: attempts are
    bounded anyway)."""
    failed = [
        line.split(None, 3) for line in output.splitlines() if line.startswith(f"{PREFIX} failed ")
    ]
    if failed:
        words = failed[-1]
        reason = words[2] if len(words) > 2 else "Unknown"
        message = words[3] if len(words) > 3 else ""
        if reason != "SSH" and reason in RETRYABLE:
            return JobFailure(reason, message, RETRYABLE[reason])
    for pattern, reason in _OPENSSH_PATTERNS:
        match = pattern.search(output)
        if match:
            line = next(
                (line for line in output.splitlines() if pattern.search(line)), match.group(0)
            )
            if reason == "ImageLacksSSH":
                return JobFailure(
                    reason, f"the Job's image lacks a tool it needs: {line.strip()}", False
                )
            return JobFailure(reason, line.strip(), RETRYABLE.get(reason, True))
    return JobFailure("Unknown", "", True)
