//! Audio back into the call, end to end: how long from a bot's `media`
//! message to the frame FreeSWITCH writes to the channel, and from its
//! `clear` to the channel's own audio again.
//!
//! ```sh
//! cargo bench -p mod_rst_testhost --bench play
//! ```
//!
//! The release `libmod_rst.so` runs in fs-testhost (one PCMU call,
//! `play-mode = replace`), streaming to a real receiver (udp_server, in this
//! process), which streams to a bot here (WebSocket, `twilio`). Every frame
//! the bot says is flat at a µ-law code of its own, so each frame the host
//! writes (stamped with CLOCK_MONOTONIC, which this process reads too) tells
//! which message it came from:
//!
//! 1. first audio: 10 times, a 0.5 s sentence sent at once; from its send to
//!    its first frame written;
//! 2. steady speech: 250 frames sent in real time, one every 20 ms; from each
//!    send to that frame written (p50, p99);
//! 3. barge-in: 10 times, a 2 s sentence cut by a `clear` after 0.6 s; from
//!    the clear to the first frame that is not the sentence.
//!
//! Goals (the issue's): first audio within 3 frames, a clear within 2.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use udp_server::stream::{Format, ProfileSpec, Tracks};
use udp_server::Settings;

const FRAME_NS: f64 = 20_000_000.0;
const TRIALS: usize = 10;
const STEADY_FRAMES: usize = 250;

/// What the bot sent, and when (CLOCK_MONOTONIC ns).
#[derive(Debug, Default)]
struct Sent {
    bursts: Vec<(u64, u8)>,
    steady: Vec<(u64, u8)>,
    clears: Vec<(u64, u8)>,
}

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn media(code: u8) -> Message {
    let payload = base64::engine::general_purpose::STANDARD.encode([code; 160]);
    Message::text(format!(
        r#"{{"event":"media","media":{{"payload":"{payload}"}}}}"#
    ))
}

/// The bot: on the stream's start, runs the three parts and notes the times.
fn bot(sent: Arc<Mutex<Sent>>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("ws://{}/bot", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            let socket = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let (mut write, mut read) = socket.split();
            while let Some(Ok(message)) = read.next().await {
                if message.to_text().is_ok_and(|t| t.contains("\"start\"")) {
                    break;
                }
            }
            // Keep reading (marks, stop) so the receiver never waits on us.
            tokio::spawn(async move { while read.next().await.is_some() {} });
            let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
            pause(500).await;
            for trial in 0..TRIALS {
                let code = 0x90 + trial as u8;
                sent.lock().unwrap().bursts.push((monotonic_ns(), code));
                for _ in 0..25 {
                    write.feed(media(code)).await.unwrap();
                }
                write.flush().await.unwrap();
                pause(1000).await;
            }
            let start = tokio::time::Instant::now();
            for k in 0..STEADY_FRAMES {
                tokio::time::sleep_until(start + Duration::from_millis(20 * k as u64)).await;
                let code = 0x10 + (k % 96) as u8;
                sent.lock().unwrap().steady.push((monotonic_ns(), code));
                write.send(media(code)).await.unwrap();
            }
            pause(500).await;
            for trial in 0..TRIALS {
                let code = 0xA0 + trial as u8;
                for _ in 0..100 {
                    write.feed(media(code)).await.unwrap();
                }
                write.flush().await.unwrap();
                pause(600).await;
                sent.lock().unwrap().clears.push((monotonic_ns(), code));
                write
                    .send(Message::text(r#"{"event":"clear"}"#))
                    .await
                    .unwrap();
                pause(600).await;
            }
        });
    });
    url
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[((values.len() as f64 * p) as usize).min(values.len() - 1)]
}

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| "play".contains(f.as_str())) {
        return;
    }
    let sent: Arc<Mutex<Sent>> = Arc::default();
    let url = bot(sent.clone());
    let receiver = Receiver::with(Settings {
        stream: vec![ProfileSpec {
            name: "bot".into(),
            format: Some(Format::Twilio),
            tracks: Some(Tracks::Inbound),
            ..ProfileSpec::simple(url)
        }],
        ..Settings::default()
    });
    let conf = conf_for(&receiver, &[("play-mode", "replace")]);
    let mut host = Host::start();
    host.ok(&format!(
        "load {} {}",
        release_module_path().display(),
        conf.path().display()
    ));
    let u = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3b00";
    host.ok(&format!(
        "session {u} caller_id_number=1001 destination_number=1002 codec=PCMU"
    ));
    host.ok(&format!("app {u} rst"));
    host.ok(&format!("media {u} 32 write_hz=500"));
    host.ok("wait");
    let frames: Vec<(u64, i16, bool)> =
        serde_json::from_value(host.ok(&format!("heard_frames {u}"))["frames"].clone()).unwrap();
    host.ok(&format!("hangup {u}"));
    let _ = host.quit();
    let sent = sent.lock().unwrap();
    let value = |code: u8| rst_codec::ulaw_to_linear(code);
    let is = |frame: &(u64, i16, bool), code: u8| frame.2 && frame.1 == value(code);
    let written = |after: u64, code: u8| {
        frames
            .iter()
            .find(|f| f.0 >= after && is(f, code))
            .map(|f| (f.0 - after) as f64 / FRAME_NS)
    };

    let mut first: Vec<f64> = sent
        .bursts
        .iter()
        .filter_map(|&(t, c)| written(t, c))
        .collect();
    let mut steady: Vec<f64> = sent
        .steady
        .iter()
        .filter_map(|&(t, c)| written(t, c))
        .collect();
    let mut cleared: Vec<f64> = sent
        .clears
        .iter()
        .filter_map(|&(t, code)| {
            frames
                .iter()
                .find(|f| f.0 >= t && !is(f, code))
                .map(|f| (f.0 - t) as f64 / FRAME_NS)
        })
        .collect();
    println!("mod_rst play bench: a bot's audio into a call (test host, release module, PCMU, replace)\n");
    println!(
        "first audio of a sentence : {} of {TRIALS} heard; p50 {:.2} frames, p99 {:.2} frames (goal: within 3)",
        first.len(),
        percentile(&mut first, 0.5),
        percentile(&mut first, 0.99)
    );
    println!(
        "steady speech, per frame  : {} of {STEADY_FRAMES} heard; p50 {:.2} frames, p99 {:.2} frames",
        steady.len(),
        percentile(&mut steady, 0.5),
        percentile(&mut steady, 0.99)
    );
    println!(
        "clear to the channel's own: {} of {TRIALS} cut; p50 {:.2} frames, p99 {:.2} frames (goal: within 2)",
        cleared.len(),
        percentile(&mut cleared, 0.5),
        percentile(&mut cleared, 0.99)
    );
    println!("\n(a frame is 20 ms; the receiver sends 3 frames ahead of real time)");
}
