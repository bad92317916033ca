#!/usr/bin/env python3
"""The stack's check: every call sipp placed was recorded, and (with FreeSWITCH) the
module's and the tap's recordings of each call agree.

Reads /shared/calls.log ("CALL <caller> <Call-ID>" per answered call, written by sipp)
and the receiver's records (/recordings/<day>/<uuid>.json and their WAV files).
A record with a Call-ID came from the tap (RTP mode, UUIDv5 of the Call-ID); one without
from mod_rst (FreeSWITCH's UUID). Calls are paired by caller number, unique per call.

For every call:
  tap:    a record whose call_id is the call's, caller and callee right (9000), both
          directions' audio present (>= 3 s) and not silent (RMS above -40 dBFS)
  module: (--module) a record with the call's caller, the same audio checks, and the
          comparison: the module's R (what FreeSWITCH read: sipp's speech) against the
          tap's R (the same speech off the wire), and W (the tone FreeSWITCH played)
          against the tap's W: cross-correlation peak >= 0.9 (same audio) at an offset
          within 1 s, the same offset for R and W within 100 ms (aligned).
Prints one line per call, then "N passed, M failed"; exits 1 on any failure.
"""
import argparse, glob, json, math, os, sys, time, wave
import numpy as np

# R and W of the module against R and W of the tap: one offset for both, within this.
# FreeSWITCH reads R through its jitter buffer, so a skew of a packet or two is expected
# (60 ms, two 30 ms packets, on the project's machine).
ALIGN_MS = 100

def rd_wav(path):
    with wave.open(path, "rb") as w:
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    return rate, data

def dbfs(x):
    if len(x) == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(x * x)))
    return 20 * math.log10(rms / 32768) if rms > 0 else -math.inf

def direction(rec, d):
    """(rate, samples) of one direction's first WAV, or None."""
    dd = (rec.get("directions") or {}).get(d) or {}
    wavs = dd.get("wav") or []
    if not wavs:
        return None
    path = wavs[0]
    if not os.path.exists(path):  # records name absolute paths inside the receiver
        path = os.path.join(os.path.dirname(rec["_file"]), os.path.basename(path))
    return rd_wav(path)

def audio_problems(rec, who, notes):
    out = []
    for d in ("R", "W"):
        a = direction(rec, d)
        if a is None:
            out.append(f"{who} {d}: no audio")
            continue
        rate, x = a
        secs, level = len(x) / rate, dbfs(x)
        notes.append(f"{who} {d} {secs:.1f} s {level:.0f} dBFS")
        if secs < 3:
            out.append(f"{who} {d}: only {secs:.1f} s")
        if level < -40:
            out.append(f"{who} {d}: silent ({level:.0f} dBFS)")
    return out

def xcorr(a, b, rate, max_lag_s=1.0):
    """Normalised cross-correlation peak of a against b and its lag in ms (b later: >0)."""
    n = min(len(a), len(b))
    if n < rate:
        return 0.0, 0.0
    a, b = a - a.mean(), b - b.mean()
    size = 1 << (len(a) + len(b)).bit_length()
    c = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    max_lag = int(max_lag_s * rate)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    vals = np.concatenate([c[: max_lag + 1], c[-max_lag:]])
    i = int(np.argmax(np.abs(vals)))
    lag = int(lags[i])
    # normalise over the overlapping part at that lag
    if lag >= 0:
        aa, bb = a[: len(b) - lag], b[lag:]
    else:
        aa, bb = a[-lag:], b[: len(a) + lag]
    m = min(len(aa), len(bb))
    aa, bb = aa[:m], bb[:m]
    den = math.sqrt(float(np.dot(aa, aa)) * float(np.dot(bb, bb)))
    return (float(np.dot(aa, bb)) / den if den else 0.0), lag * 1000.0 / rate

def load_records(root):
    recs = []
    for f in glob.glob(os.path.join(root, "*", "*.json")):
        try:
            with open(f) as fh:
                r = json.load(fh)
        except (OSError, ValueError):
            continue  # being written
        r["_file"] = f
        recs.append(r)
    return recs

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", default="/shared/calls.log")
    ap.add_argument("--recordings", default="/recordings")
    ap.add_argument("--module", action="store_true", help="FreeSWITCH with mod_rst is in the stack")
    ap.add_argument("--callee", default="9000")
    ap.add_argument("--expect", type=int, default=0, help="calls that must have been placed")
    ap.add_argument("--wait", type=float, default=60, help="seconds to wait for the records")
    args = ap.parse_args()

    calls = []
    if os.path.exists(args.calls):
        for line in open(args.calls):
            p = line.split()
            if len(p) >= 3 and p[0] == "CALL":
                calls.append((p[1], p[2]))
    print(f"check: {len(calls)} calls answered by sipp's peer"
          + (f" (of {args.expect} placed)" if args.expect else ""))

    deadline = time.time() + args.wait
    while True:
        recs = load_records(args.recordings)
        tap = {r.get("call_id"): r for r in recs if r.get("call_id")}
        mod = {r.get("caller"): r for r in recs if not r.get("call_id")}
        missing = [c for c in calls if c[1] not in tap or (args.module and c[0] not in mod)]
        if not missing or time.time() > deadline:
            break
        time.sleep(1)

    passed = failed = 0
    if args.expect and len(calls) < args.expect:
        print(f"FAIL sipp: only {len(calls)} of {args.expect} calls were answered (see sipp's errors)")
        failed += args.expect - len(calls)
    for caller, call_id in calls:
        probs, notes = [], []
        t = tap.get(call_id)
        if t is None:
            probs.append("no tap record")
        else:
            if t.get("caller") != caller or t.get("callee") != args.callee:
                probs.append(f"tap parties {t.get('caller')}->{t.get('callee')}")
            notes.append(f"tap {t['uuid'][:8]} {t.get('end_reason')}")
            probs += audio_problems(t, "tap", notes)
        if args.module:
            m = mod.get(caller)
            if m is None:
                probs.append("no module record")
            else:
                if m.get("callee") != args.callee:
                    probs.append(f"module callee {m.get('callee')}")
                notes.append(f"module {m['uuid'][:8]} {m.get('end_reason')}")
                probs += audio_problems(m, "module", notes)
                if t is not None:
                    lags = {}
                    for d in ("R", "W"):
                        a, b = direction(m, d), direction(t, d)
                        if a is None or b is None or a[0] != b[0]:
                            probs.append(f"{d}: cannot compare")
                            continue
                        peak, lag = xcorr(a[1], b[1], a[0])
                        lags[d] = lag
                        notes.append(f"{d} corr {peak:.3f} at {lag:+.0f} ms")
                        if peak < 0.9:
                            probs.append(f"{d}: not the same audio (corr {peak:.3f})")
                        elif abs(lag) > 1000:
                            probs.append(f"{d}: {lag:+.0f} ms apart")
                    # The module starts at answer, the tap at the first packet: one offset
                    # between the two recordings is expected, but it must be the same for
                    # both directions (each keeps R and W aligned).
                    if len(lags) == 2:
                        notes.append(f"R-W skew {lags['R'] - lags['W']:+.0f} ms")
                    if len(lags) == 2 and abs(lags["R"] - lags["W"]) > ALIGN_MS:
                        probs.append(f"R and W offsets differ by {lags['R'] - lags['W']:+.0f} ms")
        status = "ok  " if not probs else "FAIL"
        print(f"{status} {caller} {call_id}: " + "; ".join(notes + probs))
        if probs:
            failed += 1
        else:
            passed += 1
    if not calls:
        print("FAIL no call was answered: nothing to check")
        failed += 1
    extra = len(recs) - len(tap) - len(mod)
    print(f"check: {len(recs)} records ({len(tap)} by the tap, {len(mod)} by the module"
          + (f", {extra} duplicates" if extra else "") + ")")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main())
