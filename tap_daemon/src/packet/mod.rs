//! Packet decoding (being written).
