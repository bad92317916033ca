//! `bench UUID FRAMES`: the media thread's ticks back to back, unpaced, with
//! the wall time of every bug callback kept (`benches/callback.rs` reads it).
//! The callbacks run exactly as in `media::tick` (same code: TAP_NATIVE_READ,
//! READ, READ_PING, TAP_NATIVE_WRITE, WRITE as the bugs' flags ask); only the
//! 20 ms sleep is gone. Every `burst` callbacks the run pauses, untimed, for
//! `between` (the module's sender thread catching up with its queue).

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::media::{tick, Frame, MediaSpec};
use crate::state::*;
use crate::types::*;

/// Runs ticks until `callbacks` callbacks have run.
pub(crate) fn run(
    session: &Arc<Session>,
    callbacks: usize,
    burst: usize,
    mut between: impl FnMut() -> bool,
) -> Result<Value, String> {
    if session.hung_up.load(Ordering::SeqCst) {
        return Err(format!("session {} is hung up", session.uuid));
    }
    if lock(&session.media).running {
        return Err(format!(
            "media is running on {}: stop_media first",
            session.uuid
        ));
    }
    let native_bug = ready_native_bug(session);
    if session
        .bug_list
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty()
    {
        return Err(format!("no media bug on {}", session.uuid));
    }
    let burst = burst.max(1);
    let spec = MediaSpec {
        seconds: 0.0,
        read_hz: 1013.0,
        write_hz: 487.0,
        read_amp: 8000.0,
        write_amp: 8000.0,
    };
    let mut read = Frame::new();
    let mut write = Frame::new();

    let count = || BENCH_SAMPLES.with(|s| s.borrow().as_ref().map_or(0, Vec::len));
    BENCH_SAMPLES.with(|s| *s.borrow_mut() = Some(Vec::with_capacity(callbacks + 16)));
    let mut ticks = 0u64;
    let mut bursts = 0u64;
    let mut timed_ns = 0u128;
    let mut paused_ns = 0u128;
    let mut pause_timeouts = 0u64;
    let mut stalled = false;
    if !between() {
        pause_timeouts += 1;
    }
    while count() < callbacks && !stalled {
        let burst_end = (count() + burst).min(callbacks);
        let started = Instant::now();
        while count() < burst_end {
            let before = count();
            tick(session, &spec, &mut read, &mut write, ticks);
            ticks += 1;
            if count() == before {
                // Every bug is gone (a callback returned FALSE).
                stalled = true;
                break;
            }
        }
        timed_ns += started.elapsed().as_nanos();
        bursts += 1;
        let paused = Instant::now();
        if !between() {
            pause_timeouts += 1;
        }
        paused_ns += paused.elapsed().as_nanos();
    }
    let mut samples = BENCH_SAMPLES
        .with(|s| s.borrow_mut().take())
        .unwrap_or_default();
    if samples.is_empty() {
        return Err("no callback ran".into());
    }
    let total: u128 = samples.iter().map(|&ns| u128::from(ns)).sum();
    let n = samples.len();
    let timer = timer_overhead(20_000);
    let standins = native_bug.map(|(bug, frame)| standin_cost(&bug, frame, 20_000));
    let mut result = json!({
        "callbacks": n,
        "ticks": ticks,
        "bursts": bursts,
        "stalled": stalled,
        "callback_ns": percentiles(&mut samples),
        "callback_total_ns": total as u64,
        "callback_mean_ns": (total as f64) / (n as f64),
        "loop_ns_per_callback": (timed_ns as f64) / (n as f64),
        "paused_ms": (paused_ns as f64) / 1e6,
        "pause_timeouts": pause_timeouts,
        "timer_ns": timer,
    });
    if let Some(standins) = standins {
        result["standins_ns"] = standins;
    }
    Ok(result)
}

/// A ready bug with a native read tap, and a frame to hand it.
fn ready_native_bug(session: &Arc<Session>) -> Option<(Arc<Bug>, Frame)> {
    let list = session.bug_list.read().unwrap_or_else(|e| e.into_inner());
    let bug = list
        .iter()
        .find(|b| b.state.load(Ordering::SeqCst) == BUG_READY && b.has(SMBF_TAP_NATIVE_READ))?;
    Some((bug.clone(), Frame::new()))
}

/// What one timed interval costs with nothing in it: `Instant::now` then
/// `elapsed`, as `Bug::invoke` measures a callback.
fn timer_overhead(n: usize) -> Value {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        black_box(());
        samples.push(started.elapsed().as_nanos() as u64);
    }
    percentiles(&mut samples)
}

/// What the host's own `switch_*` stand-ins cost a native-tap callback: it calls
/// `switch_core_media_bug_get_native_read_frame` and
/// `switch_core_media_bug_get_session`, which here look the bug up in a locked
/// map (to catch misuse) where FreeSWITCH reads a field. Timed as a callback is
/// (timer included).
fn standin_cost(bug: &Arc<Bug>, mut frame: Frame, n: usize) -> Value {
    let pointer = bug.pointer();
    let mut samples = Vec::with_capacity(n);
    bug.native_read.store(frame.raw(), Ordering::SeqCst);
    let previous = IN_CALLBACK.with(|c| {
        c.replace(Some((
            bug.session.id,
            bug.id,
            SWITCH_ABC_TYPE_TAP_NATIVE_READ,
        )))
    });
    for _ in 0..n {
        let started = Instant::now();
        // SAFETY: a live bug, inside (as far as the host can tell) its
        // TAP_NATIVE_READ callback, with its native frame set.
        unsafe {
            black_box(crate::exports::switch_core_media_bug_get_native_read_frame(
                black_box(pointer),
            ));
            black_box(crate::exports::switch_core_media_bug_get_session(
                black_box(pointer),
            ));
        }
        samples.push(started.elapsed().as_nanos() as u64);
    }
    IN_CALLBACK.with(|c| c.set(previous));
    bug.native_read
        .store(std::ptr::null_mut(), Ordering::SeqCst);
    percentiles(&mut samples)
}

/// min, p50, p90, p99, p99.9, max and mean of `samples` (sorted in place).
pub(crate) fn percentiles(samples: &mut [u64]) -> Value {
    if samples.is_empty() {
        return json!({});
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let mean = samples.iter().map(|&s| s as f64).sum::<f64>() / samples.len() as f64;
    json!({
        "n": samples.len(),
        "min": samples[0],
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": samples[samples.len() - 1],
        "mean": mean,
    })
}
