#!/usr/bin/env bash
# Follows the README's Pi set-up in a Debian Bookworm root booted with real systemd (systemd-nspawn -b), as the
# desktop user "pi" with sudo: sudo ./install.sh --kiosk, a bundle built as the service user and one installed
# over it while serving, the service (re)started and checked with doctor, status and journal, the page on
# 127.0.0.1:8080, systemctl reload, a frozen process restarted by the watchdog, too small a MemoryMax= refused
# in one line, the page opened to the network with a token and a drop-in, the kiosk turned off, the service
# disabled, and the uninstall.
#
#   sudo .ci/pi_root.sh
#
# There is no camera in a container: the run sets [camera] source = "folder:/srv/frames" (the demo's frames)
# in /etc/pi-search/config.toml. The catalog is the demo catalog, in ~pi/shop. The PC side of the README
# (a bundle built on a PC and copied with rsync) is played by the same user: a bundle of 100 of the items
# built into ~pi/shop-bundle with the installed CLI, copied to /tmp/newbundle.
# The first boot shares the host's network (apt and pip); the second has only its own loopback
# (--private-network), so 127.0.0.1:8080 is the container's and no port of the host is used.
# The debootstrapped root is kept in --cache (default /var/cache/pi-search-pi-root) with pip's and apt's
# caches; each run starts from a fresh copy of it. When containers cannot be run here (not root, no
# systemd-nspawn, no mirror) the run is reported as SKIPPED with the reason and the script exits 0; a failing
# step exits 1.
set -euo pipefail

SRC_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
PROG=.ci/pi_root.sh
CACHE=${PI_SEARCH_PI_ROOT_CACHE:-/var/cache/pi-search-pi-root}
SUITE=bookworm
MIRROR=${PI_SEARCH_DEBIAN_MIRROR:-}
MACHINE=raspberrypi
# What Raspberry Pi OS has before install.sh runs: systemd, sudo, Python, openssl (the README's token). No
# procps: the unit must not need /bin/kill. python3-venv, python3-dev and g++ are installed by install.sh when
# missing; they are in the root already so that a run does not download them each time.
INCLUDE=systemd,systemd-sysv,dbus,sudo,python3,python3-venv,python3-dev,g++,ca-certificates,openssl
CLI=/opt/pi-search/venv/bin/pi-search
BOOT_TIMEOUT=120

usage() {
  sed -n '2,/^[^#]/p' "$0" | sed -n 's/^# \{0,1\}//p'
  cat <<EOF

Options:
  --cache DIR    where the root and the caches are kept (default: $CACHE)
  --mirror URL   Debian mirror (default: the first one in /etc/apt/sources.list*)
  --fresh        debootstrap the root anew
  --keep         keep the run's root ($CACHE/run) for a look afterwards
EOF
}

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

SKIP_REASON=""
# skip REASON: records why the run cannot happen here; the caller returns 1 after it.
skip() { SKIP_REASON=$*; }

# ------------------------------------------------------------------ host set-up
ensure_host_tools() {
  [ "$(id -u)" = 0 ] || { skip "needs root (debootstrap, systemd-nspawn)"; return 1; }
  local missing=()
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
  command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
  if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || { skip "missing ${missing[*]} and no apt-get to install them"; return 1; }
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; } \
      || { skip "cannot install ${missing[*]} with apt-get"; return 1; }
  fi
}

find_mirror() {
  [ -n "$MIRROR" ] && return 0
  local f uri
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' \
                 -e 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\).*/\2/p' "$f" \
          | grep -E '/debian/?$' | head -n1 || true)
    if [ -n "$uri" ]; then MIRROR=${uri%/}; return 0; fi
  done
  MIRROR=http://deb.debian.org/debian
}

# One run at a time per cache (the run's root and the caches are shared).
take_lock() {
  exec 9> "$CACHE/lock"
  if ! flock -n 9; then
    log "waiting for another run of $PROG on $CACHE"
    flock 9
  fi
}

# The base root: debootstrapped once, with the user "pi" (passwordless sudo, as on Raspberry Pi OS).
ensure_base() {
  local base=$CACHE/base-$SUITE
  if [ "$FRESH" = 1 ] && [ -d "$base" ]; then rm -rf --one-file-system "$base"; fi
  if [ -f "$base/.pi-search-root" ]; then
    log "reusing $base"
    return 0
  fi
  rm -rf --one-file-system "$base"
  log "debootstrap $SUITE from $MIRROR (a few minutes)"
  if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$base" "$MIRROR" \
      > "$CACHE/debootstrap.log" 2>&1; then
    tail -n 5 "$CACHE/debootstrap.log" >&2
    rm -rf --one-file-system "$base"
    skip "debootstrap $SUITE failed (mirror $MIRROR; log $CACHE/debootstrap.log)"
    return 1
  fi
  chroot "$base" useradd --create-home --shell /bin/bash --groups sudo,video pi
  printf 'pi ALL=(ALL) NOPASSWD: ALL\n' > "$base/etc/sudoers.d/010_pi-nopasswd"
  chmod 0440 "$base/etc/sudoers.d/010_pi-nopasswd"
  printf '%s\n' "$MACHINE" > "$base/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$MACHINE" \
    > "$base/etc/hosts"
  # Nothing in the container uses a getty; without it the console is quiet.
  chroot "$base" systemctl mask --quiet console-getty.service getty@tty1.service
  touch "$base/.pi-search-root"
}

# Folders (file:// or plain paths) named in the host's pip configuration.
pip_local_dirs() {
  local py
  py=$(command -v python3 || true)
  [ -n "$py" ] || return 0
  "$py" -m pip config list 2>/dev/null | sed -n "s/^[^=]*\(find-links\|index-url\|extra-index-url\)='\(.*\)'$/\2/p" \
    | tr ' ' '\n' | sed -n -e 's|^file://||p' -e '/^\//p' | sort -u | while read -r d; do
      [ -d "$d" ] && printf '%s\n' "$d"
    done
}

# A fresh copy of the base root, with this checkout in /home/pi/pi-search, pip's configuration and CA
# certificates from the host, and the demo catalog and frames in /srv.
prepare_run() {
  RUN=$CACHE/run
  rm -rf --one-file-system "$RUN"
  cp -a --reflink=auto "$CACHE/base-$SUITE" "$RUN"
  # pip in the root must trust what the host trusts (a proxy's CA) and see its configuration.
  cp /etc/ssl/certs/ca-certificates.crt "$RUN/etc/ssl/certs/ca-certificates.crt"
  local f
  for f in /etc/pip.conf /etc/xdg/pip/pip.conf /etc/xdg/pip/constraints.txt; do
    if [ -f "$f" ]; then mkdir -p "$RUN$(dirname "$f")" && cp "$f" "$RUN$f"; fi
  done
  if [ -n "${https_proxy:-${HTTPS_PROXY:-}}" ] && [ ! -f /etc/pip.conf ]; then
    printf '[global]\nproxy = %s\n' "${https_proxy:-$HTTPS_PROXY}" > "$RUN/etc/pip.conf"
  fi
  mkdir -p "$RUN/home/pi/pi-search"
  tar -C "$SRC_DIR" --exclude=./.venv --exclude=./.git --exclude=./build --exclude='__pycache__' \
      --exclude='*.egg-info' --exclude=./.pytest_cache --exclude=./.ruff_cache -cf - . \
    | tar -C "$RUN/home/pi/pi-search" -xf -
  mkdir -p "$RUN/home/pi/shop"
  cp -a "$SRC_DIR/pi_search/data/demo/catalog.csv" "$SRC_DIR/pi_search/data/demo/images" "$RUN/home/pi/shop/"
  chroot "$RUN" chown -R pi:pi /home/pi/pi-search /home/pi/shop
  chmod 0700 "$RUN/home/pi"  # as Debian 12's adduser makes it
  # As on Raspberry Pi OS, the desktop user reads the journal (group adm).
  chroot "$RUN" usermod -aG adm pi
  cp -a "$SRC_DIR/pi_search/data/demo/frames" "$RUN/srv/frames"
  mkdir -p "$CACHE/pip-cache" "$RUN/root/.cache/pip" "$CACHE/apt-archives/partial"
}

# ------------------------------------------------------------------ the container
NSPAWN_PID=""
LEADER=""

# boot NAME [nspawn options...]: boots the run's root and waits until its systemd has started up.
boot() {
  local name=$1 i state; shift
  local binds=(--bind="$CACHE/pip-cache:/root/.cache/pip" --bind="$CACHE/apt-archives:/var/cache/apt/archives") d
  # A local simple index links its files relatively (../../files): its parent folder goes in too.
  for d in $(pip_local_dirs); do
    case "$d" in */simple|*/simple/) d=$(dirname "${d%/}") ;; esac
    binds+=(--bind-ro="$d")
  done
  systemd-nspawn --quiet --register=no --keep-unit --console=passive -b -D "$RUN" -M "$MACHINE" \
    "${binds[@]}" "$@" > "$LOGS/boot-$name.log" 2>&1 &
  NSPAWN_PID=$!
  LEADER=""
  for i in $(seq 1 60); do
    LEADER=$(pgrep -P "$NSPAWN_PID" 2>/dev/null | head -n1 || true)
    [ -n "$LEADER" ] && [ "$(cat "/proc/$LEADER/comm" 2>/dev/null)" = systemd ] && break
    if ! kill -0 "$NSPAWN_PID" 2>/dev/null; then
      skip "systemd-nspawn cannot boot a container here: $(tail -n 1 "$LOGS/boot-$name.log")"
      return 1
    fi
    LEADER=""
    sleep 0.5
  done
  [ -n "$LEADER" ] || { skip "systemd-nspawn started no systemd within 30 s (log: $LOGS/boot-$name.log)"; return 1; }
  # Until systemd has started up (before its bus is up, systemctl answers nothing).
  for i in $(seq 1 "$BOOT_TIMEOUT"); do
    state=$(inside systemctl is-system-running 2>/dev/null || true)
    case "$state" in running|degraded|maintenance|stopping|offline) break ;; esac
    sleep 1
  done
  log "boot $name: systemd in the container is ${state:-not answering} after $i s"
  case "$state" in
    running|degraded) ;;
    *) skip "the container's systemd did not start up (state: ${state:-none}; log: $LOGS/boot-$name.log)"
       return 1 ;;
  esac
  if [ "$state" = degraded ]; then inside systemctl --failed --no-legend --plain | sed 's/^/    failed: /'; fi
}

poweroff() {
  [ -n "$NSPAWN_PID" ] || return 0
  inside systemctl poweroff >/dev/null 2>&1 || true
  local i
  for i in $(seq 1 60); do
    kill -0 "$NSPAWN_PID" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$NSPAWN_PID" 2>/dev/null; then kill "$NSPAWN_PID" 2>/dev/null || true; fi
  wait "$NSPAWN_PID" 2>/dev/null || true
  NSPAWN_PID=""
}

# inside CMD...: runs CMD as root in the container (all its namespaces, a clean environment).
inside() {
  nsenter -t "$LEADER" -a -r -w -- /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 HOME=/root "$@"
}

# as_pi 'SHELL COMMANDS': runs them as the user pi in ~/pi-search, the way the README's reader types them.
as_pi() {
  inside HOME=/home/pi USER=pi LOGNAME=pi runuser -u pi -- /bin/bash -eo pipefail -c "cd ~/pi-search && $1"
}

# ------------------------------------------------------------------ steps
STEPS=()
FAILED=""

# step NAME FUNCTION: runs FUNCTION with errexit in a subshell; its output goes to the log, and to the terminal
# when it fails. The run stops at the first failed step.
step() {
  local name=$1 fn=$2 t0=$SECONDS status=0 out
  [ -z "$FAILED" ] || return 0
  out=$LOGS/step-$(printf '%02d' ${#STEPS[@]})-$fn.log
  printf '== %s\n' "$name" > "$out"
  # In the background the subshell keeps errexit (in an || list it would not).
  ( set -euo pipefail; "$fn" ) >> "$out" 2>&1 &
  wait $! || status=$?
  STEPS+=("$(printf '%-4s %4d s  %s' "$([ "$status" = 0 ] && echo ok || echo FAIL)" $((SECONDS - t0)) "$name")")
  printf '  %s\n' "${STEPS[-1]}"
  if [ -f "$LOGS/$fn.note" ]; then sed 's/^/            /' "$LOGS/$fn.note"; fi
  if [ "$status" != 0 ]; then
    FAILED=$name
    sed 's/^/      | /' "$out" | tail -n 60
  fi
}

# not CMD...: fails when CMD succeeds (a plain "! CMD" never stops a script under errexit).
not() { if "$@"; then return 1; fi; }

# expect TEXT FILE: fails (printing the file) unless FILE contains TEXT.
expect() {
  grep -qF -- "$1" "$2" || { printf 'expected "%s" in:\n' "$1"; cat "$2"; return 1; }
}

# http URL [STATUS [HOST]]: GET inside the container (with a Host header naming HOST); fails unless the status
# is STATUS (200); prints the body.
http() {
  inside python3 -c '
import sys, urllib.error, urllib.request
url, want, host = sys.argv[1], int(sys.argv[2]), sys.argv[3]
req = urllib.request.Request(url, headers={"Host": host} if host else {})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
print(status, body[:4000].decode("utf-8", "replace"))
sys.exit(0 if status == want else 1)' "$1" "${2:-200}" "${3:-}"
}

main_pid() { inside systemctl show -p MainPID --value pi-search.service; }
is_active() { [ "$(inside systemctl is-active pi-search.service || true)" = active ]; }

# wait_active SECONDS: until pi-search.service is active (fails after SECONDS).
wait_active() {
  local i
  for i in $(seq 1 "$1"); do
    if is_active; then echo "active after $i s"; return 0; fi
    sleep 1
  done
  inside systemctl status --no-pager pi-search.service || true
  return 1
}

# wait_healthy SECONDS: until /healthz answers 200 (the camera's first frame comes a moment after READY=1).
wait_healthy() {
  local i
  for i in $(seq 1 "$1"); do
    if http http://127.0.0.1:8080/healthz > /dev/null; then echo "healthy after $i s"; return 0; fi
    sleep 1
  done
  http http://127.0.0.1:8080/healthz
}

# Boot 1: the host's network. The README's install with the kiosk; apt installs Chromium (its .debs are cached).
s_install() {
  local out=$LOGS/install.out status=0
  as_pi 'sudo ./install.sh --kiosk' > "$out" 2>&1 || status=$?
  cat "$out"
  [ "$status" = 0 ]
  expect 'Next:' "$out"
  expect "sudo -u pi-search $CLI index build" "$out"
  not grep -iE 'warning|deprecat|traceback' "$out"
  [ "$(inside systemctl is-enabled pi-search.service)" = enabled ]
  not is_active
  inside test -x /usr/bin/chromium
  inside grep -F '/opt/pi-search/bin/pi-search-kiosk &  # pi-search kiosk' /home/pi/.config/labwc/autostart
}

# What pip builds (build/, *.egg-info) stays out of the user's checkout: nothing in it belongs to root.
s_checkout_clean() {
  local owned
  owned=$(inside find /home/pi/pi-search -user root)
  [ -z "$owned" ] || { printf 'owned by root:\n%s\n' "$owned"; return 1; }
}

s_model() {
  as_pi "cd /tmp && $CLI model info --json" | tee "$LOGS/model.json"
  grep -q efficientnet_lite0_int8 "$LOGS/model.json"
}

# Debian Bookworm's own pip (23.0.1, not upgraded) builds and installs the package (PEP 517, setuptools from
# the index) into a plain venv, model included.
s_bookworm_pip() {
  as_pi 'python3 -m venv /tmp/plain && /tmp/plain/bin/pip --version && cp -r ~/pi-search /tmp/src
         /tmp/plain/bin/pip install --quiet --no-deps /tmp/src 2>&1 | tee /tmp/plain.log
         if grep -i license /tmp/plain.log; then exit 1; fi
         cd /tmp && /tmp/plain/bin/python -c "
from pi_search.model.shipped import shipped_model
p = shipped_model()
print(p)
assert p.is_file() and \"site-packages/pi_search/data/models\" in str(p), p"'
}

# README, Install, step 3, "build it on the Pi": the catalog folder ~/shop copied where pi-search can read it.
s_build() {
  as_pi 'sudo cp -r ~/shop /var/lib/pi-search/catalog'
  as_pi 'sudo chown -R pi-search:pi-search /var/lib/pi-search/catalog'
  as_pi "sudo -u pi-search $CLI index build /var/lib/pi-search/catalog --out /var/lib/pi-search/bundle"
  inside test -f /var/lib/pi-search/bundle/manifest.json
}

# A second bundle, of the first 100 items, as if built on a PC (README, "Your own catalog"): installed over
# the served one in boot 2.
s_pc_bundle() {
  as_pi "mkdir -p ~/shop100 && head -n 101 ~/shop/catalog.csv > ~/shop100/catalog.csv && cp -r ~/shop/images ~/shop100/
         $CLI index build ~/shop100 --out ~/shop-bundle"
  inside test -f /home/pi/shop-bundle/manifest.json
}

s_camera() {
  as_pi "sudo sed -i 's|^source = .*|source = \"folder:/srv/frames\"|' /etc/pi-search/config.toml"
  inside grep -x 'source = "folder:/srv/frames"' /etc/pi-search/config.toml
}

# Boot 2: the container's own loopback only.
s_boot() { wait_active 120; }

s_restart() {
  as_pi 'sudo systemctl restart pi-search'
  is_active
}

s_doctor() { as_pi "sudo -u pi-search $CLI doctor --config /etc/pi-search/config.toml"; }

s_page() {
  http http://127.0.0.1:8080/healthz | tee "$LOGS/healthz.txt"
  grep -qE '"ok": ?true' "$LOGS/healthz.txt"
  grep -qE '"items": ?150' "$LOGS/healthz.txt"
  http http://127.0.0.1:8080/ | grep -qi '<html'
}

# README, The service: status and the log as the desktop user (in group adm, as on Raspberry Pi OS).
s_status() {
  as_pi 'systemctl status pi-search --no-pager' | tee "$LOGS/status.txt"
  grep -q 'active (running)' "$LOGS/status.txt"
  local status=0
  as_pi 'timeout 3 journalctl -u pi-search -f' > "$LOGS/journal.txt" 2>&1 || status=$?
  cat "$LOGS/journal.txt"
  [ "$status" = 124 ]  # -f follows until stopped
  grep -q 'pi-search' "$LOGS/journal.txt"
}

s_security() { inside systemd-analyze security --no-pager pi-search.service | tail -n 1 | tee "$LOGS/s_security.note"; }

# Chromium's dependencies bring procps; without --kiosk it is not there. So /bin/kill is moved away for the
# reload: it must work without it.
s_reload() {
  local before kill_bin status=0
  before=$(main_pid)
  kill_bin=$(inside readlink -f /bin/kill || true)
  if [ -n "$kill_bin" ] && inside test -e "$kill_bin"; then inside mv "$kill_bin" "$kill_bin.away"; fi
  as_pi 'sudo systemctl reload pi-search' || status=$?
  if [ -n "$kill_bin" ] && inside test -e "$kill_bin.away"; then inside mv "$kill_bin.away" "$kill_bin"; fi
  [ "$status" = 0 ]
  sleep 2
  [ "$(main_pid)" = "$before" ]
  is_active
  inside journalctl -u pi-search.service --no-pager -o cat | grep 'SIGHUP: bundle reloaded'
  http http://127.0.0.1:8080/healthz
}

# README, Install, step 3, "build the bundle on your PC and copy it over": the rsync lands in /tmp/newbundle
# (here a cp), then index install; the running service serves the 100 items within seconds, no restart.
s_index_install() {
  local before i
  before=$(main_pid)
  as_pi 'cp -r ~/shop-bundle /tmp/newbundle'
  as_pi "sudo -u pi-search $CLI index install /tmp/newbundle --to /var/lib/pi-search/bundle"
  for i in $(seq 1 30); do
    if http http://127.0.0.1:8080/healthz > "$LOGS/healthz2.txt" && grep -qE '"items": ?100' "$LOGS/healthz2.txt"; then
      break
    fi
    sleep 1
  done
  cat "$LOGS/healthz2.txt"
  grep -qE '"items": ?100' "$LOGS/healthz2.txt"
  [ "$(main_pid)" = "$before" ]
  echo "served the new bundle after $i s" | tee "$LOGS/s_index_install.note"
}

s_watchdog() {
  local before restarts now i
  before=$(main_pid)
  restarts=$(inside systemctl show -p NRestarts --value pi-search.service)
  # shellcheck disable=SC2016  # $1 is the inner shell's
  inside sh -c 'kill -STOP "$1"' sh "$before"
  for i in $(seq 1 150); do
    now=$(main_pid)
    if [ "$now" != "$before" ] && [ "$now" != 0 ] && is_active; then break; fi
    sleep 1
  done
  echo "after $i s: MainPID $before -> $now" | tee "$LOGS/s_watchdog.note"
  [ "$now" != "$before" ] && [ "$now" != 0 ]
  [ "$(inside systemctl show -p NRestarts --value pi-search.service)" -gt "$restarts" ]
  inside journalctl -u pi-search.service --no-pager | grep -i 'watchdog timeout'
  http http://127.0.0.1:8080/healthz
}

# Too little memory for the bundle: under a MemoryMax= below what the daemon needs it refuses in one line (the
# figures and the fix) with exit 3, which the unit does not restart (RestartPreventExitStatus=3): no silent
# crash loop. With enough memory it starts and serves. Where the container's cgroup controllers are read-only
# (a host on cgroup v1), systemd cannot apply MemoryMax=; the address-space limit LimitAS= (ulimit -v) is
# checked the same way instead, and the note says so.
s_memory_max() {
  local conf=/etc/systemd/system/pi-search.service.d/memory.conf since line small enough want
  if inside test -e /sys/fs/cgroup/system.slice/pi-search.service/memory.max \
     || inside test -e /sys/fs/cgroup/memory/system.slice/pi-search.service/memory.limit_in_bytes; then
    small=MemoryMax=200M enough=MemoryMax=400M
    want='may use 210 MB (MemoryMax= of pi-search.service): raise MemoryMax'
  else
    echo "MemoryMax= is not enforced in this container (read-only cgroup controllers): LimitAS= instead" \
      | tee "$LOGS/s_memory_max.note"
    small=LimitAS=450M enough=LimitAS=900M
    want='may use 472 MB (ulimit -v, RLIMIT_AS): raise ulimit -v'
  fi
  since=$(inside date '+%Y-%m-%d %H:%M:%S')
  inside mkdir -p /etc/systemd/system/pi-search.service.d
  printf '[Service]\n%s\n' "$small" | inside tee "$conf" > /dev/null
  inside systemctl daemon-reload
  inside systemctl restart pi-search.service || true
  sleep 8  # longer than RestartSec: a restart would have happened by now
  inside systemctl status --no-pager pi-search.service || true
  [ "$(inside systemctl is-active pi-search.service || true)" = failed ]
  [ "$(inside systemctl show -p ExecMainStatus --value pi-search.service)" = 3 ]
  # a start by hand resets the count of automatic restarts: any since then would show here
  [ "$(inside systemctl show -p NRestarts --value pi-search.service)" = 0 ]
  inside journalctl -u pi-search.service --since "$since" --no-pager -o cat > "$LOGS/memory-journal.txt"
  cat "$LOGS/memory-journal.txt"
  line=$(grep -F 'error: not enough' "$LOGS/memory-journal.txt")
  [ "$(printf '%s\n' "$line" | wc -l)" = 1 ]
  printf '%s\n' "$line" | grep -F "$want"
  not grep -F 'Traceback' "$LOGS/memory-journal.txt"
  # doctor, run outside the service, judges by the unit's limits and says the same
  as_pi "sudo -u pi-search $CLI doctor --config /etc/pi-search/config.toml" > "$LOGS/memory-doctor.txt" 2>&1 || true
  cat "$LOGS/memory-doctor.txt"
  grep -E '^FAIL +memory' "$LOGS/memory-doctor.txt" | grep -F "$want"
  printf '[Service]\n%s\n' "$enough" | inside tee "$conf" > /dev/null
  inside systemctl daemon-reload
  inside systemctl reset-failed pi-search.service
  inside systemctl restart pi-search.service
  wait_active 60
  wait_healthy 30
  echo "$small: \"$line\", not restarted; $enough: serving" | tee -a "$LOGS/s_memory_max.note"
  inside rm "$conf"
  inside systemctl daemon-reload
  inside systemctl restart pi-search.service
  wait_active 60
}

s_network() {
  local token
  token=$(as_pi 'openssl rand -hex 16')
  as_pi "sudo sed -i -e 's|^host = .*|host = \"0.0.0.0\"|' -e 's|^token = .*|token = \"$token\"|' \
         -e 's|^allowed_hosts = .*|allowed_hosts = [\"raspberrypi.local\"]|' /etc/pi-search/config.toml"
  inside grep -x "token = \"$token\"" /etc/pi-search/config.toml
  inside grep -x 'allowed_hosts = \["raspberrypi.local"\]' /etc/pi-search/config.toml
  # "sudo systemctl edit pi-search" opens an editor on a terminal; here script(1) is the terminal and the
  # editor copies the drop-in in.
  as_pi 'printf "[Service]\nIPAddressAllow=192.168.0.0/16\n" > /tmp/lan.conf
         script -qec "sudo SYSTEMD_EDITOR=\"cp /tmp/lan.conf\" systemctl edit pi-search" /dev/null'
  inside systemctl cat pi-search.service | grep -x 'IPAddressAllow=192.168.0.0/16'
  as_pi 'sudo systemctl restart pi-search'
  http http://127.0.0.1:8080/ 401
  http "http://127.0.0.1:8080/?token=$token" | grep -qi '<html'
  http "http://127.0.0.1:8080/?token=$token" 200 raspberrypi.local:8080 | grep -qi '<html'
  http "http://127.0.0.1:8080/?token=$token" 400 elsewhere.example:8080
}

s_reinstall() {
  as_pi 'sudo ./install.sh --kiosk' | tee "$LOGS/install2.out"
  expect 'Nothing to change' "$LOGS/install2.out"
}

# README, The kiosk screen: turned off for good by the desktop user.
s_kiosk_off() {
  as_pi "sed -i '/# pi-search kiosk/d' ~/.config/labwc/autostart"
  not inside grep -F 'pi-search' /home/pi/.config/labwc/autostart
}

s_disable() {
  as_pi 'sudo systemctl disable --now pi-search'
  not is_active
  [ "$(inside systemctl is-enabled pi-search.service || true)" = disabled ]
}

s_uninstall() {
  as_pi 'sudo ./install.sh --uninstall'
  not inside test -e /opt/pi-search
  not inside test -e /etc/systemd/system/pi-search.service
  inside test -f /etc/pi-search/config.toml
  inside test -f /var/lib/pi-search/bundle/manifest.json
  not is_active
}

s_purge() {
  as_pi 'sudo ./install.sh --uninstall --purge'
  not inside test -e /etc/pi-search
  not inside test -e /var/lib/pi-search
  not inside test -e /etc/systemd/system/pi-search.service.d
  not inside id pi-search
}

boot_one_steps() {
  step "sudo ./install.sh --kiosk (fresh root)" s_install
  step "the checkout has no files of root's (pip built from a staged copy)" s_checkout_clean
  step "the installed CLI finds its model (non-editable package, run from /tmp)" s_model
  step "Debian's own pip (python3 -m venv, no upgrade) installs the package with its model" s_bookworm_pip
  step "the catalog copied to /var/lib/pi-search/catalog, index build as pi-search" s_build
  step "a second bundle (100 items) built as on a PC" s_pc_bundle
  step "camera stand-in: [camera] source = \"folder:/srv/frames\"" s_camera
}

boot_two_steps() {
  step "pi-search.service comes up at boot" s_boot
  step "sudo systemctl restart pi-search" s_restart
  step "sudo -u pi-search $CLI doctor --config /etc/pi-search/config.toml" s_doctor
  step "the page: /healthz (150 items) and / on 127.0.0.1:8080" s_page
  step "systemctl status pi-search; journalctl -u pi-search -f" s_status
  step "systemd-analyze security pi-search.service" s_security
  step "sudo systemctl reload pi-search, no /bin/kill (same process, bundle mapped again)" s_reload
  step "index install /tmp/newbundle --to /var/lib/pi-search/bundle: served without a restart" s_index_install
  step "a frozen process (SIGSTOP) is restarted by the watchdog" s_watchdog
  step "too little memory (MemoryMax=, else LimitAS=): one line, no restart loop; enough: it serves" s_memory_max
  step "the page opened to the network: token, host 0.0.0.0, allowed_hosts, IPAddressAllow drop-in" s_network
  step "sudo ./install.sh --kiosk again changes nothing" s_reinstall
  step "the kiosk turned off for good (sed on ~/.config/labwc/autostart)" s_kiosk_off
  step "sudo systemctl disable --now pi-search" s_disable
  step "sudo ./install.sh --uninstall keeps config and bundles" s_uninstall
  step "sudo ./install.sh --uninstall --purge removes the rest" s_purge
}

parse_args() {
  FRESH=0
  KEEP=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --cache) [ $# -ge 2 ] || { usage >&2; exit 2; }; CACHE=$2; shift ;;
      --mirror) [ $# -ge 2 ] || { usage >&2; exit 2; }; MIRROR=$2; shift ;;
      --fresh) FRESH=1 ;;
      --keep) KEEP=1 ;;
      -h|--help) usage; exit 0 ;;
      *) echo "$PROG: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
  done
}

cleanup() {
  poweroff
  if [ "$KEEP" = 0 ] && [ -n "${RUN:-}" ] && [ -d "$RUN" ]; then rm -rf --one-file-system "$RUN"; fi
}

main() {
  local start=$SECONDS result
  RUN=""
  trap cleanup EXIT
  if ensure_host_tools && mkdir -p "$CACHE" && take_lock && find_mirror && ensure_base; then
    LOGS=$CACHE/logs
    rm -rf "$LOGS" && mkdir -p "$LOGS"
    log "fresh root $CACHE/run; logs in $LOGS"
    prepare_run
    log "boot 1 (the host's network): install, bundle, config"
    if boot one; then
      boot_one_steps
      poweroff
      if [ -z "$FAILED" ]; then
        log "boot 2 (--private-network): the service, the page, reload, watchdog, uninstall"
        if boot two --private-network; then boot_two_steps; poweroff; fi
      fi
    fi
  fi
  if [ -n "$FAILED" ]; then
    result="FAILED at: $FAILED (logs: $LOGS)"
  elif [ -n "$SKIP_REASON" ]; then
    result="SKIPPED ($SKIP_REASON)"
  else
    result=PASSED
  fi
  echo
  echo "Pi root (systemd-nspawn) summary: $result, $((SECONDS - start)) s"
  local s
  for s in "${STEPS[@]}"; do printf '  %s\n' "$s"; done
  [ -z "$FAILED" ]
}

parse_args "$@"
main
