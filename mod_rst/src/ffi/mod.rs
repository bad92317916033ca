//! The raw FreeSWITCH boundary: `#[repr(C)]` types and `extern "C"` functions,
//! nothing else. [`crate::fs`] is the safe layer over it.

mod functions;
pub mod types;

pub use functions::*;
pub use types::*;

#[cfg(test)]
mod layout_tests;
