//! The engine's message handling, driven with arbitrary decrypted messages. Each input is a
//! sequence of plaintexts that go through a real secure channel (either generation, as the engine's
//! `Link::recv` opens them) and then through every step of both roles, exactly the checks the
//! engine's `grant.rs` and `login.rs` call (`wire::policy`):
//! - existing device: `m.login.protocol` (device ID, consent page), then `m.login.success`;
//! - new device: `m.login.protocols` (homeserver), `m.login.protocol_accepted`, `m.login.secrets`.
//!
//! Nothing may panic, and what is accepted must keep the rules: a consent page on the issuer's
//! origin and over https or loopback (unless plain http is allowed), a usable device ID, a
//! homeserver URL over https or loopback; the other device's own failure or refusal is never
//! answered, every other refusal is.
//!
//! The first input byte picks the generation, the issuer and whether plain http is allowed; the
//! rest splits at `0xff` into up to five messages.
#![no_main]

use std::sync::{LazyLock, Mutex};

use libfuzzer_sys::fuzz_target;
use matrix_linkd_wire::{
    channel::{Channel, Generation, Generator, Initiated},
    messages::{HomeserverRef, LoginMessage},
    policy::{self, Reach, Refusal},
};
use url::Url;

/// One channel pair per generation, made once: sealing and opening advance both sides together.
struct Pair {
    theirs: Channel,
    ours: Channel,
}

fn pair(generation: Generation) -> Pair {
    let generator = Generator::new(generation);
    let (pending, initiate) = Initiated::start(generation, &generator.public_key(), b"").expect("initiate");
    let (ours, ok) = generator.accept(&initiate, &[Vec::new()], &[Vec::new()]).expect("accept");
    let theirs = pending.confirm(&ok, &[Vec::new()]).expect("confirm");
    Pair { theirs, ours }
}

static PAIRS: LazyLock<Mutex<[Pair; 2]>> =
    LazyLock::new(|| Mutex::new([pair(Generation::V2024), pair(Generation::Latest)]));

const ISSUERS: [&str; 2] = ["https://account.example.org/", "http://127.0.0.1:8080/"];

/// A refusal answers the other device unless the other device stopped first.
fn check_refusal(refusal: &Refusal, msg: Option<&LoginMessage>) {
    match msg {
        Some(LoginMessage::Failure { .. } | LoginMessage::Declined {}) => assert!(refusal.tell().is_none()),
        _ => assert!(refusal.tell().is_some(), "{refusal:?} tells nothing"),
    }
}

/// Decodes one plaintext as the engine does; `None` (after checking the refusal) when unusable.
fn decode(plain: &[u8]) -> Option<LoginMessage> {
    match policy::decode(plain) {
        Ok(msg) => Some(msg),
        Err(refusal) => {
            assert_eq!(refusal, Refusal::Undecodable);
            check_refusal(&refusal, None);
            None
        }
    }
}

/// Runs `step` on the next message; `false` ends the role (refused or nothing left).
fn step<T>(
    messages: &mut std::slice::Iter<'_, Vec<u8>>,
    step: impl FnOnce(&LoginMessage) -> Result<T, Refusal>,
    accepted: impl FnOnce(T),
) -> bool {
    let Some(msg) = messages.next().and_then(|m| decode(m)) else { return false };
    match step(&msg) {
        Ok(v) => {
            accepted(v);
            true
        }
        Err(refusal) => {
            check_refusal(&refusal, Some(&msg));
            false
        }
    }
}

fn grant(messages: &[Vec<u8>], issuer: &Url, reach: Reach) {
    let mut it = messages.iter();
    let request_ok = step(
        &mut it,
        |m| policy::sign_in_request(m, issuer, reach),
        |request| {
            let id = &request.device_id;
            assert!(!id.is_empty() && id.len() <= 255 && !id.chars().any(char::is_control));
            assert_eq!(request.consent_page.origin(), issuer.origin());
            assert!(request.consent_page.fragment().is_none());
            assert!(request.consent_page.username().is_empty() && request.consent_page.password().is_none());
            assert!(policy::check_transport(&request.consent_page, reach).is_ok());
        },
    );
    if request_ok {
        step(&mut it, |m| policy::expect_signal(m, "m.login.success"), |()| {});
    }
}

fn login(messages: &[Vec<u8>], reach: Reach) {
    let mut it = messages.iter();
    let offered = step(
        &mut it,
        |m| policy::offered_homeserver(m, reach),
        |homeserver| match homeserver {
            HomeserverRef::Url(url) => {
                assert!(matches!(url.scheme(), "https" | "http"));
                assert!(policy::check_transport(&url, reach).is_ok());
            }
            HomeserverRef::ServerName(name) => {
                assert!(!name.is_empty() && name.len() <= 255);
                assert!(reach.local_addresses || !policy::is_loopback_name(&name));
            }
        },
    );
    if offered && step(&mut it, |m| policy::expect_signal(m, "m.login.protocol_accepted"), |()| {}) {
        step(&mut it, policy::expect_secrets, |()| {});
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let generation = usize::from(first & 1);
    let issuer = Url::parse(ISSUERS[usize::from((first >> 1) & 1)]).expect("static URL");
    let reach = Reach { insecure_http: first & 4 != 0, local_addresses: first & 8 != 0 };
    let mut pairs = PAIRS.lock().unwrap_or_else(|e| e.into_inner());
    let pair = &mut pairs[generation];
    let opened: Vec<Vec<u8>> = rest
        .split(|b| *b == 0xff)
        .take(5)
        .map(|plain| {
            let sealed = pair.theirs.seal(plain, b"");
            let opened = pair.ours.open(&sealed, b"").expect("a sealed message opens");
            assert_eq!(opened, plain);
            opened
        })
        .collect();
    drop(pairs);
    grant(&opened, &issuer, reach);
    login(&opened, reach);
});
