//! mod_rst (being written).
pub mod ffi;
