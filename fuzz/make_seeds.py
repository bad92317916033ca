#!/usr/bin/env python3
"""Writes seed inputs for the tap_daemon fuzz targets from the shared captures.

    python3 fuzz/make_seeds.py [CAPTURE_DIR]     # default ../shared/captures

Needs tshark and editcap (wireshark-common). Writes:

* seeds/decode_packets/: captures turned into `fuzz_frames` records (a
  link-type selector byte, then per frame a time step in ms, a two-byte
  big-endian length and the frame), cut to a few KiB: the first frames of
  each capture, and its SIP frames.
* seeds/parse_sip/: SIP messages tshark finds (two split-point bytes, then
  the message), and the TCP payloads of SIP over TCP (several messages, or
  part of one, per segment).
* seeds/parse_rtp/: a few RTP packets of each payload type, telephone-events
  included.
"""
import hashlib
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CAPTURES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "shared", "captures")
SEEDS = os.path.join(HERE, "seeds")
# fuzz_frames' link table: ETHERNET, RAW, LINUX_SLL, LINUX_SLL2, NULL, LOOP, IPV4, IPV6.
SELECTOR = {1: 0, 101: 1, 113: 2, 276: 3, 0: 4, 108: 5, 228: 6, 229: 7}
MAX_SEED = 12 * 1024
# AGPL-3.0 test data (heplify): kept out of this GPL-3.0-or-later repository.
EXCLUDE = {"erspan_sip_ipv4_udp.pcapng", "ipip0.pcap"}


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:10]
    with open(os.path.join(d, f"{name}-{digest}"), "wb") as f:
        f.write(data)


def read_pcap(path):
    """(link type, [(time, frame)]) of a capture, pcapng converted by editcap."""
    with tempfile.NamedTemporaryFile(suffix=".pcap") as tmp:
        subprocess.run(["editcap", "-F", "pcap", path, tmp.name], check=True, capture_output=True)
        data = open(tmp.name, "rb").read()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    link = struct.unpack(endian + "I", data[20:24])[0] & 0x0FFFFFFF
    frames, off = [], 24
    while off + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(endian + "IIII", data[off : off + 16])
        off += 16
        frames.append((sec + frac / (1e9 if nano else 1e6), data[off : off + incl]))
        off += incl
    return link, frames


def records(selector, frames):
    out = bytearray([selector])
    last = frames[0][0] if frames else 0
    for t, frame in frames:
        if len(out) + 3 + len(frame) > MAX_SEED:
            break
        out += bytes([max(0, min(254, int((t - last) * 1000)))]) + struct.pack(">H", len(frame)) + frame
        last = t
    return bytes(out)


def tshark(path, *args):
    return subprocess.run(["tshark", "-n", "-r", path, *args], check=True, capture_output=True, text=True).stdout.split("\n")


def main():
    files = sorted(f for f in os.listdir(CAPTURES) if not f.endswith(".md") and f not in EXCLUDE)
    for name in files:
        path = os.path.join(CAPTURES, name)
        stem = name.rsplit(".", 1)[0][:40]
        try:
            link, frames = read_pcap(path)
        except subprocess.CalledProcessError:
            continue
        if link in SELECTOR and frames:
            write("decode_packets", stem + "-head", records(SELECTOR[link], frames))
            sip = [f for f in frames if b"SIP/2.0" in f[1]]
            if sip:
                write("decode_packets", stem + "-sip", records(SELECTOR[link], sip))
        # SIP messages, one per datagram or reassembled message.
        seen = {}
        for line in tshark(path, "-Y", "sip", "-T", "fields", "-e", "sip.Method", "-e", "sip.Status-Code", "-e", "udp.payload", "-e", "tcp.payload"):
            fields = line.split("\t")
            if len(fields) < 4:
                continue
            kind = fields[0] or fields[1]
            if seen.get(kind, 0) >= 2:
                continue
            payload = bytes.fromhex((fields[2] or fields[3]).replace(":", "").split(",")[0])
            if payload:
                split = len(payload) // 2
                write("parse_sip", f"{stem}-{kind}", struct.pack(">H", split) + payload)
                seen[kind] = seen.get(kind, 0) + 1
        # RTP: a few of each payload type, events too.
        per_pt = {}
        for line in tshark(path, "-o", "rtp.heuristic_rtp:TRUE", "-Y", "rtp && !icmp", "-T", "fields", "-e", "rtp.p_type", "-e", "udp.payload"):
            fields = line.split("\t")
            if len(fields) < 2 or not fields[1]:
                continue
            pt = fields[0]
            if per_pt.get(pt, 0) >= 2:
                continue
            per_pt[pt] = per_pt.get(pt, 0) + 1
            write("parse_rtp", f"{stem}-pt{pt}", bytes.fromhex(fields[1].replace(":", "")))


if __name__ == "__main__":
    main()
