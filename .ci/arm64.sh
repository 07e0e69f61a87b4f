#!/usr/bin/env bash
# Checks pi-search on 64-bit ARM under emulation: Debian Bookworm (Python 3.11) and Trixie (Python 3.13) roots,
# this checkout's install.sh --dev inside each, then a smoke subset of the tests there.
#
#   sudo .ci/arm64.sh                      both roots
#   sudo .ci/arm64.sh --suite bookworm     one root
#
# Roots and the emulator are kept in --cache (default /var/cache/pi-search-arm64) and reused by later runs.
# When the emulation itself cannot be set up (not root, no binfmt_misc, no mirror), a root is reported as
# SKIPPED with the reason and the script exits 0; a failing install or test exits 1.
set -euo pipefail

SRC_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
PROG=.ci/arm64.sh
CACHE=${PI_SEARCH_ARM64_CACHE:-/var/cache/pi-search-arm64}
SUITES=(bookworm trixie)
MIRROR=${PI_SEARCH_DEBIAN_MIRROR:-}
BINFMT_NAME=pi-search-aarch64
BINFMT_DIR=/proc/sys/fs/binfmt_misc
# Debian 12's qemu 7.2 crashes the LiteRT interpreter in allocate_tensors(); 8 and later run it.
MIN_QEMU_MAJOR=8
# The emulated CPU: a Raspberry Pi 4's Cortex-A72. QEMU's default ("max") offers SME, whose OpenBLAS kernels
# give wrong float32 products under emulation; a real Pi's core has no SME either.
QEMU_CPU=${PI_SEARCH_QEMU_CPU:-cortex-a72}
export QEMU_CPU
# The smoke subset (emulation runs Python some 50 times slower): the extractor on LiteRT, a bundle built and
# queried with Annoy, the CLI's query --json, the Flask routes, config and notify. Selected by test name.
SMOKE_FILES=(tests/test_extractor.py tests/test_index.py tests/test_query_cli.py tests/test_web.py
             tests/test_config.py tests/test_notify.py)
SMOKE_SELECT="tensor_contract or unit_length or held_out or ranks_it_first or rerank_agrees \
or query_json_contract or only_json_on_stdout or results_json_shape or upload_answers or healthz \
or thumbnails_by_id or prometheus or test_config or test_notify"

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  cat <<EOF

Options:
  --suite NAME   bookworm or trixie (repeatable; default: both)
  --cache DIR    where roots and the emulator are kept (default: $CACHE)
  --mirror URL   Debian mirror (default: the first one in /etc/apt/sources.list*)
  --fresh        build the roots anew
EOF
}

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

declare -A RESULT=() SECONDS_TAKEN=()
SKIP_REASON=""

skip() { SKIP_REASON=$*; return 1; }

# ------------------------------------------------------------------ host set-up
ensure_host_tools() {
  [ "$(id -u)" = 0 ] || skip "needs root (debootstrap, chroot, binfmt_misc)"
  [ "$(uname -m)" = x86_64 ] || [ "$(uname -m)" = aarch64 ] || skip "host $(uname -m) is not supported"
  local missing=()
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
  if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || skip "missing ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; } \
      || skip "cannot install ${missing[*]} with apt-get"
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

qemu_major() { "$1" --version 2>/dev/null | sed -n 's/.*version \([0-9]\{1,\}\)\..*/\1/p' | head -n1; }

# A qemu-aarch64 of version 8 or later: the host's if new enough, else Debian Trixie's static build.
ensure_qemu() {
  QEMU=$CACHE/qemu/qemu-aarch64
  local c major
  # Static builds only: the chroot has no x86 libraries. (Trixie's qemu-user is built static.)
  for c in "$QEMU" /usr/bin/qemu-aarch64-static; do
    [ -x "$c" ] || continue
    major=$(qemu_major "$c")
    if [ -n "$major" ] && [ "$major" -ge "$MIN_QEMU_MAJOR" ]; then
      QEMU=$c
      log "emulator: $c (qemu $major)"
      return 0
    fi
  done
  log "fetching a static qemu-aarch64 >= $MIN_QEMU_MAJOR (Debian trixie's qemu-user) from $MIRROR"
  local apt_dir=$CACHE/qemu/apt
  rm -rf "$apt_dir"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/deb"
  printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' "$MIRROR" \
    > "$apt_dir/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir" -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update -qq >"$apt_dir/update.log" 2>&1 || skip "mirror $MIRROR unreachable for trixie"
  (cd "$apt_dir/deb" && apt-get "${opts[@]}" download qemu-user >"$apt_dir/download.log" 2>&1) \
    || skip "cannot download qemu-user from $MIRROR"
  dpkg-deb -x "$apt_dir"/deb/qemu-user_*.deb "$apt_dir/x"
  [ -x "$apt_dir/x/usr/bin/qemu-aarch64" ] || skip "qemu-user from $MIRROR has no usr/bin/qemu-aarch64"
  install -m 0755 "$apt_dir/x/usr/bin/qemu-aarch64" "$QEMU"
  rm -rf "$apt_dir"
  log "emulator: $QEMU (qemu $(qemu_major "$QEMU"))"
}

DISABLED_ENTRIES=()

restore_binfmt() {
  local e
  for e in "${DISABLED_ENTRIES[@]}"; do
    if [ -f "$BINFMT_DIR/$e" ]; then echo 1 > "$BINFMT_DIR/$e" 2>/dev/null || true; fi
  done
  if [ -f "$BINFMT_DIR/$BINFMT_NAME" ]; then echo -1 > "$BINFMT_DIR/$BINFMT_NAME" 2>/dev/null || true; fi
}

# Registers our emulator for aarch64 ELF files with the F flag (opened now, so it works inside a chroot) and
# turns other aarch64 entries off for the run (restored on exit).
ensure_binfmt() {
  if [ ! -e "$BINFMT_DIR/register" ]; then
    mount -t binfmt_misc binfmt_misc "$BINFMT_DIR" 2>/dev/null \
      || skip "no binfmt_misc support (cannot mount $BINFMT_DIR; a container needs it from the host)"
  fi
  [ -w "$BINFMT_DIR/register" ] || skip "$BINFMT_DIR/register is not writable"
  local f
  for f in "$BINFMT_DIR"/*; do
    case "${f##*/}" in register|status|"$BINFMT_NAME") continue ;; esac
    if grep -q '^enabled' "$f" 2>/dev/null && grep -q '^magic 7f454c460201010000000000000000000200b700' "$f"; then
      echo 0 > "$f"
      DISABLED_ENTRIES+=("${f##*/}")
    fi
  done
  [ -f "$BINFMT_DIR/$BINFMT_NAME" ] && echo -1 > "$BINFMT_DIR/$BINFMT_NAME"
  printf ':%s:M::\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:%s:FP' \
    "$BINFMT_NAME" "$QEMU" > "$BINFMT_DIR/register" 2>/dev/null || skip "cannot register $QEMU with binfmt_misc"
}

# ------------------------------------------------------------------ roots
ensure_root() {
  local suite=$1 root=$CACHE/$1
  if [ "$FRESH" = 1 ] && [ -d "$root" ]; then rm -rf --one-file-system "$root"; fi
  if [ -f "$root/.pi-search-root" ]; then
    log "$suite: reusing $root"
  else
    rm -rf --one-file-system "$root"
    mkdir -p "$CACHE"
    log "$suite: debootstrap arm64 from $MIRROR (a few minutes under emulation)"
    if ! debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-pip,python3-dev,g++,ca-certificates \
        "$suite" "$root" "$MIRROR" > "$CACHE/$suite-debootstrap.log" 2>&1; then
      tail -n 5 "$CACHE/$suite-debootstrap.log" >&2
      rm -rf --one-file-system "$root"
      skip "debootstrap $suite failed (mirror $MIRROR; log $CACHE/$suite-debootstrap.log)"
    fi
    touch "$root/.pi-search-root"
  fi
  chroot "$root" /bin/true 2>/dev/null || skip "$suite: the emulator does not run aarch64 programs"
}

# The project, fresh each run; the venv of a previous run is kept (install.sh reuses it when unchanged).
copy_project() {
  local root=$1
  mkdir -p "$root/src"
  find "$root/src" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
  tar -C "$SRC_DIR" --exclude=./.venv --exclude=./.git --exclude='__pycache__' --exclude='*.egg-info' \
      --exclude=./.pytest_cache --exclude=./.ruff_cache -cf - . | tar -C "$root/src" -xf -
}

# Runs inside a private mount namespace: bind what pip and the tests need, then the steps in the chroot.
inner() {
  local suite=$1 root=$2 p
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  mount --rbind /sys "$root/sys"
  # bind_ro PATH: the host's PATH, read-only at the same place in the root (created there if missing).
  bind_ro() {
    [ -e "$1" ] || return 0
    if [ -d "$1" ]; then
      mkdir -p "$root$1"
    else
      mkdir -p "$(dirname "$root$1")"
      [ -e "$root$1" ] || [ -L "$root$1" ] || touch "$root$1"
      if [ -L "$root$1" ]; then rm -f "$root$1"; touch "$root$1"; fi
    fi
    mount --bind "$1" "$root$1" && mount -o remount,bind,ro "$root$1"
  }
  bind_ro /etc/resolv.conf
  bind_ro /etc/hosts
  # pip must see the host's configuration, CA certificates and local package folders.
  bind_ro /etc/pip.conf
  bind_ro /etc/xdg/pip
  bind_ro /etc/ssl/certs/ca-certificates.crt
  for p in $(pip_local_dirs); do bind_ro "$p"; done
  # Real photos used by the tests (architecture-independent data from the host's Debian packages).
  bind_ro /usr/share/doc/opencv-doc/examples/data
  bind_ro /usr/share/tuxpaint/stamps

  # One BLAS thread: spinning worker threads are very slow under emulation.
  local env=(HOME=/root LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin PIP_NO_COMPILE=1
             PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
             "QEMU_CPU=$QEMU_CPU")
  local v
  for v in $(compgen -e); do
    case "$v" in PIP_*|http_proxy|https_proxy|no_proxy|HTTP_PROXY|HTTPS_PROXY|NO_PROXY) env+=("$v=${!v}") ;; esac
  done
  chroot "$root" /usr/bin/env -i "${env[@]}" /bin/bash -euo pipefail -c "$(chroot_steps "$suite")"
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

chroot_steps() {
  local suite=$1
  cat <<EOF
cd /src
echo "== \$(python3 --version) on \$(uname -m) (emulated $QEMU_CPU), $suite"
t0=\$(date +%s)
./install.sh --dev --no-apt
t1=\$(date +%s); echo "== install.sh --dev: \$((t1 - t0)) s"
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=5 -m "not slow and not browser" \
  -k "$SMOKE_SELECT" ${SMOKE_FILES[*]}
t2=\$(date +%s); echo "== smoke tests: \$((t2 - t1)) s"
.venv/bin/python .ci/runtime_parity.py --runtime ai_edge_litert --save /tmp/litert.npz
EOF
  if [ "$suite" = bookworm ]; then
    cat <<'EOF'
# tflite-runtime 2.14 (the last release; cp311 aarch64 only) with numpy<2, as the fallback runtime.
[ -x /opt/tflite-venv/bin/python ] || python3 -m venv /opt/tflite-venv
/opt/tflite-venv/bin/python -m pip install -q "numpy<2" "tflite-runtime==2.14.0"
PYTHONPATH=/src /opt/tflite-venv/bin/python .ci/runtime_parity.py --runtime tflite_runtime --compare /tmp/litert.npz
t3=$(date +%s); echo "== tflite-runtime fallback: $((t3 - t2)) s"
EOF
  fi
}

run_suite() {
  local suite=$1 root=$CACHE/$1 start=$SECONDS
  SKIP_REASON=""
  if ! ensure_root "$suite"; then
    RESULT[$suite]="SKIPPED ($SKIP_REASON)"
    SECONDS_TAKEN[$suite]=$((SECONDS - start))
    return 0
  fi
  copy_project "$root"
  log "$suite: install.sh --dev and the smoke tests inside the arm64 root"
  if unshare --mount --propagation private "$0" --inner "$suite" "$root" 2>&1 | tee "$CACHE/$suite-run.log"; then
    RESULT[$suite]=PASSED
  else
    RESULT[$suite]="FAILED (log: $CACHE/$suite-run.log)"
  fi
  SECONDS_TAKEN[$suite]=$((SECONDS - start))
}

parse_args() {
  FRESH=0
  chosen=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --suite) [ $# -ge 2 ] || { usage >&2; exit 2; }; chosen+=("$2"); shift ;;
      --cache) [ $# -ge 2 ] || { usage >&2; exit 2; }; CACHE=$2; shift ;;
      --mirror) [ $# -ge 2 ] || { usage >&2; exit 2; }; MIRROR=$2; shift ;;
      --fresh) FRESH=1 ;;
      -h|--help) usage; exit 0 ;;
      *) echo "$PROG: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
  done
  [ ${#chosen[@]} -eq 0 ] || SUITES=("${chosen[@]}")
  for s in "${SUITES[@]}"; do
    case "$s" in bookworm|trixie) ;; *) echo "$PROG: unknown suite $s (bookworm or trixie)" >&2; exit 2 ;; esac
  done
}

main() {
  local s failed=0
  mkdir -p "$CACHE" 2>/dev/null || true
  trap restore_binfmt EXIT
  if ensure_host_tools && find_mirror && ensure_qemu && ensure_binfmt; then
    for s in "${SUITES[@]}"; do run_suite "$s"; done
  else
    for s in "${SUITES[@]}"; do RESULT[$s]="SKIPPED ($SKIP_REASON)"; SECONDS_TAKEN[$s]=0; done
  fi
  echo
  echo "arm64 summary"
  for s in "${SUITES[@]}"; do
    printf '  %-9s %-8s %5d s\n' "$s" "${RESULT[$s]%% *}" "${SECONDS_TAKEN[$s]}"
    case "${RESULT[$s]}" in FAILED*) failed=1 ;; esac
    case "${RESULT[$s]}" in PASSED) ;; *) printf '            %s\n' "${RESULT[$s]#* }" ;; esac
  done
  return "$failed"
}

if [ "${1:-}" = --inner ]; then
  shift
  inner "$@"
  exit $?
fi
parse_args "$@"
main
