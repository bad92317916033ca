//! udp_server, the rst receiver: takes the INV/DATA/BYE datagrams that mod_rst
//! and tap_daemon send and records each call into WAV files and a JSON record.
//!
//! The layers, inside out: [`calls`] (the call table, sans-IO), [`align`]
//! (stereo alignment, sans-IO), [`record`] and [`files`] (one call's files),
//! [`recorder`] (the thread that owns them) and [`server`] (the tokio shell).

pub mod align;
pub mod allocator;
pub mod assemble;
pub mod bus;
pub mod calls;
pub mod config;
pub mod console;
pub mod embed;
pub mod end;
pub mod feed;
pub mod files;
pub mod http;
pub mod jitter;
pub mod live;
pub mod metrics;
pub mod play;
pub mod record;
pub mod recorder;
pub mod server;
pub mod storage;
pub mod stream;
pub mod taps;

pub use config::{Config, Settings};
pub use embed::Running;
pub use metrics::Metrics;
pub use server::{bind, run};
