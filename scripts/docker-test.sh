#!/usr/bin/env bash
# The docker-compose test stack, end to end (issue #15; see docker/README.md):
#   installs docker.io, docker-compose and debootstrap when missing and starts dockerd when
#   it is not running; builds a local base image rst-base:bookworm with debootstrap (no
#   registry needed; reused when present); builds the receiver, tap, sipp and check images;
#   then
#   1. receiver + tap + sipp (always): sipp calls a sipp UAS, tap_daemon in the UAS's
#      network namespace records the calls, the check verifies every call's record
#      (Call-ID, parties, both directions' audio present and not silent);
#   2. FreeSWITCH (when FREESWITCH_SRC is set): FreeSWITCH 1.10.12 built from source with
#      mod_rst; sipp calls it, mod_rst and the tap both record every call, and the check
#      compares the two recordings of each call. FREESWITCH_SRC is a folder holding
#      freeswitch/ (v1.10.12), sofia-sip/ (v1.13.17) and spandsp/ (0d2e6ac), or "clone"
#      to clone them inside the image build (internet needed). Or FREESWITCH_IMAGE: an
#      existing FreeSWITCH image of yours to add mod_rst to (FS_PREFIX: where FreeSWITCH
#      is in it, /opt/freeswitch). Otherwise: SKIPPED.
#   Everything it started is stopped and removed on exit (images are kept for the next run).
# Environment: CALLS (20), RATE (5 a second), RST_PROFILE (dev: reuses `cargo test --workspace`'s
#   build; or release), RST_METRICS_PORT / RST_FEED_PORT (29528 / 29529 on 127.0.0.1),
#   DEBIAN_MIRROR (the mirror apt uses), KEEP_BASE_DIR (keep debootstrap's folder),
#   RST_BASE (the local base image's name, rst-base:bookworm).
# Must run as root (docker, debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$SECONDS
export CALLS="${CALLS:-20}" RATE="${RATE:-5}"
export RST_BASE="${RST_BASE:-rst-base:bookworm}" RST_TAG=test
export RST_BIND=127.0.0.1 RST_METRICS_PORT="${RST_METRICS_PORT:-29528}" RST_FEED_PORT="${RST_FEED_PORT:-29529}"
export COMPOSE_PROJECT_NAME=rsttest COMPOSE_FILE="$ROOT/docker/compose.yml"
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0   # the classic builder: no buildx needed
BUILD="$ROOT/docker/.build"
LOG="$BUILD/logs"
STEP="start"; HINT=""; STEPLOG=""; DOCKERD_PID=""; DC=()

say() { printf '== [%4ss] %s\n' "$((SECONDS - T0))" "$*"; }
# step TITLE HINT [LOG]: LOG is where the step's commands write; its end is shown on failure.
step() { STEP="$1"; HINT="$2"; STEPLOG="${3:-}"; say "$1"; }

cleanup() {
  local rc=$?
  set +e
  if [ "$rc" -ne 0 ]; then
    echo "FAILED at: $STEP"
    [ -n "$HINT" ] && echo "next: $HINT"
    if [ -n "$STEPLOG" ] && [ -s "$STEPLOG" ]; then
      echo "--- the end of $STEPLOG:"
      tail -n 15 "$STEPLOG"
    fi
    if [ ${#DC[@]} -gt 0 ] && docker info >/dev/null 2>&1; then
      echo "--- last lines of the stack's logs:"
      COMPOSE_PROFILES=sipp,freeswitch "${DC[@]}" logs --no-color --tail 30 2>/dev/null | tail -80
    fi
    echo "logs: $LOG"
  fi
  if [ ${#DC[@]} -gt 0 ] && docker info >/dev/null 2>&1; then
    COMPOSE_PROFILES=sipp,freeswitch "${DC[@]}" down -v --remove-orphans -t 5 >/dev/null 2>&1
  fi
  if [ -n "$DOCKERD_PID" ]; then
    say "stopping the dockerd this script started (pid $DOCKERD_PID)"
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || { echo "docker-test.sh: run as root (docker and debootstrap need it)"; exit 1; }
mkdir -p "$LOG"

# --- tools -------------------------------------------------------------------------------
step "tools: docker.io, docker-compose, debootstrap" \
  "apt-get install docker.io docker-compose debootstrap by hand and read its error"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
{ docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; } || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$LOG/apt.log" 2>&1
fi
if ! docker info >/dev/null 2>&1; then
  step "starting dockerd" "dockerd needs root, cgroups and overlay2 (or vfs)" "$LOG/dockerd.log"
  dockerd >"$LOG/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1
fi
if docker compose version >/dev/null 2>&1; then DC=(docker compose); else DC=(docker-compose); fi
say "engine $(docker version -f '{{.Server.Version}}'), compose: ${DC[*]} $("${DC[@]}" version --short 2>/dev/null)"

# --- the local base image ----------------------------------------------------------------
if docker image inspect "$RST_BASE" >/dev/null 2>&1; then
  say "base image $RST_BASE: present, reused"
else
  mirror="${DEBIAN_MIRROR:-$( (grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list; \
           grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources) | grep -v security | \
           grep -o 'https\?://[^ ]*' | head -1)}"
  mirror="${mirror:-http://deb.debian.org/debian}"
  step "base image $RST_BASE: debootstrap --variant=minbase bookworm from $mirror (about 30-60 s)" \
    "check that $mirror answers (apt-get update), then read $LOG/debootstrap.log" "$LOG/debootstrap.log"
  dir="$(mktemp -d /var/tmp/rst-base.XXXXXX)"
  debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$LOG/debootstrap.log" 2>&1
  tar -C "$dir" -c . | docker import - "$RST_BASE" >/dev/null
  [ -n "${KEEP_BASE_DIR:-}" ] || rm -rf "$dir"
fi

# --- the binaries -------------------------------------------------------------------------
profile="${RST_PROFILE:-dev}"; pdir=debug; [ "$profile" = dev ] || pdir="$profile"
tdir="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ "$profile" = dev ]; then
  # The binaries exactly as `cargo test --workspace` builds them: a no-op after the test
  # command (scripts/test.sh), where `cargo build -p udp_server -p tap_daemon` resolves a
  # narrower feature set and rebuilds dozens of dependencies (about a minute of CI). Run
  # alone, this builds the tests too; RST_PROFILE=release builds only the two binaries.
  step "cargo test --workspace --no-run (the binaries as the tests build them)" \
    "run bash scripts/setup.sh (build dependencies), then cargo test --workspace --no-run"
  cargo test --quiet --workspace --no-run
else
  step "cargo build --profile $profile -p udp_server -p tap_daemon" \
    "run bash scripts/setup.sh (build dependencies), then cargo build -p udp_server -p tap_daemon"
  cargo build --quiet --profile "$profile" -p udp_server -p tap_daemon
fi
rm -rf "$BUILD/bin"; mkdir -p "$BUILD/bin"
for b in udp_server tap_daemon; do objcopy --strip-debug "$tdir/$pdir/$b" "$BUILD/bin/$b"; done
cp conf/udp_server.toml docker/tap-entrypoint.sh docker/receiver-entrypoint.sh "$BUILD/bin/"

# --- FreeSWITCH's context -----------------------------------------------------------------
# docker-compose 1.29 checks every service's build context, even for services it is not
# asked to build: FreeSWITCH's must exist (empty) when FreeSWITCH is not part of the run.
mkdir -p "$BUILD/freeswitch"
FS=""
if [ -n "${FREESWITCH_SRC:-}" ] || [ -n "${FREESWITCH_IMAGE:-}" ]; then
  step "FreeSWITCH: cargo build -p mod_rst and the image's context" \
    "FREESWITCH_SRC must be 'clone' or a folder with freeswitch/, sofia-sip/ and spandsp/"
  cargo build --quiet --profile "$profile" -p mod_rst
  fsctx="$BUILD/freeswitch"
  mkdir -p "$fsctx/src"
  objcopy --strip-debug "$tdir/$pdir/libmod_rst.so" "$fsctx/mod_rst.so"
  cp conf/autoload_configs/rst.conf.xml docker/freeswitch/rst_dialplan.xml docker/freeswitch/entrypoint.sh "$fsctx/"
  if [ -n "${FREESWITCH_IMAGE:-}" ]; then
    say "FreeSWITCH: mod_rst added to your image $FREESWITCH_IMAGE (Dockerfile.freeswitch-image)"
    export RST_FREESWITCH_DOCKERFILE=Dockerfile.freeswitch-image FREESWITCH_IMAGE
    mkdir -p "$fsctx/src"
  elif [ "$FREESWITCH_SRC" != clone ]; then
    for d in freeswitch sofia-sip spandsp; do
      [ -d "$FREESWITCH_SRC/$d" ] || { echo "no $FREESWITCH_SRC/$d"; exit 1; }
      # the sources only: what an earlier build left there is not needed
      if [ ! -e "$fsctx/.copied-$d" ]; then
        rm -rf "${fsctx:?}/src/$d"
        tar -C "$FREESWITCH_SRC" -c --exclude='*.o' --exclude='*.lo' --exclude='*.la' --exclude='*.a' \
          --exclude='.libs' --exclude='*.so' "$d" | tar -C "$fsctx/src" -x
        touch "$fsctx/.copied-$d"
      fi
    done
  else
    rm -rf "$fsctx/src" "$fsctx"/.copied-*; mkdir -p "$fsctx/src"; touch -d @0 "$fsctx/src/.none"
  fi
  FS=1
fi

# --- images -------------------------------------------------------------------------------
step "images: receiver, tap, sipp, check (on $RST_BASE)" \
  "read $LOG/build-sipp.log; apt inside the build needs the Debian mirror" "$LOG/build-sipp.log"
"${DC[@]}" --profile sipp build >"$LOG/build-sipp.log" 2>&1
if [ -n "$FS" ]; then
  step "image: FreeSWITCH 1.10.12 with mod_rst (the first time about 8-15 minutes: it compiles FreeSWITCH)" \
    "read $LOG/build-freeswitch.log (the recipe is the project's FREESWITCH.md)" "$LOG/build-freeswitch.log"
  "${DC[@]}" --profile freeswitch build freeswitch >"$LOG/build-freeswitch.log" 2>&1
fi

# The console is published too: checked with a token of this run's.
export RST_HTTP_TOKEN="${RST_HTTP_TOKEN:-rst-docker-test-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')}"
console() {
  local code
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $RST_HTTP_TOKEN" \
    "http://127.0.0.1:$RST_METRICS_PORT/console/api/recordings" 2>/dev/null)"
  [ "$code" = 200 ] && echo "console: answers on 127.0.0.1:$RST_METRICS_PORT/console/" \
    || echo "console: HTTP $code"
}
metrics() { curl -fsS "http://127.0.0.1:$RST_METRICS_PORT/metrics" 2>/dev/null | \
  grep -E "^rst_(calls_started_total|calls_ended_total\{[^}]*\}|rtp_packets_total|datagrams_total) " | tr '\n' ' '; }

run_part() { # profile target tap sipp check
  local p="$1" target="$2" tap="$3" sipp="$4" check="$5"
  export COMPOSE_PROFILES="$p"
  "${DC[@]}" down -v --remove-orphans -t 5 >/dev/null 2>&1 || true   # a clean start: no old recordings
  step "$p: up receiver, $target, $tap" \
    "a port taken? RST_METRICS_PORT / RST_FEED_PORT choose others; ${DC[*]} --profile $p up reproduces it" \
    "$LOG/up-$p.log"
  if [ "$target" = freeswitch ]; then
    "${DC[@]}" up -d receiver freeswitch >"$LOG/up-$p.log" 2>&1
    for _ in $(seq 90); do
      [ "$(docker inspect -f '{{.State.Health.Status}}' "$("${DC[@]}" ps -q freeswitch)")" = healthy ] && break
      sleep 1
    done
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$("${DC[@]}" ps -q freeswitch)")" = healthy ]
    "${DC[@]}" up -d --no-deps "$tap" >>"$LOG/up-$p.log" 2>&1
  else
    "${DC[@]}" up -d receiver "$target" "$tap" >"$LOG/up-$p.log" 2>&1
  fi
  for _ in $(seq 30); do "${DC[@]}" logs --no-color "$tap" 2>&1 | grep -qi 'capturing' && break; sleep 0.5; done
  sleep 2   # the capture opens after the log line
  step "$p: $CALLS calls, $RATE a second" \
    "sipp's errors are in the shared volume: the logs below show why the peer did not answer"
  timeout 180 "${DC[@]}" run --rm --no-deps "$sipp" 2>&1 | tee "$LOG/sipp-$p.log" | sed 's/^/   /'
  step "$p: check" "each FAIL line names the call and what was wrong; the stack's logs follow"
  local args=(--expect "$CALLS")
  [ "$target" = freeswitch ] && args+=(--module)
  local rc=0
  "${DC[@]}" run --rm --no-deps "$check" "${args[@]}" 2>&1 | tee "$LOG/check-$p.log" | sed 's/^/   /' || rc=$?
  say "$p: receiver metrics: $(metrics)"
  local c; c="$(console)"; say "$p: $c"
  case "$c" in *answers*) ;; *) step "$p: the console on the host" \
    "the receiver's log (below) says why its HTTP port refused the token" ""; return 1 ;; esac
  [ "$rc" -eq 0 ] || return "$rc"   # the stack stays up for the logs; cleanup removes it
  "${DC[@]}" down -v --remove-orphans -t 5 >/dev/null 2>&1
}

run_part sipp uas tap-uas sipp-uas check-uas
if [ -n "$FS" ]; then
  run_part freeswitch freeswitch tap sipp check
else
  say "FreeSWITCH part: SKIPPED: neither FREESWITCH_SRC (a folder with freeswitch/, sofia-sip/, spandsp/ as in FREESWITCH.md, or 'clone' with internet) nor FREESWITCH_IMAGE (an image of your own) is set"
fi
say "docker stack: all checks passed"
