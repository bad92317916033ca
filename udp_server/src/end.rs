//! Why a call ended: the call table decides it, the metrics count it and the
//! record keeps it. A module of its own, so that none of those three has to
//! import another for it.

use serde::Serialize;

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    /// The sender said BYE.
    Bye,
    /// Nothing arrived for the idle timeout.
    Timeout,
    /// The receiver was stopped.
    Shutdown,
    /// Recording failed (a full disk, say) or the receiver died mid-call.
    Error,
}

impl EndReason {
    pub const ALL: [EndReason; 4] = [
        EndReason::Bye,
        EndReason::Timeout,
        EndReason::Shutdown,
        EndReason::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EndReason::Bye => "bye",
            EndReason::Timeout => "timeout",
            EndReason::Shutdown => "shutdown",
            EndReason::Error => "error",
        }
    }
}
