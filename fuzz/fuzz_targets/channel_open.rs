//! Any payload from the rendezvous: handshake and message decoding reject it without panicking,
//! in both generations. The first byte picks the generation and the side (G reading S's
//! LoginInitiate, or S reading G's LoginOk), so each input pays for one key exchange only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use matrix_linkd_wire::channel::{Generation, Generator, Initiated};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let generation = if first & 1 == 0 { Generation::V2024 } else { Generation::Latest };
    let g = Generator::new(generation);
    // Two candidate AADs (the daemon passes both forms of the base URL); S tries each under both
    // response labels.
    let aads = [b"aad/".to_vec(), b"aad".to_vec()];
    let ok_aads = [b"aad2/".to_vec(), b"aad2".to_vec()];
    if first & 2 == 0 {
        let _ = g.accept(text, &aads, &ok_aads);
    } else if let Ok((pending, _)) = Initiated::start(generation, &g.public_key(), b"aad") {
        let _ = pending.confirm(text, &ok_aads);
    }
});
