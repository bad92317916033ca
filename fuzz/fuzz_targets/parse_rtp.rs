//! Parses arbitrary bytes as RTP (RFC 3550) and the payload as an RFC 4733
//! telephone-event. Nothing may panic; what parses must re-encode to the same
//! fixed header and payload, and parse again to the same packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rst_proto::{RtpPacket, TelephoneEvent};

const HEADER: usize = rst_proto::rtp::RTP_HEADER_LEN;

fuzz_target!(|data: &[u8]| {
    if let Some(event) = TelephoneEvent::parse(data) {
        check_event(event, data);
    }
    let Ok(packet) = RtpPacket::parse(data) else {
        return;
    };
    // The payload lies inside the packet, after the fixed header.
    let offset = packet.payload.as_ptr() as usize - data.as_ptr() as usize;
    assert!(offset >= HEADER && offset + packet.payload.len() <= data.len());

    let mut wire = Vec::new();
    packet.encode(&mut wire);
    assert_eq!(wire.len(), HEADER + packet.payload.len());
    // Version 2, and no padding, extension or CSRCs: they are not kept.
    assert_eq!(wire[0], 0x80);
    // Marker, payload type, sequence number, timestamp and SSRC as received.
    assert_eq!(wire[1..HEADER], data[1..HEADER]);
    assert_eq!(&wire[HEADER..], packet.payload);
    if data[0] & 0x3F == 0 {
        // Nothing was dropped: the same bytes.
        assert_eq!(wire, data);
    }
    let again = RtpPacket::parse(&wire).expect("a re-encoded packet parses");
    assert_eq!(again, packet);

    if let Some(event) = TelephoneEvent::parse(packet.payload) {
        check_event(event, packet.payload);
    }
});

fn check_event(event: TelephoneEvent, payload: &[u8]) {
    let bytes = event.encode();
    // Event and duration as sent; of the second byte the E bit and volume,
    // the reserved bit cleared.
    assert_eq!(bytes[0], payload[0]);
    assert_eq!(bytes[1], payload[1] & 0xBF);
    assert_eq!(bytes[2..], payload[2..4]);
    assert_eq!(TelephoneEvent::parse(&bytes), Some(event));
    assert_eq!(event.digit().is_some(), event.event <= 16);
}
