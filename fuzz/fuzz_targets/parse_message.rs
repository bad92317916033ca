//! Parses arbitrary bytes as an rst datagram. `parse` must never panic, and a
//! message it accepts must re-encode to bytes that parse to the same message,
//! and encoding that must give the same bytes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rst_proto::{Message, MAX_DATAGRAM_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::parse(data) else {
        return;
    };
    let wire = message
        .to_vec()
        .unwrap_or_else(|e| panic!("{message:?} parsed but does not encode: {e}"));
    assert!(wire.len() <= MAX_DATAGRAM_LEN);
    let again = Message::parse(&wire);
    assert_eq!(again, Ok(message), "re-encoded as {wire:?}");
    assert_eq!(again.unwrap().to_vec().unwrap(), wire);
});
