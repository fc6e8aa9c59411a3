//! Any payload from the rendezvous: handshake and message decoding reject it without panicking,
//! in both generations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use matrix_linkd_wire::channel::{Generation, Generator, Initiated};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for generation in [Generation::V2024, Generation::Latest] {
        let g = Generator::new(generation);
        let key = g.public_key();
        let _ = g.accept(text, b"aad", b"aad2");
        if let Ok((pending, _)) = Initiated::start(generation, &key, b"aad") {
            let _ = pending.confirm(text, b"aad2");
        }
    }
});
