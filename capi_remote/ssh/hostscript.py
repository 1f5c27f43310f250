"""The host-side half of the runner: small POSIX ``sh`` helpers, run as root, one per command.

Why shell: every Linux host has ``sh`` and coreutils/util-linux (``setsid``, ``flock``,
``sha256sum``, ``mktemp``); nothing needs installing. Each helper is sent as
``sh -c '<prelude + body>' capi-remote-<op> <args...>``: arguments are separate words (never
pasted into the script), data (file contents, the command of a step) arrives on stdin after a
marker line, and the helper verifies it by sha256 before using it. Helpers answer with
``capi-remote <word> <args>`` lines on stdout; ``capi-remote tail`` is followed by raw output.

What lives on the host (``<state>`` = ``<state_root>/<machine uid>``, root-owned, 0700):

- ``<state>/plan``: digest of the plan whose steps ran here.
- ``<state>/steps/<NNNN>-<step digest>.*``: ``.rc`` exit code (``0`` = done, never run again),
  ``.start`` claim (created with noclobber before a command starts), ``.pid`` (``pid boot_id
  starttime`` of the detached wrapper, which leads the step's process group), ``.log`` (stdout and
  stderr of the command), ``.sh`` (the command), ``.pending`` (sha256 a file will have once
  replaced: makes an append exactly-once even if the runner dies between rename and ``.rc``).
- the success sentinel counts as this machine's only if ``<state>/plan`` exists (this machine's
  bootstrap started here) or the caller adopts the host (``adopt``: the machine was provisioned
  before, e.g. by the reference provider, and lost its status). Any other sentinel was left by
  another machine: ``foreign``, and nothing is touched.
- the lock file: ``<owner> <heartbeat> <boot id>``, the heartbeat in whole seconds since boot
  (``/proc/uptime``: immune to clock steps); changes are serialised with ``flock`` on
  ``<lock>.guard`` and written through a ``mktemp`` file renamed over it. The lock's directory
  (``/run/capi-remote`` by default) is created mode 0700 and used only if it is a real directory
  owned by the helper's user (root) and writable by nobody else: in a world-writable directory
  such as ``/run/lock`` any local user could pre-create the lock or its guard and hold the host
  (``begin`` answers ``unsafe-lock`` with the reason instead).

Commands run detached (``setsid``, own process group, output to the log) so a runner crash neither
kills nor repeats them: a restarted runner finds the ``.pid`` alive and waits for it.
"""

from __future__ import annotations

import hashlib
import shlex

import attrs

from capi_remote.bootstrap.plan import MakeDirectory, WriteFile

#: stdin starts with this line (after a sudo password, if any); helpers skip everything before it.
PAYLOAD_MARKER = b"capi-remote-payload\n"
_STATUS_PREFIX = b"capi-remote "

_PRELUDE = r"""
say() { printf 'capi-remote %s\n' "$*"; }
"""

_LOCK_FUNCTIONS = r"""
clock() {
  read -r _up _ < /proc/uptime
  now=${_up%.*}
  read -r boot < /proc/sys/kernel/random/boot_id
}
lock_dir_ok() {
  _ld=${lock%/*}
  if [ ! -e "$_ld" ] && [ ! -L "$_ld" ]; then (umask 077 && mkdir -p "$_ld") 2>/dev/null; fi
  unsafe=
  if [ -L "$_ld" ] || [ ! -d "$_ld" ]; then
    unsafe="$_ld is not a directory (a symlink or a file)"
  elif ! _st=$(stat -c '%u %a' "$_ld"); then
    unsafe="cannot stat $_ld"
  elif [ "${_st% *}" != "$(id -u)" ]; then
    unsafe="$_ld is owned by uid ${_st% *}, not $(id -u)"
  else
    case ${_st#* } in
      *[2367]? | *[2367]) unsafe="$_ld is writable by others (mode ${_st#* })" ;;
    esac
  fi
  [ -z "$unsafe" ]
}
lock_open() {
  if ! lock_dir_ok; then
    printf 'capi-remote: refusing the lock directory: %s\n' "$unsafe" >&2
    return 1
  fi
  exec 9>>"$lock.guard" || return 1
  flock -w 10 9
}
lock_read() {
  lowner= lbeat= lboot=
  if [ -f "$lock" ]; then read -r lowner lbeat lboot < "$lock" || true; fi
  case $lbeat in ''|*[!0-9]*) lbeat=0 ;; esac
}
lock_age() {
  clock
  if [ "$lboot" = "$boot" ]; then age=$((now - lbeat)); else age=999999; fi
}
lock_write() {
  clock
  _lt=$(mktemp "$lock.XXXXXXXXXX") || return 1
  if printf '%s %s %s\n' "$owner" "$now" "$boot" > "$_lt" && chmod 644 "$_lt" &&
    mv -f "$_lt" "$lock"; then return 0; fi
  rm -f "$_lt"
  return 1
}
lock_release() {
  lock_read
  if [ "$lowner" = "$owner" ]; then rm -f "$lock"; fi
}
"""

_STEP_FUNCTIONS = r"""
proc_stat() {
  _s=
  { read -r _s < "/proc/$1/stat"; } 2>/dev/null || return 1
  _s=${_s##*) }
  set -- $_s
  pstate=$1 pstart=${20}
}
step_alive() {
  [ -f "$b.pid" ] || return 1
  sp= sboot= sstart=
  read -r sp sboot sstart < "$b.pid" || return 1
  read -r cboot < /proc/sys/kernel/random/boot_id || return 1
  [ "$sboot" = "$cboot" ] || return 1
  proc_stat "$sp" || return 1
  [ "$pstate" != Z ] && [ "$pstart" = "$sstart" ]
}
receive() {
  while IFS= read -r _l; do [ "$_l" = capi-remote-payload ] && break; done
  [ "${_l:-}" = capi-remote-payload ] || return 1
  cat > "$1.tmp" || return 1
  _h=$(sha256sum < "$1.tmp") || return 1
  if [ "${_h%% *}" != "$2" ]; then rm -f "$1.tmp"; return 1; fi
  mv -f "$1.tmp" "$1"
}
mark_done() {
  printf '0\n' > "$b.rc.tmp" && mv -f "$b.rc.tmp" "$b.rc"
}
is_done() {
  _rc=
  [ -f "$b.rc" ] && read -r _rc < "$b.rc"
  [ "$_rc" = 0 ]
}
"""

_BEGIN = r"""
root=$1 uid=$2 digest=$3 lock=$4 owner=$5 stale=$6 sentinel=$7 adopt=$8
say begin
if [ -e "$sentinel" ]; then
  lock_read
  if [ "$lowner" = "$owner" ]; then lock_open && lock_release; fi
  if [ -f "$root/$uid/plan" ] || [ "$adopt" = 1 ]; then say bootstrapped; else say foreign; fi
  exit 0
fi
if ! lock_dir_ok; then say unsafe-lock "$unsafe"; exit 0; fi
lock_open || exit 1
lock_read
if [ -n "$lowner" ] && [ "$lowner" != "$owner" ]; then
  lock_age
  if [ "$age" -lt "$stale" ]; then say locked "$lowner" "$age"; exit 0; fi
  say takeover "$lowner" "$age"
fi
lock_write || exit 1
state=$root/$uid
umask 077
if [ ! -d "$state/steps" ]; then
  if ! { mkdir -p "$state/steps" && chmod 700 "$root" "$state"; }; then lock_release; exit 1; fi
fi
recorded=
if [ -f "$state/plan" ]; then read -r recorded < "$state/plan" || true; fi
if [ "$recorded" != "$digest" ]; then
  for f in "$state"/steps/*; do
    if [ -n "$recorded" ] && [ -e "$f" ]; then lock_release; say changed "$recorded"; exit 0; fi
  done
  if ! { printf '%s\n' "$digest" > "$state/plan.tmp" && mv -f "$state/plan.tmp" "$state/plan"; }
  then
    lock_release; exit 1
  fi
fi
for f in "$state"/steps/*.rc; do
  [ -f "$f" ] || continue
  rc=; read -r rc < "$f" || true
  n=${f##*/}
  say rc "${n%.rc}" "${rc:-unknown}"
done
say ready
"""

_HEARTBEAT = r"""
lock=$1 owner=$2
say begin
lock_open || exit 1
lock_read
if [ "$lowner" != "$owner" ]; then say lost "${lowner:-nobody}"; exit 0; fi
lock_write || exit 1
say ok
"""

_FINISH = r"""
lock=$1 owner=$2 sentinel=$3
say begin
lock_open || exit 1
lock_release
if [ -e "$sentinel" ]; then say complete; else say incomplete; fi
"""

# Teardown: after a cleanup job's steps, forget the machine on this host (its bootstrap state,
# the cleanup's own state and the sentinel), so the next claimant bootstraps from scratch.
_FORGET = r"""
lock=$1 owner=$2 sentinel=$3
shift 3
say begin
lock_open || exit 1
for dir in "$@"; do rm -rf -- "$dir" || { lock_release; exit 1; }; done
rm -f -- "$sentinel" || { lock_release; exit 1; }
lock_release
say forgotten
"""

_RELEASE = r"""
lock=$1 owner=$2
say begin
lock_open || exit 1
lock_release
say released
"""

# The detached wrapper: records its identity (it leads the step's session and process group),
# runs the command with its output in the log, then records the exit code atomically.
_WRAPPER = r"""b=$1
_s=; read -r _s < "/proc/$$/stat"; _s=${_s##*) }; set -- $_s; _start=${20}
read -r _boot < /proc/sys/kernel/random/boot_id
printf "%s %s %s\n" "$$" "$_boot" "$_start" > "$b.pid.tmp" && mv -f "$b.pid.tmp" "$b.pid" || exit 1
cd / && umask 022 || exit 1
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
sh "$b.sh" < /dev/null > "$b.log" 2>&1
printf "%s\n" "$?" > "$b.rc.tmp" && mv -f "$b.rc.tmp" "$b.rc"
"""

_RUN = (
    "WRAPPER="
    + shlex.quote(_WRAPPER)
    + r"""
b=$1 sha=$2 rerun=$3 tailn=$4
say begin
report() {
  rc=; read -r rc < "$b.rc" || true
  say rc "${rc:-unknown}"
  say tail
  tail -c "$tailn" "$b.log" 2>/dev/null
  exit 0
}
if [ -f "$b.rc" ]; then
  is_done && report
  rm -f "$b.rc" "$b.pid" "$b.start"
fi
if [ -f "$b.start" ]; then
  n=0
  while [ ! -f "$b.pid" ] && [ ! -f "$b.rc" ] && [ "$n" -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
  if step_alive; then say attached
  elif [ -f "$b.rc" ]; then report
  elif [ "$rerun" = 1 ]; then rm -f "$b.pid" "$b.start"
  else say interrupted; exit 0
  fi
fi
if [ ! -f "$b.start" ]; then
  umask 077
  receive "$b.sh" "$sha" || { say truncated; exit 0; }
  set -C
  if ! { command : > "$b.start"; } 2>/dev/null; then say busy; exit 0; fi
  set +C
  setsid sh -c "$WRAPPER" capi-remote-step "$b" < /dev/null > /dev/null 2>&1 &
  n=0
  while [ ! -f "$b.pid" ] && [ ! -f "$b.rc" ] && [ "$n" -lt 500 ]; do sleep 0.01; n=$((n + 1)); done
  say started
fi
d=0.01
while [ ! -f "$b.rc" ]; do
  if ! step_alive; then
    [ -f "$b.rc" ] && break
    say interrupted; exit 0
  fi
  sleep "$d"
  case $d in 0.01) d=0.02 ;; 0.02) d=0.05 ;; 0.05) d=0.1 ;; *) d=0.25 ;; esac
done
report
"""
)

_KILL = r"""
b=$1 grace=$2 tailn=$3
say begin
group_alive() {
  for _f in /proc/[0-9]*/stat; do
    _g=
    { read -r _g < "$_f"; } 2>/dev/null || continue
    _g=${_g##*) }
    set -- $_g
    if [ "$1" != Z ] && [ "$3" = "$pg" ]; then return 0; fi
  done
  return 1
}
if step_alive; then
  pg=$sp
  kill -s TERM -- "-$pg" 2>/dev/null
  n=0
  while group_alive && [ "$n" -lt $((grace * 10)) ]; do sleep 0.1; n=$((n + 1)); done
  if group_alive; then
    kill -s KILL -- "-$pg" 2>/dev/null
    n=0
    while group_alive && [ "$n" -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
  fi
  say killed
fi
if [ ! -f "$b.rc" ]; then rm -f "$b.pid" "$b.start"; fi
say done
say tail
tail -c "$tailn" "$b.log" 2>/dev/null
"""

_WRITE_FILE = r"""
b=$1 dst=$2 mode=$3 owner=$4 append=$5 sha=$6
say begin
if is_done; then say rc 0; exit 0; fi
if [ -f "$b.pending" ] && [ -f "$dst" ]; then
  want=; read -r want < "$b.pending" || true
  have=$(sha256sum < "$dst") || exit 1
  if [ -n "$want" ] && [ "${have%% *}" = "$want" ]; then
    mark_done && rm -f "$b.pending" && say rc 0
    exit 0
  fi
fi
tmp=
trap 'rm -f "$b.in" "$b.in.tmp" ${tmp:+"$tmp"}' EXIT
umask 077
receive "$b.in" "$sha" || { say truncated; exit 0; }
fail() { say failed; exit 0; }
if [ -d "$dst" ]; then echo "$dst is a directory" >&2; fail; fi
dir=${dst%/*}
umask 022
mkdir -p "${dir:-/}" || fail
tmp=$(mktemp "$dir/.capi-remote.XXXXXXXX") || fail
if [ "$append" = 1 ] && [ -f "$dst" ]; then
  cat "$dst" "$b.in" > "$tmp" || fail
else
  cat "$b.in" > "$tmp" || fail
fi
if [ -n "$owner" ]; then chown "$owner" "$tmp" || fail; fi
chmod "$mode" "$tmp" || fail
have=$(sha256sum < "$tmp") || exit 1
printf '%s\n' "${have%% *}" > "$b.pending" || exit 1
mv -f "$tmp" "$dst" || fail
tmp=
mark_done || exit 1
rm -f "$b.pending"
say rc 0
"""

_MAKE_DIRECTORY = r"""
b=$1 path=$2 mode=$3 owner=$4
say begin
if is_done; then say rc 0; exit 0; fi
fail() { say failed; exit 0; }
umask 022
mkdir -p "$path" || fail
if [ -n "$owner" ]; then chown "$owner" "$path" || fail; fi
chmod "$mode" "$path" || fail
mark_done || exit 1
say rc 0
"""

_PROBE = r"""
say begin
say section os-release
cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null
say section kernel
uname -r
say section arch
uname -m
say section cpus
getconf _NPROCESSORS_ONLN 2>/dev/null || grep -c ^processor /proc/cpuinfo
say section meminfo
grep '^MemTotal:' /proc/meminfo
say section hostname
cat /proc/sys/kernel/hostname
say section addresses
ip -o addr show 2>/dev/null
say section leftovers
if [ -e "$1" ]; then echo sentinel; fi
if _links=$(stat -c %h -- "$2" 2>/dev/null); then echo "state-links $_links"; fi
say section end
"""


def _command(op: str, body: str, *args: str) -> str:
    script = _PRELUDE + body
    return shlex.join(["sh", "-c", script, f"capi-remote-{op}", *args])


def payload(data: bytes) -> bytes:
    """stdin for a helper that receives data: the marker line, then the data itself."""
    return PAYLOAD_MARKER + data


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def begin(
    *,
    state_root: str,
    machine_uid: str,
    plan_digest: str,
    lock: str,
    owner: str,
    stale_after: int,
    sentinel: str,
    adopt: bool = False,
) -> str:
    """Sentinel check, lock, state dir, plan digest check, and the exit codes recorded so far.

    ``adopt`` trusts a sentinel without this machine's state (see the module docstring).
    """
    return _command(
        "begin",
        _LOCK_FUNCTIONS + _BEGIN,
        state_root,
        machine_uid,
        plan_digest,
        lock,
        owner,
        str(stale_after),
        sentinel,
        "1" if adopt else "0",
    )


def heartbeat(*, lock: str, owner: str) -> str:
    return _command("heartbeat", _LOCK_FUNCTIONS + _HEARTBEAT, lock, owner)


def finish(*, lock: str, owner: str, sentinel: str) -> str:
    return _command("finish", _LOCK_FUNCTIONS + _FINISH, lock, owner, sentinel)


def forget(*, lock: str, owner: str, sentinel: str, state_dirs: tuple[str, ...]) -> str:
    """Remove the given state directories and the sentinel, then release the lock."""
    return _command("forget", _LOCK_FUNCTIONS + _FORGET, lock, owner, sentinel, *state_dirs)


def release(*, lock: str, owner: str) -> str:
    return _command("release", _LOCK_FUNCTIONS + _RELEASE, lock, owner)


def run_step(*, base: str, script_sha256: str, rerun_interrupted: bool, tail_bytes: int) -> str:
    """Start (or attach to) a detached command step and wait for it; stdin: its ``sh`` script."""
    return _command(
        "run",
        _STEP_FUNCTIONS + _RUN,
        base,
        script_sha256,
        "1" if rerun_interrupted else "0",
        str(tail_bytes),
    )


def kill_step(*, base: str, grace: int, tail_bytes: int) -> str:
    """TERM the step's process group, KILL it after ``grace`` s, forget the start (so a later
    job runs the step again) and answer with the tail of its log."""
    return _command("kill", _STEP_FUNCTIONS + _KILL, base, str(grace), str(tail_bytes))


def write_file(
    *, base: str, path: str, mode: int, owner: str | None, append: bool, content_sha256: str
) -> str:
    """Atomically replace (or append to) a file; stdin: the content."""
    return _command(
        "write",
        _STEP_FUNCTIONS + _WRITE_FILE,
        base,
        path,
        f"{mode:04o}",
        owner or "",
        "1" if append else "0",
        content_sha256,
    )


def make_directory(*, base: str, path: str, mode: int, owner: str | None) -> str:
    return _command(
        "mkdir", _STEP_FUNCTIONS + _MAKE_DIRECTORY, base, path, f"{mode:04o}", owner or ""
    )


def file_step(step: WriteFile | MakeDirectory, base: str) -> tuple[str, bytes]:
    """The helper command of a file or directory step, and the content it reads on stdin."""
    if isinstance(step, WriteFile):
        command = write_file(
            base=base,
            path=step.path,
            mode=step.mode,
            owner=step.owner,
            append=step.append,
            content_sha256=sha256(step.content),
        )
        return command, step.content
    return make_directory(base=base, path=step.path, mode=step.mode, owner=step.owner), b""


def probe(*, sentinel: str, state_root: str) -> str:
    """Facts about the host, as ``capi-remote section <name>`` blocks (runs as the login user),
    and what a bootstrap left there (see :class:`capi_remote.ssh.probe.Leftovers`)."""
    return _command("probe", _PROBE, sentinel, state_root)


@attrs.frozen
class Reply:
    """What a helper answered: its status lines, and the raw bytes after ``capi-remote tail``."""

    lines: tuple[tuple[str, ...], ...]
    tail: bytes = attrs.field(repr=False)

    @classmethod
    def parse(cls, stdout: bytes) -> Reply:
        """Other lines are ignored: a chatty login shell may print before the helper runs."""
        lines: list[tuple[str, ...]] = []
        rest = stdout
        while rest:
            line, _, rest = rest.partition(b"\n")
            if not line.startswith(_STATUS_PREFIX):
                continue
            words = tuple(line[len(_STATUS_PREFIX) :].decode(errors="replace").split())
            if words == ("tail",):
                return cls(tuple(lines), rest)
            if words:
                lines.append(words)
        return cls(tuple(lines), b"")

    def get(self, word: str) -> tuple[str, ...] | None:
        """Arguments of the first line starting with ``word``."""
        return next((line[1:] for line in self.lines if line[0] == word), None)

    def all(self, word: str) -> list[tuple[str, ...]]:
        return [line[1:] for line in self.lines if line[0] == word]

    def has(self, word: str) -> bool:
        return self.get(word) is not None
