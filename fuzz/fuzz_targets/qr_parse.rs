//! Any bytes: `LoginQr::parse` never panics, and whatever parses encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use matrix_linkd_wire::qr::LoginQr;

fuzz_target!(|data: &[u8]| {
    if let Ok(qr) = LoginQr::parse(data) {
        assert_eq!(qr.encode(), data, "parse/encode round trip");
        let _ = format!("{qr:?}");
    }
});
