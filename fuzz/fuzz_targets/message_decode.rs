//! Any plaintext: `LoginMessage::decode` never panics, and what decodes survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use matrix_linkd_wire::messages::{HomeserverRef, LoginMessage};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = LoginMessage::decode(data) {
        assert_eq!(LoginMessage::decode(&m.encode()).as_ref(), Ok(&m));
        if let LoginMessage::Protocols { homeserver: Some(h), .. } = &m {
            let _ = HomeserverRef::parse(h);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = HomeserverRef::parse(s);
    }
});
