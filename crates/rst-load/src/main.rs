use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rst_load::{ceiling, Codec, Config, Mode};

/// Plays N concurrent calls to an rst receiver as FreeSWITCH's mod_rst would:
/// INV (retransmitted until ACKed), 20 ms DATA frames for R and W, BYE (likewise).
/// With `--mode rtp`, each call sends RTP from two sockets of its own to the ports
/// the receiver's ACK names.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: Load,
}

#[derive(Debug, clap::Args)]
struct Load {
    /// The receiver
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9527")]
    target: SocketAddr,
    /// Concurrent calls
    #[arg(long, value_name = "N", default_value_t = 10)]
    calls: usize,
    /// Seconds of audio per call (with --fast: seconds spent sending)
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Frames per direction per call, instead of what --duration gives
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
    /// Milliseconds between a call's frames in real time
    #[arg(long, value_name = "MS", default_value_t = 20)]
    interval_ms: u64,
    /// Send as fast as possible instead of in real time
    #[arg(long)]
    fast: bool,
    /// With --fast: at most this many datagrams per second in total
    #[arg(long, value_name = "PER_SEC", requires = "fast")]
    rate: Option<u64>,
    /// Payload codec: pcmu (PT 00), pcma (PT 08) or l16 (PT 10, 8 kHz little-endian)
    #[arg(long, value_enum, default_value_t = Codec::Pcmu)]
    codec: Codec,
    /// data: DATA datagrams on the control socket; rtp: RFC 3550 RTP from two
    /// sockets per call to the ports the ACK names (`INV` carries the local ports)
    #[arg(long, value_enum, default_value_t = Mode::Data)]
    mode: Mode,
    /// RTP mode: leave out every Nth frame of each direction, as a lossy network would
    #[arg(long, value_name = "N")]
    drop_every: Option<u64>,
    /// First INV/BYE retransmission timeout in milliseconds (doubles each time)
    #[arg(long, value_name = "MS", default_value_t = 200)]
    rto_ms: u64,
    /// INV/BYE retransmissions before giving up
    #[arg(long, value_name = "N", default_value_t = 4)]
    retries: u32,
    /// No progress lines
    #[arg(long, short)]
    quiet: bool,
    /// Exit with status 1 if any INV or BYE went unacknowledged
    #[arg(long)]
    require_acks: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bare counting receiver (recvmmsg): prints datagrams/s every second
    Receive {
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9527")]
        listen: SocketAddr,
        /// Answer INV and BYE with ACK, like a real receiver
        #[arg(long)]
        ack: bool,
        /// Stop after this many seconds [default: run until killed]
        #[arg(long, value_name = "SECS")]
        seconds: Option<u64>,
    },
    /// Send one DATA datagram over and over as fast as possible
    Blast {
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9527")]
        target: SocketAddr,
        /// Datagram size in bytes
        #[arg(long, value_name = "BYTES", default_value_t = 180)]
        size: usize,
        #[arg(long, value_name = "SECS", default_value_t = 3.0)]
        duration: f64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => load(cli.load),
        Some(Command::Receive {
            listen,
            ack,
            seconds,
        }) => receive(listen, ack, seconds),
        Some(Command::Blast {
            target,
            size,
            duration,
        }) => {
            let report = ceiling::blast(target, size, seconds(duration)?, &AtomicBool::new(false))?;
            println!(
                "sent {} datagrams of {} bytes in {:.3} s = {:.0}/s ({} send errors)",
                report.sent,
                ceiling::data_datagram(size).len(),
                report.elapsed.as_secs_f64(),
                report.rate(),
                report.errors
            );
            Ok(())
        }
    }
}

fn seconds(value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| anyhow::anyhow!("bad duration {value}"))
}

fn load(args: Load) -> anyhow::Result<()> {
    let config = Config {
        target: args.target,
        calls: args.calls,
        duration: seconds(args.duration)?,
        frames: args.frames,
        interval: Duration::from_millis(args.interval_ms),
        fast: args.fast,
        rate: args.rate,
        codec: args.codec,
        mode: args.mode,
        drop_every: args.drop_every,
        rto: Duration::from_millis(args.rto_ms),
        retries: args.retries,
        progress: !args.quiet,
    };
    let report = rst_load::run(&config)?;
    println!("{report}");
    if args.require_acks && report.lost() > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn receive(listen: SocketAddr, ack: bool, seconds: Option<u64>) -> anyhow::Result<()> {
    let receiver = ceiling::Receiver::bind(listen, ceiling::Options { ack })?;
    eprintln!("counting datagrams on {}", receiver.local_addr());
    let start = Instant::now();
    let mut last = receiver.counts();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = receiver.counts();
        println!(
            "{:>5.0}s {:>9} datagrams/s  total {} (INV {} DATA {} BYE {} other {}) ACKs sent {}",
            start.elapsed().as_secs_f64(),
            now.datagrams - last.datagrams,
            now.datagrams,
            now.inv,
            now.data,
            now.bye,
            now.other,
            now.acks_sent
        );
        last = now;
        if seconds.is_some_and(|s| start.elapsed() >= Duration::from_secs(s)) {
            break;
        }
    }
    let counts = receiver.stop()?;
    println!("{counts:?}");
    Ok(())
}
