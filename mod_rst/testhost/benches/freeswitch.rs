//! What rst costs inside a real FreeSWITCH, per thread, with same-run baselines:
//!
//! ```sh
//! FREESWITCH_PREFIX=/opt/freeswitch cargo bench -p mod_rst_testhost --bench freeswitch
//! ```
//!
//! Runs only when `FREESWITCH_PREFIX` names an installed FreeSWITCH 1.10 (with
//! mod_loopback, mod_sofia, mod_tone_stream and the modules the gated test
//! loads) and `sipp` is on the PATH; otherwise it prints SKIPPED.
//!
//! One FreeSWITCH with the release module loaded, one receiver (udp_server, in
//! this process). Four phases of `RST_FS_BENCH_CALLS` (100) concurrent calls,
//! each measured over `RST_FS_BENCH_SECS` (60) once all calls are up:
//! loopback calls playing a tone, without and with `rst` on every call; real
//! SIP calls from sipp (its `uac_pcap` scenario, the 7 s PCMA recording
//! played over and over from each call's own RTP port, while FreeSWITCH plays
//! a tone back: RTP both ways through mod_sofia), without and with `rst`. Each FreeSWITCH thread's CPU ticks come from
//! /proc/PID/task/*/stat (and `schedstat`, exact ns) at the window's start and
//! end; the `rst-sender` thread is rst's own; the rest of rst's own work is its
//! bug callbacks on the media threads, which the module times itself (one
//! callback in 64, left untimed if its thread was preempted meanwhile,
//! counted in `rst_status`), plus what that sampling costs them (two
//! `getrusage` and two clock reads per sampled callback, measured here). Their
//! sum is rst's own work. The
//! difference of FreeSWITCH's total between the runs without and with rst is
//! printed too: it would also show what rst makes FreeSWITCH do besides (none
//! expected), but on a shared machine it moves by tens of points per round.
//! The four phases run `RST_FS_BENCH_ROUNDS` (3) times, alternating. Each
//! round compares its own two runs of a kind (without rst, then with), so a
//! slow drift of the shared machine's load falls on both; each figure is the
//! median of the rounds' figures, and every round's share is printed.
//! `RST_FS_BENCH_KINDS=sip` (or `loopback`) runs one kind only.
//!
//! Figures, recorded in `bench-results.jsonl` (rst_load::results):
//! - the sender's CPU per datagram against a bare non-blocking `sendto` of a
//!   DATA-sized datagram timed in this process in the same run (goal <= 1.5 x);
//! - rst's own work as a share of FreeSWITCH's CPU for SIP calls (goal
//!   <= 5 %): its sender thread's and its callbacks' shares, the difference
//!   of the totals beside them, and the same for loopback calls;
//! - the sender's ticks while no call is up (goal ~0), over `RST_FS_BENCH_IDLE_SECS` (10);
//! - every call recorded completely: one record per call, ended by BYE, and
//!   as many datagrams recorded as the module sent (none dropped, none failed).
//!
//! `RST_FS_BENCH_FRAMES` sets mod_rst's `frames-per-datagram` in the rst
//! phases: `auto` (its default: three to a datagram, as nobody listens to
//! the bench's calls), or 1 to 5.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rst_load::results::{record, Figure};
use rst_net::{thread_context_switches, thread_cpu_ns};
use serde_json::Value;

#[path = "../tests/common/mod.rs"]
mod common;

use common::freeswitch::{free_port, start_freeswitch, FreeSwitch, Setup};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The bench's dialplan: `plain` answers and plays a tone; `rst` does the
/// same with rst started on answer.
fn extensions(receiver_port: u16) -> String {
    let tone = "tone_stream://%(1000,0,800);loops=-1";
    let extension = |name: &str, rst: bool| {
        let start = if rst {
            format!(
                r#"<action application="set" data="execute_on_answer=rst 127.0.0.1 {receiver_port}"/>"#
            )
        } else {
            String::new()
        };
        format!(
            r#"<extension name="{name}">
        <condition field="destination_number" expression="^{name}$">
          {start}
          <action application="answer"/>
          <action application="playback" data="{tone}"/>
          <action application="hangup"/>
        </condition>
      </extension>"#
        )
    };
    [extension("plain", false), extension("rst", true)].join("\n")
}

/// sipp's `uac_pcap` scenario (its PCMA recording, sent as RTP from each
/// call's own media port) with the recording played `plays` times, no digit.
fn scenario(plays: u64) -> String {
    let headers = |method: &str, cseq: &str| {
        format!(
            "{method} sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag09[call_number]
      To: [service] <sip:[service]@[remote_ip]:[remote_port]>{peer}
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70",
            peer = if method == "INVITE" {
                ""
            } else {
                "[peer_tag_param]"
            }
        )
    };
    let play = r#"<nop><action><exec play_pcap_audio="pcap/g711a.pcap"/></action></nop>
  <pause milliseconds="7040"/>
  "#
    .repeat(plays as usize);
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="rst bench">
  <send retrans="500"><![CDATA[
      {invite}
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[local_ip_type] [local_ip]
      t=0 0
      m=audio [auto_media_port] RTP/AVP 8 101
      a=rtpmap:8 PCMA/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-11,16
    ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true" crlf="true"/>
  <send><![CDATA[
      {ack}
      Content-Length: 0
    ]]></send>
  {play}<send retrans="500"><![CDATA[
      {bye}
      Content-Length: 0
    ]]></send>
  <recv response="200" crlf="true"/>
</scenario>
"#,
        invite = headers("INVITE", "1"),
        ack = headers("ACK", "1"),
        bye = headers("BYE", "2"),
    )
}

/// A thread's CPU use so far: ticks (user + system, from `stat`) and ns
/// (from `schedstat`: the scheduler's exact run time, where ticks are only
/// sampled 100 times a second and can miss or overcharge a thread that runs
/// briefly and often, as a batching sender does).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Cpu {
    ticks: u64,
    ns: u64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, start: Cpu) -> Cpu {
        Cpu {
            ticks: self.ticks.saturating_sub(start.ticks),
            ns: self.ns.saturating_sub(start.ns),
        }
    }
}

impl std::ops::AddAssign for Cpu {
    fn add_assign(&mut self, other: Cpu) {
        self.ticks += other.ticks;
        self.ns += other.ns;
    }
}

/// The CPU use of each thread of `pid`, with its name.
fn thread_cpu(pid: u32) -> BTreeMap<u32, (String, Cpu)> {
    let mut threads = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the state.
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let ns = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let tid = task.file_name().to_string_lossy().parse().unwrap_or(0);
        threads.insert(
            tid,
            (
                name,
                Cpu {
                    ticks: ticks(11) + ticks(12),
                    ns,
                },
            ),
        );
    }
    threads
}

/// What each thread name used between two samples (threads that came and
/// went in between are not seen: calls are up for the whole window).
fn used(
    before: &BTreeMap<u32, (String, Cpu)>,
    after: &BTreeMap<u32, (String, Cpu)>,
) -> BTreeMap<String, Cpu> {
    let mut by_name: BTreeMap<String, Cpu> = BTreeMap::new();
    for (tid, (name, cpu)) in after {
        let start = before.get(tid).map_or(Cpu::default(), |(_, c)| *c);
        *by_name.entry(name.clone()).or_default() += *cpu - start;
    }
    by_name
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

fn status(fs: &FreeSwitch) -> Value {
    serde_json::from_str(&fs.cli("rst_status")).unwrap_or(Value::Null)
}

fn counter(status: &Value, name: &str) -> u64 {
    status[name].as_u64().unwrap_or(0)
}

fn channels(fs: &FreeSwitch) -> u64 {
    // "N total."
    fs.cli("show channels count")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn wait_channels(fs: &FreeSwitch, what: &str, ok: impl Fn(u64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = channels(fs);
        if ok(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} channels; FreeSWITCH's log in {}",
            fs.dirs.path().display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Loopback,
    Sip,
}

struct Phase {
    kind: Kind,
    rst: bool,
    by_thread: BTreeMap<String, Cpu>,
    total: Cpu,
    sender: Cpu,
    /// Datagrams the module sent in the window.
    datagrams: u64,
    /// The media threads' time in rst's callbacks in the window: the
    /// callbacks the module counted, times the mean of those it timed
    /// (`rst_status`: one in 64, unless its thread was preempted meanwhile).
    callbacks_ns: f64,
    /// The share of the sampled callbacks left untimed for a preemption.
    preempted: f64,
    /// The sampled callbacks (timed or not): each paid for the sampling's
    /// own reads, outside the timed part ([`sampling_ns`]).
    samples: f64,
}

/// rst's callbacks' time between two `rst_status` answers: those counted,
/// times the mean of those timed; the share of samples preempted; and the
/// samples taken.
fn callbacks_ns(at_start: &Value, at_end: &Value) -> (f64, f64, f64) {
    let delta = |name: &str| counter(at_end, name).saturating_sub(counter(at_start, name)) as f64;
    let timed = delta("callbacks_timed");
    let preempted = delta("callbacks_preempted");
    (
        delta("callbacks") * delta("callback_ns_timed") / timed.max(1.0),
        preempted / (timed + preempted).max(1.0),
        timed + preempted,
    )
}

/// What sampling a callback costs its media thread, outside the part it
/// times (`Tap::sampled` in mod_rst): two reads of the thread's context
/// switches (`getrusage`, a system call) and two of the clock. CPU ns,
/// measured here on this machine.
fn sampling_ns() -> f64 {
    let count = 50_000u32;
    let start = thread_cpu_ns();
    for _ in 0..count {
        std::hint::black_box(thread_context_switches());
        std::hint::black_box(Instant::now());
        std::hint::black_box(Instant::now());
        std::hint::black_box(thread_context_switches());
    }
    (thread_cpu_ns() - start) as f64 / f64::from(count)
}

struct Bench<'a> {
    fs: &'a FreeSwitch,
    pid: u32,
    calls: u64,
    window: Duration,
    sip_port: u16,
    receiver: &'a common::Receiver,
}

impl Bench<'_> {
    /// sipp calls `extension` `calls` times at once; each call plays sipp's
    /// 7 s PCMA recording over and over until the window is over, then hangs up.
    fn start_sipp(&self, extension: &str, dir: &Path) -> Child {
        let plays = (self.window + Duration::from_secs(15))
            .as_secs()
            .div_ceil(7);
        std::fs::write(dir.join("calls.xml"), scenario(plays)).unwrap();
        let _ = std::os::unix::fs::symlink("/usr/share/sip-tester", dir.join("pcap"));
        Command::new("sipp")
            .args(["-sf", "calls.xml", "-s", extension, "-i", "127.0.0.1"])
            .args([
                "-p",
                &free_port().to_string(),
                "-mp",
                &free_port().to_string(),
            ])
            .args(["-nostdin", "-timeout", "600s"])
            .args(["-l", &self.calls.to_string(), "-m", &self.calls.to_string()])
            .args(["-r", "50"])
            .arg(format!("127.0.0.1:{}", self.sip_port))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp runs (apt-get install sip-tester)")
    }

    fn run(&self, kind: Kind, rst: bool) -> Phase {
        let extension = if rst { "rst" } else { "plain" };
        let records_before = common::records_in(self.receiver.dir.path()).len();
        let status_before = status(self.fs);
        let mut sipp = None;
        let scenario_dir = tempfile::tempdir().unwrap();
        match kind {
            Kind::Loopback => {
                for _ in 0..self.calls {
                    let reply = self.fs.cli(&format!(
                        "bgapi originate loopback/{extension}/default &park"
                    ));
                    assert!(reply.contains("+OK"), "originate: {reply}");
                }
                // Two channels per loopback call.
                wait_channels(self.fs, "the loopback calls up", |n| n >= 2 * self.calls);
            }
            Kind::Sip => {
                sipp = Some(self.start_sipp(extension, scenario_dir.path()));
                wait_channels(self.fs, "the SIP calls up", |n| n >= self.calls);
            }
        }
        // Settle, then the window.
        std::thread::sleep(Duration::from_secs(2));
        let at_start = status(self.fs);
        let before = thread_cpu(self.pid);
        std::thread::sleep(self.window);
        let after = thread_cpu(self.pid);
        let at_end = status(self.fs);
        let by_thread = used(&before, &after);
        match kind {
            Kind::Loopback => {
                self.fs.cli("hupall NORMAL_CLEARING");
            }
            Kind::Sip => {
                let mut sipp = sipp.expect("started");
                let deadline = Instant::now() + Duration::from_secs(120);
                while sipp.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(250));
                }
                let _ = sipp.kill();
                let _ = sipp.wait();
            }
        }
        wait_channels(self.fs, "the calls gone", |n| n == 0);
        if rst {
            self.check_recorded(records_before, &status_before);
        }
        let (callbacks_ns, preempted, samples) = callbacks_ns(&at_start, &at_end);
        Phase {
            kind,
            rst,
            total: total(&by_thread),
            sender: by_thread.get("rst-sender").copied().unwrap_or_default(),
            by_thread,
            datagrams: counter(&at_end, "datagrams_sent") - counter(&at_start, "datagrams_sent"),
            callbacks_ns,
            preempted,
            samples,
        }
    }

    /// Every call of the phase recorded completely: a record each, ended by
    /// BYE, with every datagram the module sent (and none dropped on the way).
    fn check_recorded(&self, records_before: usize, status_before: &Value) {
        let expected = records_before + self.calls as usize;
        let records = common::wait_records(self.receiver.dir.path(), expected);
        let status_after = status(self.fs);
        let delta = |name: &str| counter(&status_after, name) - counter(status_before, name);
        let mut by_time: Vec<&Value> = records.iter().collect();
        by_time.sort_by_key(|r| r["start"].as_str().unwrap_or("").to_owned());
        let phase = &by_time[records_before..];
        let packets: u64 = phase
            .iter()
            .map(|r| {
                ["R", "W"]
                    .iter()
                    .map(|d| r["directions"][d]["packets"].as_u64().unwrap_or(0))
                    .sum::<u64>()
            })
            .sum();
        let byes = phase.iter().filter(|r| r["end_reason"] == "bye").count();
        let sent = delta("datagrams_sent");
        println!(
            "  recorded: {} calls, {byes} ended by BYE; {packets} datagrams recorded of {sent} sent; dropped: queue full {}, send errors {}, waiting {}",
            phase.len(),
            delta("frames_dropped_queue_full"),
            delta("send_errors"),
            delta("frames_dropped_waiting"),
        );
        assert_eq!(byes, self.calls as usize, "every call ends by BYE");
        assert_eq!(delta("frames_dropped_queue_full"), 0, "no frame dropped");
        assert_eq!(delta("send_errors"), 0, "no send failed");
        assert_eq!(packets, sent, "every datagram sent is recorded");
    }

    /// The sender thread's CPU (and FreeSWITCH's) while no call is up.
    fn idle(&self, window: Duration) -> (Cpu, Cpu) {
        let before = thread_cpu(self.pid);
        std::thread::sleep(window);
        let after = thread_cpu(self.pid);
        let by_thread = used(&before, &after);
        (
            by_thread.get("rst-sender").copied().unwrap_or_default(),
            total(&by_thread),
        )
    }
}

fn total(by_thread: &BTreeMap<String, Cpu>) -> Cpu {
    let mut sum = Cpu::default();
    for cpu in by_thread.values() {
        sum += *cpu;
    }
    sum
}

/// One round's figures for a kind: its run without rst against its run with.
#[derive(Debug, Clone, Copy)]
struct Round {
    without_s: f64,
    with_s: f64,
    /// rst's cost as a share of FreeSWITCH's own CPU: the difference of
    /// the two runs' totals (noisy: two totals of a busy process).
    share: f64,
    sender_share: f64,
    /// The media threads' time in rst's callbacks, as a share.
    callbacks_share: f64,
    /// Sampled callbacks left untimed for a preemption, as a share.
    preempted: f64,
    sender_ns_per_datagram: f64,
    datagrams: f64,
}

impl Round {
    fn of((plain, with): (&Phase, &Phase)) -> Round {
        let without = plain.total.ns.max(1) as f64;
        Round {
            without_s: without / 1e9,
            with_s: with.total.ns as f64 / 1e9,
            share: (with.total.ns as f64 - without) / without,
            sender_share: with.sender.ns as f64 / without,
            callbacks_share: with.callbacks_ns / without,
            preempted: with.preempted,
            sender_ns_per_datagram: with.sender.ns as f64 / with.datagrams.max(1) as f64,
            datagrams: with.datagrams as f64,
        }
    }

    /// Each figure's median over `rounds` (not one round's: the figures of
    /// a round move together only in part).
    fn median(rounds: &[Round]) -> Round {
        let of = |field: fn(&Round) -> f64| {
            let mut values: Vec<f64> = rounds.iter().map(field).collect();
            values.sort_by(f64::total_cmp);
            let mid = values.len() / 2;
            if values.len() % 2 == 0 {
                (values[mid - 1] + values[mid]) / 2.0
            } else {
                values[mid]
            }
        };
        Round {
            without_s: of(|r| r.without_s),
            with_s: of(|r| r.with_s),
            share: of(|r| r.share),
            sender_share: of(|r| r.sender_share),
            callbacks_share: of(|r| r.callbacks_share),
            preempted: of(|r| r.preempted),
            sender_ns_per_datagram: of(|r| r.sender_ns_per_datagram),
            datagrams: of(|r| r.datagrams),
        }
    }
}

/// A bare non-blocking `sendto` of a DATA datagram of a PCMU frame (the
/// module's socket's kind, 0.0.0.0:0 to 127.0.0.1): CPU ns per datagram.
/// `drained`: a thread reads the destination, as a receiver does (on
/// loopback the sender pays for waking it); otherwise nobody reads and the
/// kernel drops what overflows the buffer.
fn bare_sendto_ns(drained: bool) -> f64 {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = sink.local_addr().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = drained.then(|| {
        let stop = stop.clone();
        sink.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 2048];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = sink.recv_from(&mut buffer);
            }
        })
    });
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let datagram = [0x55u8; 160 + 48];
    let count = 200_000u64;
    let start = thread_cpu_ns();
    for n in 0..count {
        let _ = socket.send_to(&datagram, to);
        if drained && n % 20 == 19 {
            // Paced a little, so the reader keeps up and sleeps between
            // datagrams as a receiver does (untimed: thread CPU time).
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    let ns = (thread_cpu_ns() - start) as f64 / count as f64;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    ns
}

fn main() {
    let Some(prefix) = std::env::var_os("FREESWITCH_PREFIX").map(PathBuf::from) else {
        println!("SKIPPED freeswitch bench: set FREESWITCH_PREFIX to an installed FreeSWITCH 1.10");
        return;
    };
    if !prefix.join("bin/freeswitch").exists() || Command::new("sipp").arg("-v").output().is_err() {
        println!(
            "SKIPPED freeswitch bench: no bin/freeswitch under {} or no sipp",
            prefix.display()
        );
        return;
    }
    let calls = env_u64("RST_FS_BENCH_CALLS", 100);
    let window = Duration::from_secs(env_u64("RST_FS_BENCH_SECS", 60));
    let idle_window = Duration::from_secs(env_u64("RST_FS_BENCH_IDLE_SECS", 10));
    // mod_rst's frames-per-datagram in the rst phases (`auto`: its default,
    // three to a datagram here, where nobody listens).
    let frames_per_datagram =
        std::env::var("RST_FS_BENCH_FRAMES").unwrap_or_else(|_| "auto".to_owned());
    let auto = frames_per_datagram.eq_ignore_ascii_case("auto");
    let frames: u64 = match auto {
        true => 3,
        false => frames_per_datagram
            .parse()
            .ok()
            .filter(|n| (1..=5).contains(n))
            .expect("RST_FS_BENCH_FRAMES is auto or 1 to 5"),
    };
    // Rounds of the phases, alternating; each figure is the median of the
    // rounds' (on a shared machine one round can be disturbed either way).
    let rounds = env_u64("RST_FS_BENCH_ROUNDS", 3).max(1);
    let kinds: Vec<(Kind, &str)> = {
        let wanted = std::env::var("RST_FS_BENCH_KINDS").unwrap_or_default();
        [(Kind::Loopback, "loopback"), (Kind::Sip, "sip")]
            .into_iter()
            .filter(|(_, name)| wanted.is_empty() || wanted.split(',').any(|w| w.trim() == *name))
            .collect()
    };
    assert!(
        !kinds.is_empty(),
        "RST_FS_BENCH_KINDS names loopback, sip or both"
    );
    let module = common::release_module_path();
    let receiver = common::Receiver::start();
    let sip_port = free_port();
    let port = receiver.addr.port();
    let extensions = extensions(port);
    let setup = Setup {
        receiver_port: port,
        sip_port,
        max_sessions: 2000,
        loglevel: "warning",
        rtp_ports: (24000, 25999),
        sofia: &[("inbound-codec-prefs", "PCMU,PCMA")],
        extensions: &extensions,
        rst: &[("frames-per-datagram", &frames_per_datagram)],
    };
    let fs = start_freeswitch(&prefix, &module, &|esl_port, logfile| {
        setup.xml(esl_port, logfile)
    });
    assert_eq!(
        fs.cli("module_exists mod_rst"),
        "true",
        "mod_rst did not load"
    );
    let bench = Bench {
        fs: &fs,
        pid: fs.child.id(),
        calls,
        window,
        sip_port,
        receiver: &receiver,
    };
    println!(
        "FreeSWITCH {} with {}: {calls} calls, {} s windows, {rounds} rounds, {} ticks/s",
        prefix.display(),
        module.display(),
        window.as_secs(),
        ticks_per_second()
    );
    let (idle_before, _) = bench.idle(idle_window);
    let mut phases = Vec::new();
    let order: Vec<(Kind, bool)> = kinds
        .iter()
        .flat_map(|&(kind, _)| [(kind, false), (kind, true)])
        .collect();
    for (round, (kind, rst)) in
        (1..=rounds).flat_map(|round| order.iter().map(move |&phase| (round, phase)))
    {
        println!(
            "{kind:?} calls, rst {} (round {round}):",
            if rst { "on" } else { "off" }
        );
        let phase = bench.run(kind, rst);
        let mut top: Vec<(&String, &Cpu)> = phase.by_thread.iter().collect();
        top.sort_by_key(|(_, cpu)| std::cmp::Reverse(cpu.ns));
        let list: Vec<String> = top
            .iter()
            .take(8)
            .map(|(name, cpu)| format!("{name} {} ticks {:.3} s", cpu.ticks, cpu.ns as f64 / 1e9))
            .collect();
        println!(
            "  FreeSWITCH {} ticks, {:.3} s CPU in {} s (rst-sender {} ticks, {:.3} s; {} datagrams); by thread name: {}",
            phase.total.ticks,
            phase.total.ns as f64 / 1e9,
            window.as_secs(),
            phase.sender.ticks,
            phase.sender.ns as f64 / 1e9,
            phase.datagrams,
            list.join(", ")
        );
        phases.push(phase);
    }
    let (idle_after, idle_fs) = bench.idle(idle_window);
    let sendto_ns = bare_sendto_ns(false);
    let sendto_read_ns = bare_sendto_ns(true);
    // The callbacks' share counts what sampling them cost the media threads.
    let sampling = sampling_ns();
    for phase in &mut phases {
        phase.callbacks_ns += phase.samples * sampling;
    }
    println!(
        "sampling: {sampling:.0} ns a sampled callback (two getrusage, two clock reads, one callback in 64), counted in the callbacks' share"
    );
    fs.cli("shutdown");

    let mut figures = Vec::new();
    let mut sender_use = (0u64, 0u64);
    let mut sip = None;
    for &(kind, name) in &kinds {
        // This kind's runs without and with rst, paired round by round.
        let runs = |rst: bool| {
            phases
                .iter()
                .filter(move |p| p.kind == kind && p.rst == rst)
        };
        let rounds: Vec<Round> = runs(false).zip(runs(true)).map(Round::of).collect();
        for with in runs(true) {
            sender_use.0 += with.sender.ns;
            sender_use.1 += with.datagrams;
        }
        let shares: Vec<String> = rounds
            .iter()
            .map(|r| format!("{:+.1}", r.share * 100.0))
            .collect();
        let m = Round::median(&rounds);
        println!(
            "{name}: FreeSWITCH {:.3} s CPU without rst, {:.3} s with (medians of {} rounds): the difference {:+.1} % of FreeSWITCH's own CPU (rounds: {} %); rst's own work {:.1} %: its sender thread {:.1} % and its callbacks on the media threads {:.1} % ({:.1} % of the samples preempted, untimed); sender {:.2} us per datagram",
            m.without_s,
            m.with_s,
            rounds.len(),
            m.share * 100.0,
            shares.join(", "),
            (m.sender_share + m.callbacks_share) * 100.0,
            m.sender_share * 100.0,
            m.callbacks_share * 100.0,
            m.preempted * 100.0,
            m.sender_ns_per_datagram / 1000.0
        );
        figures.extend([
            Figure::new(format!("{name}_fs_cpu_without_rst"), m.without_s, "s"),
            Figure::new(format!("{name}_fs_cpu_with_rst"), m.with_s, "s"),
            Figure::new(
                format!("{name}_rst_share"),
                m.share * 100.0,
                "% of FreeSWITCH CPU",
            ),
            Figure::new(
                format!("{name}_rst_share_min"),
                rounds.iter().map(|r| r.share).fold(f64::INFINITY, f64::min) * 100.0,
                "% of FreeSWITCH CPU",
            ),
            Figure::new(
                format!("{name}_rst_share_max"),
                rounds
                    .iter()
                    .map(|r| r.share)
                    .fold(f64::NEG_INFINITY, f64::max)
                    * 100.0,
                "% of FreeSWITCH CPU",
            ),
            Figure::new(
                format!("{name}_sender_share"),
                m.sender_share * 100.0,
                "% of FreeSWITCH CPU",
            ),
            Figure::new(
                format!("{name}_callbacks_share"),
                m.callbacks_share * 100.0,
                "% of FreeSWITCH CPU",
            ),
            Figure::new(
                format!("{name}_rst_own_share"),
                (m.sender_share + m.callbacks_share) * 100.0,
                "% of FreeSWITCH CPU",
            ),
            Figure::new(
                format!("{name}_sender_ns_per_datagram"),
                m.sender_ns_per_datagram,
                "ns",
            ),
            Figure::new(format!("{name}_datagrams"), m.datagrams, "datagrams"),
        ]);
        if kind == Kind::Sip {
            sip = Some(m);
        }
    }
    let per_datagram = sender_use.0 as f64 / sender_use.1.max(1) as f64;
    let ratio = per_datagram / sendto_ns;
    println!(
        "sender: {:.2} us per datagram (both rst phases), a bare sendto {:.2} us: {ratio:.2} x (goal <= 1.5 x); a bare sendto to a socket read by a thread {:.2} us: {:.2} x",
        per_datagram / 1000.0,
        sendto_ns / 1000.0,
        sendto_read_ns / 1000.0,
        per_datagram / sendto_read_ns
    );
    if let Some(sip) = &sip {
        let floor = sendto_ns * sip.datagrams / (sip.without_s * 1e9).max(1.0);
        println!(
            "floor: bare sendtos alone for the SIP phase's datagrams would be {:.1} % of FreeSWITCH's own CPU",
            floor * 100.0
        );
        figures.push(Figure::new(
            "sip_sendto_floor_share",
            floor * 100.0,
            "% of FreeSWITCH CPU",
        ));
    }
    println!(
        "idle: rst-sender {} ticks ({:.4} s) before any call and {} ticks ({:.4} s) after the calls, in {} s each (FreeSWITCH {} ticks)",
        idle_before.ticks,
        idle_before.ns as f64 / 1e9,
        idle_after.ticks,
        idle_after.ns as f64 / 1e9,
        idle_window.as_secs(),
        idle_fs.ticks
    );
    // Judged on rst's own work, measured per thread (the sender thread's
    // exact CPU time, the callbacks' sampled time): the difference of the
    // two totals moves by tens of points from round to round here.
    let sip_share = sip
        .as_ref()
        .map_or(f64::NAN, |m| (m.sender_share + m.callbacks_share) * 100.0);
    // A datagram of several frames costs more than a bare sendto of one:
    // the sender's goal is judged with a frame per datagram.
    let sender_goal = match (frames, ratio <= 1.5) {
        (1, true) => "met".to_owned(),
        (1, false) => "NOT met".to_owned(),
        (n, _) => format!("judged at 1 frame per datagram, not {n}"),
    };
    println!(
        "goals: SIP, rst's own work {:.1} % of FreeSWITCH's CPU (<= 5 %): {}; sender {ratio:.2} x sendto (<= 1.5 x): {sender_goal}; idle {} ticks: {}; recorded completely: yes",
        sip_share,
        if sip_share <= 5.0 { "met" } else { "NOT met" },
        idle_after.ticks,
        if idle_after.ticks <= 1 { "met" } else { "NOT met" },
    );
    figures.extend([
        Figure::new("sender_ns_per_datagram", per_datagram, "ns"),
        Figure::new("bare_sendto_ns", sendto_ns, "ns"),
        Figure::new("callback_sampling_ns", sampling, "ns"),
        Figure::new("bare_sendto_read_ns", sendto_read_ns, "ns"),
        Figure::new("sender_vs_sendto_read", per_datagram / sendto_read_ns, "x"),
        Figure::new("sender_vs_sendto", ratio, "x"),
        Figure::new(
            "idle_sender_ticks_before",
            idle_before.ticks as f64,
            "ticks",
        ),
        Figure::new("idle_sender_ticks_after", idle_after.ticks as f64, "ticks"),
        Figure::new("idle_sender_ns_after", idle_after.ns as f64, "ns"),
        Figure::new("idle_seconds", idle_window.as_secs_f64(), "s"),
        Figure::new("calls", calls as f64, "calls"),
        Figure::new("frames_per_datagram", frames as f64, "frames"),
        Figure::new("frames_auto", f64::from(u8::from(auto)), "bool"),
        Figure::new("window_seconds", window.as_secs_f64(), "s"),
        Figure::new("rounds", rounds as f64, "rounds"),
    ]);
    match record("mod_rst/freeswitch", &figures) {
        Ok(path) => println!("figures appended to {}", path.display()),
        Err(error) => println!("figures not recorded: {error}"),
    }
}
