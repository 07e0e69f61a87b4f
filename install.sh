#!/usr/bin/env bash
# Installs pi-search: the appliance on a Raspberry Pi (default), or a development venv (--dev).
#
#   sudo ./install.sh                 system install: apt packages, /opt/pi-search/venv, user, config, unit
#   sudo ./install.sh --kiosk         ... and Chromium in kiosk mode on the Pi's screen
#   ./install.sh --dev [--export]     .venv in the checkout for development and tests (no root, no systemd)
#   sudo ./install.sh --uninstall     removes the unit and the venv; keeps config and bundles (--purge: all)
#
# Every step checks first and acts only when something is missing, so a second run changes nothing.
set -euo pipefail

SRC_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
PROG=${0##*/}
ORIG_ARGS=("$@")

MIN_PY_MINOR=11      # Python 3.11 (Raspberry Pi OS Bookworm) ...
MAX_PY_MINOR=14      # ... to 3.14 (ai-edge-litert publishes aarch64 wheels for cp311-cp314)

MODE=system
EXPORT=0
MIN_PIP=21.3         # editable installs of a pyproject.toml project (PEP 660); older venvs' pip is upgraded
VENV_NEW=0           # set when this run makes the venv: its pip is upgraded once, then left alone
KIOSK=0
DRY_RUN=0
UNINSTALL=0
PURGE=0
ROOT=""
USE_SYSTEMD=1
USE_APT=1
START=1
PYTHON=${PYTHON:-}
SERVICE_USER=pi-search
KIOSK_USER=${SUDO_USER:-}
PORT=8080

usage() {
  cat <<EOF
Usage: $PROG [options]

Modes:
  (default)          system install on a Raspberry Pi (or any 64-bit Debian): needs root
  --dev              development install: .venv in the checkout with the 'dev' extra; no root needed
  --uninstall        remove the unit, the kiosk entry and the venv; keep config and bundles
  --purge            with --uninstall: also remove /etc/pi-search, /var/lib/pi-search and the user

Options:
  --export           (--dev) also install the 'export' extra (TensorFlow model tool chain)
  --kiosk            (system) show the page full screen in Chromium on the Pi's desktop (labwc)
  --kiosk-user NAME  desktop user whose session starts the kiosk (default: \$SUDO_USER)
  --dry-run          print what would be done, change nothing
  --root DIR         install into DIR as if it were / (a sandbox; implies --no-apt, no user is created)
  --no-systemd       write the unit file but do not call systemctl
  --no-apt           do not install Debian packages (print the command instead)
  --no-start         enable the unit but do not start it now
  --python PATH      interpreter for the venv (system default: /usr/bin/python3; dev: python3)
  -h, --help         this help
EOF
}

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
note() { printf '%s\n' "$*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dev) MODE=dev ;;
    --export) EXPORT=1 ;;
    --kiosk) KIOSK=1 ;;
    --kiosk-user) [ $# -ge 2 ] || die "--kiosk-user needs a user name"; KIOSK_USER=$2; shift ;;
    --dry-run) DRY_RUN=1 ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift ;;
    --root=*) ROOT=${1#--root=} ;;
    --no-systemd) USE_SYSTEMD=0 ;;
    --no-apt) USE_APT=0 ;;
    --no-start) START=0 ;;
    --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON=$2; shift ;;
    --python=*) PYTHON=${1#--python=} ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
  shift
done

[ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ] && die "--purge only goes with --uninstall"
[ "$MODE" = dev ] && [ "$KIOSK" = 1 ] && die "--kiosk is for the system install, not --dev"
[ "$MODE" = system ] && [ "$EXPORT" = 1 ] && die "--export is for --dev (the Pi never needs TensorFlow)"
if [ -n "$ROOT" ]; then
  [ "$MODE" = dev ] && die "--root is for the system install, not --dev"
  case "$ROOT" in /*) ;; *) ROOT=$PWD/$ROOT ;; esac
  ROOT=${ROOT%/}
  [ -n "$ROOT" ] || die "--root / is the real system: leave --root out"
  USE_APT=0
fi

# ------------------------------------------------------------------ actions
CHANGES=0

# The output of the commands run (apt, pip) goes to a log file, shown only when a step fails; the log is
# removed when the install succeeds.
LOG=""

STAGE=""

on_exit() {
  local status=$?
  if [ -n "$STAGE" ]; then rm -rf -- "$STAGE"; fi
  if [ "$status" = 0 ] && [ -n "$LOG" ]; then rm -f -- "$LOG"; fi
  exit "$status"
}
trap on_exit EXIT

open_log() {
  [ -n "$LOG" ] && return 0
  LOG=$(mktemp "${TMPDIR:-/tmp}/pi-search-install.XXXXXX.log") || die "cannot create a log file in ${TMPDIR:-/tmp}"
}

# run DESCRIPTION CMD...: one change to the system, announced on one line; only printed under --dry-run.
run() {
  local what=$1 status=0; shift
  CHANGES=$((CHANGES + 1))
  if [ "$DRY_RUN" = 1 ]; then
    note "  would: $what"
    return 0
  fi
  note "  do:    $what"
  open_log
  local start
  start=$(($(wc -l < "$LOG") + 1))
  printf '$ %s\n' "$*" >> "$LOG"
  "$@" >> "$LOG" 2>&1 < /dev/null || status=$?
  if [ "$status" != 0 ]; then
    printf '%s: error: failed: %s (exit status %s). The end of its output:\n' "$PROG" "$what" "$status" >&2
    tail -n "+$start" -- "$LOG" | tail -n 25 | sed 's/^/    /' >&2
    printf 'The whole log: %s\n' "$LOG" >&2
    exit 1
  fi
}

ok() { note "  ok:    $*"; }

is_root() { [ "$(id -u)" = 0 ]; }

# ------------------------------------------------------------------ checks
check_arch() {
  local machine userland=""
  machine=$(uname -m)
  if command -v dpkg >/dev/null 2>&1; then userland=$(dpkg --print-architecture); fi
  case "$userland" in
    armhf|armel|i386) die "this is a 32-bit OS ($userland). pi-search needs a 64-bit OS: install Raspberry Pi OS (64-bit)" ;;
  esac
  case "$machine" in
    x86_64|aarch64|arm64) ;;
    armv6l|armv7l|armv8l|i?86) die "this is a 32-bit OS ($machine). pi-search needs a 64-bit OS: install Raspberry Pi OS (64-bit)" ;;
    *) die "unsupported machine $machine: pi-search runs on 64-bit ARM (aarch64) and x86_64" ;;
  esac
}

check_python() {
  command -v "$PYTHON" >/dev/null 2>&1 || die "no Python at '$PYTHON': install python3 (3.$MIN_PY_MINOR or newer) or pass --python PATH"
  local ver major minor
  ver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
    || die "$PYTHON does not run"
  major=${ver%%.*}; minor=${ver#*.}
  if [ "$major" != 3 ] || [ "$minor" -lt "$MIN_PY_MINOR" ] || [ "$minor" -gt "$MAX_PY_MINOR" ]; then
    die "unsupported Python $ver at $PYTHON: pi-search needs Python 3.$MIN_PY_MINOR to 3.$MAX_PY_MINOR (pass --python PATH)"
  fi
  PY_VERSION=$ver
}

check_venv_module() {
  if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    die "$PYTHON cannot create a venv: install python3-venv (sudo apt-get install python3-venv)"
  fi
}

# ------------------------------------------------------------------ apt
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

pkg_available() {
  local cand
  cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
  [ -n "$cand" ] && [ "$cand" != "(none)" ]
}

# ensure_apt PKG...: installs the missing ones (root, Debian) or prints the command.
ensure_apt() {
  local missing=() p
  if ! command -v dpkg-query >/dev/null 2>&1; then
    note "  skip:  not a Debian system; install by hand: $*"
    return 0
  fi
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  if [ ${#missing[@]} -eq 0 ]; then
    ok "Debian packages present: $*"
    return 0
  fi
  if [ "$USE_APT" = 0 ] || ! is_root; then
    note "  todo:  Debian packages missing; as root run: apt-get install -y ${missing[*]}"
    return 0
  fi
  run "apt-get update" apt-get update -qq
  run "apt-get install ${missing[*]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# ------------------------------------------------------------------ venv
SHIPPED_MODEL=efficientnet_lite0_int8.tflite   # setup.py puts it in the package

# A stamp in the venv records what was installed into it; an unchanged stamp means nothing to do.
source_digest() {
  (cd -- "$SRC_DIR" && find pyproject.toml setup.py MANIFEST.in pi_search models/"$SHIPPED_MODEL" -type f \
      -not -path '*/__pycache__/*' -not -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) \
    | sha256sum | cut -d' ' -f1
}

venv_ok() { [ -x "$1/bin/python" ] && "$1/bin/python" -c 'import sys' >/dev/null 2>&1; }

# ensure_venv DIR [venv options...]
ensure_venv() {
  local dir=$1; shift
  if venv_ok "$dir"; then
    ok "venv $dir"
  else
    if [ -e "$dir" ] && [ "$DRY_RUN" = 0 ]; then
      note "  note:  $dir exists but does not run; making it anew"
    fi
    run "create venv $dir ($PYTHON${*:+ $*})" "$PYTHON" -m venv --clear "$@" "$dir"
    VENV_NEW=1
  fi
}

# pip_recent VENV: its pip runs and is at least MIN_PIP.
pip_recent() {
  local ver
  ver=$("$1/bin/python" -m pip --version 2>/dev/null | awk '{print $2}')
  [ -n "$ver" ] && [ "$(printf '%s\n' "$MIN_PIP" "$ver" | sort -V | head -n 1)" = "$MIN_PIP" ]
}

# ensure_project VENV STAMP_TEXT PIP_ARGS...: pip-installs the project unless the stamp matches.
ensure_project() {
  local venv=$1 stamp=$2; shift 2
  local stamp_file=$venv/.pi-search-install
  if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] \
      && "$venv/bin/python" -c 'import pi_search' >/dev/null 2>&1; then
    ok "pi-search installed in $venv (up to date)"
    return 0
  fi
  if [ "$VENV_NEW" = 1 ] || ! pip_recent "$venv"; then
    run "upgrade pip in $venv" "$venv/bin/python" -m pip install --quiet --upgrade pip
  fi
  run "install pi-search and its dependencies into $venv (pip; a few minutes the first time)" \
    "$venv/bin/python" -m pip install --quiet "$@"
  if [ "$DRY_RUN" = 0 ]; then printf '%s\n' "$stamp" > "$stamp_file"; fi
}

# stage_source: sets PKG_SRC, the folder pip builds the package from: a staged copy of what goes into it, so
# that pip's build files (build/, *.egg-info) do not land in the checkout as root's. The checkout itself under
# --dry-run.
stage_source() {
  PKG_SRC=$SRC_DIR
  [ "$DRY_RUN" = 1 ] && return 0
  STAGE=$(mktemp -d "${TMPDIR:-/tmp}/pi-search-src.XXXXXX") || die "cannot create a folder in ${TMPDIR:-/tmp}"
  (cd -- "$SRC_DIR" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml setup.py MANIFEST.in \
      README.md pi_search "models/$SHIPPED_MODEL" models/MODEL_CARD.md) | tar -C "$STAGE" -xf - \
    || die "cannot copy the package's files from $SRC_DIR"
  PKG_SRC=$STAGE
}

# ------------------------------------------------------------------ dev
# lomiri-wallpapers-*: real photos at the size cameras write them (0.3-6.7 MB JPEGs) for the upload tests
DEV_APT=(chromium chromium-driver tuxpaint-stamps-default opencv-doc lomiri-wallpapers-16.04 lomiri-wallpapers-20.04
         jq shellcheck systemd rsync)

install_dev() {
  local venv=$SRC_DIR/.venv extras=dev
  [ "$EXPORT" = 1 ] && extras=dev,export
  note "pi-search development install in $SRC_DIR"
  check_arch
  PYTHON=${PYTHON:-python3}
  check_python
  check_venv_module
  local pkgs=("${DEV_APT[@]}")
  # npm for the tests' axe-core: Debian's package, unless an npm is there already (a Node.js install of its
  # own brings one, and Debian's npm would conflict with it)
  command -v npm >/dev/null 2>&1 || pkgs+=(npm)
  ensure_apt "${pkgs[@]}"
  ensure_venv "$venv"
  ensure_project "$venv" "dev extras=$extras python=$PY_VERSION pyproject=$(sha256sum < "$SRC_DIR/pyproject.toml" | cut -d' ' -f1)" \
    --editable "${SRC_DIR}[$extras]"
  ensure_test_node
  finish
  note "Run the demo:   .venv/bin/pi-search demo"
  if [ "$EXPORT" = 1 ]; then
    note "Run the tests:  .venv/bin/python -m pytest"
  else
    note "Run the tests:  ./install.sh --dev --export && .venv/bin/python -m pytest  (--export: TensorFlow, for the model tests)"
  fi
}

# The browser tests' accessibility checker (axe-core, injected by the tests; the page never loads it), at the
# version tests/node/package-lock.json pins.
ensure_test_node() {
  local dir=$SRC_DIR/tests/node
  [ -f "$dir/package-lock.json" ] || return 0   # a checkout without the tests
  if [ -f "$dir/node_modules/axe-core/axe.min.js" ] \
      && [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
    ok "axe-core in tests/node (up to date)"
    return 0
  fi
  if ! command -v npm >/dev/null 2>&1; then
    note "  todo:  npm missing (apt-get install npm), then run: npm ci --prefix tests/node"
    return 0
  fi
  run "npm ci in tests/node (axe-core for the browser tests)" npm ci --prefix "$dir" --no-audit --no-fund --silent
}

uninstall_dev() {
  note "pi-search development uninstall in $SRC_DIR"
  if [ -e "$SRC_DIR/.venv" ]; then run "remove $SRC_DIR/.venv" rm -rf -- "$SRC_DIR/.venv"; else ok "no .venv"; fi
  if [ -e "$SRC_DIR/tests/node/node_modules" ]; then
    run "remove tests/node/node_modules" rm -rf -- "$SRC_DIR/tests/node/node_modules"
  fi
  finish
}

finish() {
  if [ "$CHANGES" = 0 ]; then
    note "Nothing to change: everything is already in place."
  elif [ "$DRY_RUN" = 1 ]; then
    note "Dry run: $CHANGES change(s) would be made; nothing was changed."
  else
    note "Done: $CHANGES change(s) made."
  fi
}

# ------------------------------------------------------------------ system
OPT=/opt/pi-search
VENV=$OPT/venv
CONF_DIR=/etc/pi-search
CONF=$CONF_DIR/config.toml
STATE=/var/lib/pi-search
UNIT_DIR=/etc/systemd/system
UNIT=pi-search.service
KIOSK_MARK="# pi-search kiosk"

# r PATH: PATH inside --root (the path itself without --root).
r() { printf '%s%s' "$ROOT" "$1"; }

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

# ensure_file SRC DEST MODE: copies when DEST is missing or differs; returns 0 when it changed.
ensure_file() {
  local src=$1 dest=$2 mode=$3
  if [ -f "$dest" ] && cmp -s -- "$src" "$dest"; then
    ok "$dest"
    return 1
  fi
  run "install $dest" install -D -m "$mode" -- "$src" "$dest"
  return 0
}

ensure_dir() {
  local dir=$1 mode=$2 owner=${3:-}
  if [ -d "$dir" ]; then ok "directory $dir"; else run "create directory $dir" install -d -m "$mode" -- "$dir"; fi
  if [ -n "$owner" ] && [ -z "$ROOT" ] && id -u "${owner%%:*}" >/dev/null 2>&1; then
    if [ ! -d "$dir" ] || [ "$(stat -c %U:%G -- "$dir")" != "$owner" ]; then
      run "chown $owner $dir" chown -- "$owner" "$dir"
    fi
  fi
}

ensure_user() {
  if [ -n "$ROOT" ]; then
    note "  skip:  system user $SERVICE_USER (--root sandbox: users are not created)"
    return
  fi
  if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    ok "system user $SERVICE_USER"
  else
    run "create system user $SERVICE_USER (group video)" useradd --system --user-group \
      --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin --groups video "$SERVICE_USER"
  fi
  if [ "$DRY_RUN" = 0 ] || id -u "$SERVICE_USER" >/dev/null 2>&1; then
    if id -u "$SERVICE_USER" >/dev/null 2>&1 && ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx video; then
      run "add $SERVICE_USER to group video" usermod -aG video "$SERVICE_USER"
    fi
  fi
}

system_apt_packages() {
  SYSTEM_APT=(python3 python3-venv python3-dev g++)
  if command -v apt-cache >/dev/null 2>&1 && pkg_available python3-picamera2; then
    SYSTEM_APT+=(python3-picamera2)
  else
    note "  note:  no python3-picamera2 in this system's apt sources (not Raspberry Pi OS): use a USB camera (source = \"opencv:0\") in $CONF"
  fi
  if [ "$KIOSK" = 1 ]; then
    if pkg_available chromium; then SYSTEM_APT+=(chromium); else SYSTEM_APT+=(chromium-browser); fi
  fi
}

# pip must keep the numpy that apt's picamera2 (and its C extensions) were built against.
numpy_constraint() {
  local file=$1 ver
  ver=$("$PYTHON" -c 'import numpy
if numpy.__file__.startswith("/usr/lib/python3/dist-packages/"): print(numpy.__version__)' 2>/dev/null || true)
  if [ -z "$ver" ]; then
    return 1
  fi
  if [ "$DRY_RUN" = 0 ]; then printf 'numpy==%s\n' "$ver" > "$file"; fi
  note "  note:  keeping the system's numpy $ver (apt's picamera2 is built against it)"
  return 0
}

# config_value FILE KEY DEFAULT: the first "KEY = value" of a config file (quotes dropped), else DEFAULT.
config_value() {
  local file=$1 key=$2 value=""
  if [ -f "$file" ]; then
    value=$(sed -n "s/^[[:space:]]*${key}[[:space:]]*=[[:space:]]*\"\{0,1\}\([^\"#]*\)\"\{0,1\}.*/\1/p" "$file" \
      | head -n1 | sed 's/[[:space:]]*$//')
  fi
  printf '%s' "${value:-$3}"
}

kiosk_autostart() {
  local home
  if [ -n "$ROOT" ]; then
    home=/home/$KIOSK_USER
  else
    home=$(getent passwd "$KIOSK_USER" | cut -d: -f6)
  fi
  [ -n "$home" ] || die "--kiosk: no home directory for user '$KIOSK_USER'"
  r "$home/.config/labwc/autostart"
}

append_line() { mkdir -p -- "$(dirname -- "$1")" && printf '%s\n' "$2" >> "$1"; }

ensure_kiosk() {
  [ -n "$KIOSK_USER" ] || die "--kiosk: name the desktop user with --kiosk-user NAME (or run with sudo from it)"
  [ "$KIOSK_USER" != root ] || die "--kiosk: the desktop user cannot be root; pass --kiosk-user NAME"
  if [ -z "$ROOT" ] && ! id -u "$KIOSK_USER" >/dev/null 2>&1; then die "--kiosk: no user '$KIOSK_USER'"; fi
  local file line
  file=$(kiosk_autostart)
  line="$OPT/bin/pi-search-kiosk &  $KIOSK_MARK"
  if [ -f "$file" ] && grep -qF -- "$KIOSK_MARK" "$file"; then
    ok "kiosk entry in $file"
    return
  fi
  if [ "$DRY_RUN" = 1 ]; then
    run "add the kiosk to $file" true
    return
  fi
  run "add the kiosk to $file" append_line "$file" "$line"
  if [ -z "$ROOT" ]; then chown -R "$KIOSK_USER:" "$(dirname "$file")"; fi
}

ensure_unit_enabled() {
  local changed=$1
  if [ "$USE_SYSTEMD" = 0 ]; then
    note "  skip:  systemctl (--no-systemd)"
    return
  fi
  if [ -n "$ROOT" ]; then
    if systemctl --root="$ROOT" is-enabled "$UNIT" >/dev/null 2>&1; then ok "$UNIT enabled in $ROOT"
    else run "enable $UNIT in $ROOT" systemctl --root="$ROOT" --quiet enable "$UNIT"; fi
    return
  fi
  if ! systemd_running; then
    note "  skip:  systemd is not running here; the unit is installed, start it on the Pi"
    return
  fi
  if [ "$changed" = 1 ]; then run "systemctl daemon-reload" systemctl daemon-reload; fi
  if systemctl is-enabled "$UNIT" >/dev/null 2>&1; then ok "$UNIT enabled"
  else run "enable $UNIT" systemctl --quiet enable "$UNIT"; fi
  [ "$START" = 1 ] || return 0
  local bundle
  bundle=$(config_value "$CONF" bundle "")
  if [ -z "$bundle" ] || [ ! -f "$bundle/manifest.json" ]; then
    note "  wait:  $UNIT not started: no bundle at ${bundle:-(none configured)} yet (see Next below)"
    return 0
  fi
  if [ "$changed" = 1 ] && systemctl is-active "$UNIT" >/dev/null 2>&1; then
    run "restart $UNIT (new version)" systemctl restart "$UNIT"
  elif systemctl is-active "$UNIT" >/dev/null 2>&1; then
    ok "$UNIT running"
  else
    run "start $UNIT" systemctl start "$UNIT"
  fi
}

install_system() {
  if [ -z "$ROOT" ] && ! is_root; then
    die "the system install needs root: sudo $0 ${ORIG_ARGS[*]} (or $0 --dev for a development venv)"
  fi
  note "pi-search system install${ROOT:+ into $ROOT}"
  check_arch
  PYTHON=${PYTHON:-/usr/bin/python3}
  system_apt_packages
  ensure_apt "${SYSTEM_APT[@]}"
  check_python
  check_venv_module
  ensure_user
  ensure_dir "$(r "$OPT")" 0755
  ensure_dir "$(r "$CONF_DIR")" 0755
  ensure_dir "$(r "$STATE")" 0750 "$SERVICE_USER:$SERVICE_USER"

  local venv changed=0 pip_args=()
  venv=$(r "$VENV")
  ensure_venv "$venv" --system-site-packages
  if numpy_constraint "$(r "$OPT")/constraints.txt"; then pip_args+=(--constraint "$(r "$OPT")/constraints.txt"); fi
  local before after
  before=$(cat "$venv/.pi-search-install" 2>/dev/null || true)
  stage_source
  ensure_project "$venv" "system python=$PY_VERSION source=$(source_digest)" "${pip_args[@]}" "$PKG_SRC"
  after=$(cat "$venv/.pi-search-install" 2>/dev/null || true)
  [ "$before" = "$after" ] || changed=1

  local m
  for m in "$SRC_DIR"/models/*.tflite; do
    [ -f "$m" ] || continue
    if ensure_file "$m" "$(r "$OPT")/models/${m##*/}" 0644; then changed=1; fi
  done
  ensure_file "$SRC_DIR/systemd/pi-search-kiosk.sh" "$(r "$OPT")/bin/pi-search-kiosk" 0755 || true
  ensure_file "$SRC_DIR/README.md" "$(r "$OPT")/README.md" 0644 || true

  local conf
  conf=$(r "$CONF")
  if [ -f "$conf" ]; then
    ok "$conf kept as it is"
  else
    run "write $conf (from config.example.toml)" install -D -m 0644 -- "$SRC_DIR/config.example.toml" "$conf"
  fi

  if ensure_file "$SRC_DIR/systemd/$UNIT" "$(r "$UNIT_DIR")/$UNIT" 0644; then changed=1; fi
  ensure_unit_enabled "$changed"
  if [ "$KIOSK" = 1 ]; then ensure_kiosk; fi

  finish
  next_steps "$conf"
}

# What to do after the install: build the bundle (unless there is one), start, check, open the page.
next_steps() {
  local conf=$1 port bundle cli=$VENV/bin/pi-search
  port=$(config_value "$conf" port "$PORT")
  bundle=$(config_value "$conf" bundle "$STATE/bundle")
  [ "$DRY_RUN" = 1 ] && return 0
  note ""
  if [ -f "$(r "$bundle")/manifest.json" ]; then
    note "Next: check it, then open the page:"
  else
    note "Next: give it a catalog (your folder of photos, here ~/shop), then start and check the service:"
    note "  sudo cp -r ~/shop $STATE/catalog"
    note "  sudo chown -R $SERVICE_USER:$SERVICE_USER $STATE/catalog"
    note "  sudo -u $SERVICE_USER $cli index build $STATE/catalog --out $bundle"
    note "  sudo systemctl restart pi-search"
  fi
  note "  sudo -u $SERVICE_USER $cli doctor --config $CONF"
  note "Page:     http://127.0.0.1:$port/  (on the Pi itself; see README for opening it to the network)"
  note "Config:   $CONF  (edit, then: sudo systemctl restart pi-search)"
  note "Logs:     journalctl -u pi-search -f"
}

uninstall_system() {
  if [ -z "$ROOT" ] && ! is_root; then die "uninstalling needs root: sudo $0 --uninstall"; fi
  note "pi-search system uninstall${ROOT:+ from $ROOT}"
  local unit_file
  unit_file=$(r "$UNIT_DIR")/$UNIT
  if [ "$USE_SYSTEMD" = 1 ] && [ -n "$ROOT" ] && [ -f "$unit_file" ]; then
    run "disable $UNIT in $ROOT" systemctl --root="$ROOT" --quiet disable "$UNIT"
  elif [ "$USE_SYSTEMD" = 1 ] && systemd_running && [ -f "$unit_file" ]; then
    run "stop and disable $UNIT" systemctl --quiet disable --now "$UNIT"
  fi
  if [ -f "$unit_file" ]; then
    run "remove $unit_file" rm -f -- "$unit_file"
    if [ "$USE_SYSTEMD" = 1 ] && systemd_running; then run "systemctl daemon-reload" systemctl daemon-reload; fi
  else
    ok "no unit file"
  fi
  if [ -n "$KIOSK_USER" ] && [ "$KIOSK_USER" != root ]; then
    local file
    file=$(kiosk_autostart 2>/dev/null || true)
    if [ -n "$file" ] && [ -f "$file" ] && grep -qF -- "$KIOSK_MARK" "$file"; then
      run "remove the kiosk entry from $file" sed -i "\\|$KIOSK_MARK|d" "$file"
    fi
  fi
  if [ -e "$(r "$OPT")" ]; then run "remove $(r "$OPT") (venv, models)" rm -rf -- "$(r "$OPT")"; else ok "no $(r "$OPT")"; fi
  if [ "$PURGE" = 1 ]; then
    if [ -e "$(r "$CONF_DIR")" ]; then run "remove $(r "$CONF_DIR")" rm -rf -- "$(r "$CONF_DIR")"; fi
    if [ -e "$(r "$STATE")" ]; then run "remove $(r "$STATE") (bundles)" rm -rf -- "$(r "$STATE")"; fi
    if [ -d "$unit_file.d" ]; then
      run "remove $unit_file.d (local changes to the unit)" rm -rf -- "$unit_file.d"
      if [ "$USE_SYSTEMD" = 1 ] && systemd_running; then run "systemctl daemon-reload" systemctl daemon-reload; fi
    fi
    if [ -z "$ROOT" ] && id -u "$SERVICE_USER" >/dev/null 2>&1; then
      run "remove system user $SERVICE_USER" userdel "$SERVICE_USER"
    fi
  else
    note "  kept:  $(r "$CONF_DIR") and $(r "$STATE") (config and bundles; --purge removes them)"
  fi
  finish
}

# ------------------------------------------------------------------ main
main() {
  if [ "$MODE" = dev ]; then
    if [ "$UNINSTALL" = 1 ]; then uninstall_dev; else install_dev; fi
    return
  fi
  if [ "$UNINSTALL" = 1 ]; then uninstall_system; else install_system; fi
}

main
