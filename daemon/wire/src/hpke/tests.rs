//! The latest generation's channel against the published vectors (docs/protocol.md §15.4), against an
//! independent construction of each message with the `hpke` crate of the newer RustCrypto generation
//! (0.14.1, the one vodozemac 0.11.1 builds on, whose `danger::streaming_enc` builds the response
//! contexts that `hpke.rs` writes out by hand) and the `hkdf` crate (the test plays the other device
//! exactly as §6.2.2 writes it), and against vodozemac 0.11.1 itself in both roles.
//!
//! The daemon passes the candidate AADs in the order of `Rendezvous::poll`: the normalised base URL
//! (`…matrix.org/`) first, then the QR code's form without the slash (`…matrix.org`), which is the
//! one the published vectors use.

use base64::{Engine as _, engine::general_purpose::STANDARD_NO_PAD};
use hpke_latest::{
    Deserializable as _, OpModeR, OpModeS, Serializable as _,
    aead::{AeadCtxR, AeadCtxS, ChaCha20Poly1305},
    danger::streaming_enc::{
        AeadKey, AeadNonce, ExporterSecret, create_receiver_context, create_sender_context,
    },
    kdf::HkdfSha256,
    kem::X25519HkdfSha256,
};
use vodozemac_latest::{
    Curve25519PublicKey,
    hpke::{
        BidirectionalCreationResult, DigitMode, HpkeRecipientChannel, HpkeSenderChannel, InitialMessage,
        InitialResponse, Message, RecipientCreationResult, SenderCreationResult,
    },
};

use super::{MSC_RESPONSE_LABEL, RESPONSE_LABEL, Recipient};
use crate::{
    aad::aad_raw,
    channel::{ChannelError, Generation, Generator, INITIATE, Initiated, OK, b64, check_code_digits},
};

type K = X25519HkdfSha256;
type A = ChaCha20Poly1305;
type F = HkdfSha256;

const ID: &str = "e8da6355-550b-4a32-a193-1619d9830668";
const GS: &str = "d88a5ca19ead8b3e74ab3bd0e9f783f1bb66b7d543873a7a424f5e78c33cb491";
const GP: &str = "GxyZBjD1bQO0tpTht1xk8LSLUMQ8SCYjU2cUpCUnrUo";
const RN: &str = "8602d0a64ba566153ea394db44a66dd10e1e8e56bec2841e38c6ff7afc45b8fc";
const LOGIN_INITIATE: &str =
    "YTkEpTi8b0sYsxo2Jz3Iv/Qyj5jZWGFBWktyujuP5kbFyDqaTvLwtCVrPp1U3BJCfPnWNecaBL9P1TlYHRav6nR4zE+81oTLWJT5ye8";
const LOGIN_OK: &str =
    "hgLQpkulZhU+o5TbRKZt0Q4ejla+woQeOMb/evxFuPwrrqTrGPq5t0X3DAL/XUwWuSA5sfE4wwRMhHpMchMEA2QlWkHL6RA";
const S_TO_G: &str = "ZptIJDmW3h+H2s4hCRhuZUcPlew2GLGiz58P+jL8wS2IPwAosEgKMDbp";
const G_TO_S: &str = "tClN81l7LRpMwvY6uEXLsxu2zBv9qK+ZKHnr0E9vPWhQC3Iq0f3nQ3nhR/0bd0qPywkfJw";
const SUCCESS: &[u8] = br#"{"type":"m.login.success"}"#;
const ACCEPTED: &[u8] = br#"{"type":"m.login.protocol_accepted"}"#;

/// Both forms of the base URL, in the daemon's order: `[normalised, as in the QR code]`.
fn aads(token: &str) -> Vec<Vec<u8>> {
    vec![
        aad_raw("https://matrix-client.matrix.org/", ID, token),
        aad_raw("https://matrix-client.matrix.org", ID, token),
    ]
}

fn unb64(s: &str) -> Vec<u8> {
    STANDARD_NO_PAD.decode(s).unwrap()
}

fn gs() -> [u8; 32] {
    hex::decode(GS).unwrap().try_into().unwrap()
}

fn gp() -> [u8; 32] {
    unb64(GP).try_into().unwrap()
}

fn known_rn() -> [u8; 32] {
    hex::decode(RN).unwrap().try_into().unwrap()
}

fn random_rn() -> [u8; 32] {
    let mut rn = [0u8; 32];
    rand_core::TryRngCore::try_fill_bytes(&mut rand_core::OsRng, &mut rn).unwrap();
    rn
}

// The other device, built straight from docs/protocol.md §6.2.2 with the `hpke` and `hkdf` crates.

/// G with the known key: SetupBaseR on LoginInitiate, opened with `aad`. Returns ctxG, Sp and the
/// plaintext.
fn their_g_open(initiate: &str, aad: &[u8]) -> (AeadCtxR<A, F, K>, [u8; 32], Vec<u8>) {
    let bytes = unb64(initiate);
    let (sp, ct) = bytes.split_at(32);
    let sk = <K as hpke_latest::Kem>::PrivateKey::from_bytes(&gs()).unwrap();
    let enc = <K as hpke_latest::Kem>::EncappedKey::from_bytes(sp).unwrap();
    let mut ctx =
        hpke_latest::setup_receiver::<A, F, K>(&OpModeR::Base, &sk, &enc, b"MATRIX_QR_CODE_LOGIN").unwrap();
    let plain = ctx.open(ct, aad).unwrap();
    (ctx, sp.try_into().unwrap(), plain)
}

/// S: SetupBaseS to `gp` and LoginInitiate sealed with `aad`. Returns ctxS, Sp and the payload.
fn their_s_initiate(gp: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> (AeadCtxS<A, F, K>, [u8; 32], String) {
    let pk = <K as hpke_latest::Kem>::PublicKey::from_bytes(gp).unwrap();
    let (enc, mut ctx) =
        hpke_latest::setup_sender::<A, F, K>(&OpModeS::Base, &pk, b"MATRIX_QR_CODE_LOGIN").unwrap();
    let sp: [u8; 32] = enc.to_bytes().0;
    let ct = ctx.seal(plaintext, aad).unwrap();
    (ctx, sp, b64(&[sp.as_slice(), &ct].concat()))
}

/// HKDF-SHA256(salt = Sp ‖ rn, secret) → key ("key", 32), base nonce ("nonce", 12).
fn their_response_keys(secret: &[u8; 32], sp: &[u8; 32], rn: &[u8; 32]) -> (AeadKey<A>, AeadNonce<A>) {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&[sp.as_slice(), rn].concat()), secret);
    let (mut key, mut nonce) = (AeadKey::<A>::default(), AeadNonce::<A>::default());
    hk.expand(b"key", key.0.as_mut_slice()).unwrap();
    hk.expand(b"nonce", nonce.0.as_mut_slice()).unwrap();
    (key, nonce)
}

/// G's response: the context from ctxG.Export(`label`, 32), and LoginOk (`rn ‖ ct`) sealed with
/// `aad`.
fn their_login_ok(
    ctx_g: &AeadCtxR<A, F, K>,
    sp: &[u8; 32],
    label: &[u8],
    plaintext: &[u8],
    aad: &[u8],
) -> (AeadCtxS<A, F, K>, String) {
    let rn = random_rn();
    let mut secret = [0u8; 32];
    ctx_g.export(label, &mut secret).unwrap();
    let (key, nonce) = their_response_keys(&secret, sp, &rn);
    let mut response = create_sender_context::<A, F, K>(&key, nonce, ExporterSecret::default());
    let ct = response.seal(plaintext, aad).unwrap();
    (response, b64(&[rn.as_slice(), &ct].concat()))
}

/// S's side of LoginOk, from any context with the same exporter (ctxS or ctxG): opens it under
/// vodozemac's label with `aad`.
fn their_open_login_ok(export: [u8; 32], sp: &[u8; 32], ok: &str, aad: &[u8]) -> Option<Vec<u8>> {
    let bytes = unb64(ok);
    let (key, nonce) = their_response_keys(&export, sp, bytes[..32].try_into().unwrap());
    let mut response = create_receiver_context::<A, F, K>(&key, nonce, ExporterSecret::default());
    response.open(&bytes[32..], aad).ok()
}

fn their_check_code(ctx: &AeadCtxR<A, F, K>, sp: &[u8; 32]) -> [u8; 2] {
    let mut bytes = [0u8; 2];
    ctx.export(&[b"MATRIX_QR_CODE_LOGIN_CHECKCODE".as_slice(), &gp(), sp].concat(), &mut bytes).unwrap();
    bytes
}

fn response_export(ctx: &AeadCtxR<A, F, K>, label: &[u8]) -> [u8; 32] {
    let mut secret = [0u8; 32];
    ctx.export(label, &mut secret).unwrap();
    secret
}

/// (e) docs/protocol.md §15.4 end to end through our G with the known key and response nonce: the
/// published LoginInitiate opens (with the second candidate, the base URL without `/`), our
/// LoginOk and G→S message are the published bytes, the S→G message opens, the code is 80.
#[test]
fn published_vectors_through_our_generator() {
    let g = Recipient::from_secret(&gs());
    assert_eq!(b64(&g.public_key()), GP);
    let (opened, plain) = g.open_initial(LOGIN_INITIATE, &aads("SEQ1")).unwrap();
    assert_eq!(plain, INITIATE);
    assert_eq!(opened.aad_index(), 1, "the vector binds to the base URL without the slash");
    let (mut channel, ok) = opened.respond_with(known_rn(), OK, &aads("SEQ2")[1]);
    assert_eq!(ok, LOGIN_OK);
    assert_eq!(channel.check_code(), [0xc4, 0xaa]);
    assert_eq!(check_code_digits(channel.check_code(), Generation::Latest), 80);
    assert_eq!(channel.open(S_TO_G, &aads("SEQ3")[1]).unwrap(), SUCCESS);
    assert_eq!(channel.seal(ACCEPTED, &aads("SEQ4")[1]), G_TO_S);

    // The response exports of both labels (§15.4).
    let (ctx, _, _) = their_g_open(LOGIN_INITIATE, &aads("SEQ1")[1]);
    assert_eq!(
        hex::encode(response_export(&ctx, RESPONSE_LABEL)),
        "7fc9169958022e18becb1fb74c67abdd51875e47f04863fbbb41ba816a920e71"
    );
    assert_eq!(
        hex::encode(response_export(&ctx, MSC_RESPONSE_LABEL)),
        "691dbb2484d90213d0ed01737868430b4b0922fb3e25280c6357b3647856ecc8"
    );
}

/// (a) G opens LoginInitiate bound to either form of the base URL (the published one without `/`,
/// an independently sealed one with it) and binds its LoginOk and later messages to the same form.
#[test]
fn generator_opens_login_initiate_under_either_base_url_form() {
    // The published LoginInitiate (no slash), through the daemon's API.
    let (mut channel, ok) =
        Generator::latest_from_secret(&gs()).accept(LOGIN_INITIATE, &aads("SEQ1"), &aads("SEQ2")).unwrap();
    assert_eq!(channel.handshake_aad(), 1);
    assert_eq!(channel.check_code(), 80);
    let (ctx, sp, _) = their_g_open(LOGIN_INITIATE, &aads("SEQ1")[1]);
    let export = response_export(&ctx, RESPONSE_LABEL);
    assert_eq!(their_open_login_ok(export, &sp, &ok, &aads("SEQ2")[1]).as_deref(), Some(OK));
    assert_eq!(
        their_open_login_ok(export, &sp, &ok, &aads("SEQ2")[0]),
        None,
        "LoginOk keeps the peer's form"
    );
    assert_eq!(channel.open(S_TO_G, &aads("SEQ3")[1]).unwrap(), SUCCESS);
    // Without the second candidate the published message does not open.
    let single =
        Generator::latest_from_secret(&gs()).accept(LOGIN_INITIATE, &aads("SEQ1")[..1], &aads("SEQ2"));
    assert_eq!(single.err(), Some(ChannelError::Decrypt));

    // An independent S binding to the normalised base URL (with `/`).
    let (mut ctx_s, sp, initiate) = their_s_initiate(&gp(), INITIATE, &aads("T1")[0]);
    let (mut channel, ok) =
        Generator::latest_from_secret(&gs()).accept(&initiate, &aads("T1"), &aads("T2")).unwrap();
    assert_eq!(channel.handshake_aad(), 0);
    let (ctx_g, _, _) = their_g_open(&initiate, &aads("T1")[0]);
    let export = response_export(&ctx_g, RESPONSE_LABEL);
    assert_eq!(their_open_login_ok(export, &sp, &ok, &aads("T2")[0]).as_deref(), Some(OK));
    assert_eq!(their_open_login_ok(export, &sp, &ok, &aads("T2")[1]), None);
    assert_eq!(channel.check_code_bytes(), their_check_code(&ctx_g, &sp));
    let sealed = b64(&ctx_s.seal(SUCCESS, &aads("T3")[0]).unwrap());
    assert_eq!(channel.open(&sealed, &aads("T3")[0]).unwrap(), SUCCESS);
    // And bound to the QR's form only: a candidate list with only the normalised form refuses it.
    let (_, _, initiate) = their_s_initiate(&gp(), INITIATE, &aads("T1")[1]);
    let single = Generator::latest_from_secret(&gs()).accept(&initiate, &aads("T1")[..1], &aads("T2"));
    assert_eq!(single.err(), Some(ChannelError::Decrypt));
}

/// (b) S opens a LoginOk built under either response label and either base-URL form, keeps the
/// response context of the label that opened it, and talks both ways in the peer's form.
#[test]
fn scanner_opens_login_ok_under_either_label_and_form() {
    for label in [RESPONSE_LABEL, MSC_RESPONSE_LABEL] {
        for form in [0, 1] {
            let what = format!("{} / form {form}", String::from_utf8_lossy(label));
            let (pending, initiate) = Initiated::start(Generation::Latest, &gp(), &aads("T1")[0]).unwrap();
            let (mut ctx_g, sp, plain) = their_g_open(&initiate, &aads("T1")[0]);
            assert_eq!(plain, INITIATE);
            let (mut response, ok) = their_login_ok(&ctx_g, &sp, label, OK, &aads("T2")[form]);
            let mut channel = pending.confirm(&ok, &aads("T2")).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(channel.handshake_aad(), form, "{what}");
            assert_eq!(channel.check_code_bytes(), their_check_code(&ctx_g, &sp), "{what}");
            for i in 0..2 {
                let token = format!("T{}", 3 + 2 * i);
                let sealed = channel.seal(SUCCESS, &aads(&token)[form]);
                assert_eq!(ctx_g.open(&unb64(&sealed), &aads(&token)[form]).unwrap(), SUCCESS, "{what}");
                let token = format!("T{}", 4 + 2 * i);
                let sealed = b64(&response.seal(ACCEPTED, &aads(&token)[form]).unwrap());
                assert_eq!(channel.open(&sealed, &aads(&token)[form]).unwrap(), ACCEPTED, "{what}");
            }
        }
    }
}

/// What (b) needs the second label for: a single-label S (ours restricted to vodozemac's label,
/// and vodozemac itself) refuses the MSC-label LoginOk.
#[test]
fn msc_label_login_ok_needs_the_second_label() {
    let (pending, initiate) = Initiated::start(Generation::Latest, &gp(), &aads("T1")[0]).unwrap();
    let (ctx_g, sp, _) = their_g_open(&initiate, &aads("T1")[0]);
    let (_, ok) = their_login_ok(&ctx_g, &sp, MSC_RESPONSE_LABEL, OK, &aads("T2")[0]);
    let Initiated::Latest(sender) = pending else { unreachable!() };
    let single: Result<_, _> = sender.open_response(&ok, &[RESPONSE_LABEL], &aads("T2"));
    assert_eq!(single.err(), Some(ChannelError::Decrypt));

    let key = Curve25519PublicKey::from_bytes(gp());
    let SenderCreationResult { channel, message } =
        HpkeSenderChannel::new().establish_channel(key, INITIATE, &aads("T1")[0]).unwrap();
    let (ctx_g, sp, _) = their_g_open(&message.encode(), &aads("T1")[0]);
    let (_, ok) = their_login_ok(&ctx_g, &sp, MSC_RESPONSE_LABEL, OK, &aads("T2")[0]);
    let ok = InitialResponse::decode(&ok).unwrap();
    assert!(channel.establish_bidirectional_channel(&ok, &aads("T2")[0]).is_err());
}

/// (c) Our G with vodozemac's S, and vodozemac's G with our S, in both base-URL forms: the
/// handshake completes, the check codes agree, messages go both ways.
#[test]
fn interoperates_with_vodozemac_in_both_roles() {
    for form in [0, 1] {
        // Our G, vodozemac's S.
        let g = Generator::new(Generation::Latest);
        let SenderCreationResult { channel: vz_s, message } = HpkeSenderChannel::new()
            .establish_channel(Curve25519PublicKey::from_bytes(g.public_key()), INITIATE, &aads("T1")[form])
            .unwrap();
        let (mut ours, ok) = g.accept(&message.encode(), &aads("T1"), &aads("T2")).unwrap();
        assert_eq!(ours.handshake_aad(), form);
        let BidirectionalCreationResult { channel: mut vz, message } = vz_s
            .establish_bidirectional_channel(&InitialResponse::decode(&ok).unwrap(), &aads("T2")[form])
            .unwrap();
        assert_eq!(message, OK);
        assert_eq!(vz.check_code().as_bytes(), &ours.check_code_bytes());
        assert_eq!(vz.check_code().to_digit(DigitMode::NoLeadingZero), ours.check_code());
        for i in 0..3 {
            let aad = &aads(&format!("S{i}"))[form];
            assert_eq!(ours.open(&vz.seal(SUCCESS, aad).encode(), aad).unwrap(), SUCCESS);
            let aad = &aads(&format!("G{i}"))[form];
            assert_eq!(vz.open(&Message::decode(&ours.seal(ACCEPTED, aad)).unwrap(), aad).unwrap(), ACCEPTED);
        }

        // vodozemac's G, our S.
        let vz_g = HpkeRecipientChannel::new();
        let (pending, initiate) =
            Initiated::start(Generation::Latest, &vz_g.public_key().to_bytes(), &aads("T1")[form]).unwrap();
        let RecipientCreationResult { channel: vz_g, message } =
            vz_g.establish_channel(&InitialMessage::decode(&initiate).unwrap(), &aads("T1")[form]).unwrap();
        assert_eq!(message, INITIATE);
        let BidirectionalCreationResult { channel: mut vz, message: ok } =
            vz_g.establish_bidirectional_channel(OK, &aads("T2")[form]);
        let mut ours = pending.confirm(&ok.encode(), &aads("T2")).unwrap();
        assert_eq!(ours.handshake_aad(), form);
        assert_eq!(vz.check_code().as_bytes(), &ours.check_code_bytes());
        assert_eq!(vz.check_code().to_digit(DigitMode::NoLeadingZero), ours.check_code());
        for i in 0..3 {
            let aad = &aads(&format!("S{i}"))[form];
            assert_eq!(vz.open(&Message::decode(&ours.seal(SUCCESS, aad)).unwrap(), aad).unwrap(), SUCCESS);
            let aad = &aads(&format!("G{i}"))[form];
            assert_eq!(ours.open(&vz.seal(ACCEPTED, aad).encode(), aad).unwrap(), ACCEPTED);
        }
    }
}

fn flip(payload: &str, at: usize) -> String {
    let mut bytes = unb64(payload);
    bytes[at] ^= 1;
    b64(&bytes)
}

/// (d) The handshake's failures keep the variants they had over vodozemac: undecodable payloads
/// `Decode`, wrong key, wrong AAD, tampering, a third label and replays `Decrypt`, the wrong
/// plaintext `Handshake`.
#[test]
fn handshake_failures_keep_their_variants() {
    let g = || Generator::latest_from_secret(&gs());
    let accept = |initiate: &str, candidates: &[Vec<u8>]| g().accept(initiate, candidates, &aads("T2")).err();
    let (_, _, initiate) = their_s_initiate(&gp(), INITIATE, &aads("T1")[0]);
    for junk in ["", "@@not base64@@", &b64(&[7u8; 31]), "YTkE="] {
        assert_eq!(accept(junk, &aads("T1")), Some(ChannelError::Decode), "{junk:?}");
    }
    assert_eq!(accept(&b64(&[7u8; 32]), &aads("T1")), Some(ChannelError::Decrypt), "no ciphertext");
    assert_eq!(accept(&initiate, &aads("T9")), Some(ChannelError::Decrypt), "wrong AAD");
    assert_eq!(accept(&initiate, &[]), Some(ChannelError::Decrypt), "no candidate");
    assert_eq!(accept(&flip(&initiate, 40), &aads("T1")), Some(ChannelError::Decrypt), "ciphertext");
    assert_eq!(accept(&flip(&initiate, 3), &aads("T1")), Some(ChannelError::Decrypt), "Sp");
    let other = Generator::new(Generation::Latest).accept(&initiate, &aads("T1"), &aads("T2"));
    assert_eq!(other.err(), Some(ChannelError::Decrypt), "another key");
    let (_, _, hello) = their_s_initiate(&gp(), b"hello", &aads("T1")[1]);
    assert_eq!(accept(&hello, &aads("T1")), Some(ChannelError::Handshake));
    assert_eq!(Initiated::start(Generation::Latest, &[0u8; 32], &[]).err(), Some(ChannelError::Key));

    let start = || {
        let (pending, initiate) = Initiated::start(Generation::Latest, &gp(), &aads("T1")[0]).unwrap();
        let (ctx_g, sp, _) = their_g_open(&initiate, &aads("T1")[0]);
        (pending, ctx_g, sp)
    };
    // Replayed: the LoginOk of another handshake (another Sp, another primary context).
    let (_, ctx_g, sp) = start();
    let (_, ok) = their_login_ok(&ctx_g, &sp, RESPONSE_LABEL, OK, &aads("T2")[1]);
    let (other, _, _) = start();
    assert_eq!(other.confirm(&ok, &aads("T2")).err(), Some(ChannelError::Decrypt), "replayed");
    // Each case on a fresh handshake of our S with the independent G.
    type Make = fn(&AeadCtxR<A, F, K>, &[u8; 32]) -> String;
    let login_ok: Make = |ctx, sp| their_login_ok(ctx, sp, RESPONSE_LABEL, OK, &aads("T2")[0]).1;
    let cases: [(&str, Make, &str, ChannelError); 8] = [
        ("empty", |_, _| String::new(), "T2", ChannelError::Decode),
        ("short", |_, _| b64(&[1u8; 31]), "T2", ChannelError::Decode),
        ("not base64", |_, _| "!!".into(), "T2", ChannelError::Decode),
        ("wrong AAD", login_ok, "T9", ChannelError::Decrypt),
        (
            "rn",
            |ctx, sp| flip(&their_login_ok(ctx, sp, RESPONSE_LABEL, OK, &aads("T2")[0]).1, 0),
            "T2",
            ChannelError::Decrypt,
        ),
        (
            "ciphertext",
            |ctx, sp| flip(&their_login_ok(ctx, sp, RESPONSE_LABEL, OK, &aads("T2")[0]).1, 40),
            "T2",
            ChannelError::Decrypt,
        ),
        (
            "third label",
            |ctx, sp| their_login_ok(ctx, sp, b"MATRIX_QR_CODE_LOGIN", OK, &aads("T2")[0]).1,
            "T2",
            ChannelError::Decrypt,
        ),
        (
            "content",
            |ctx, sp| their_login_ok(ctx, sp, MSC_RESPONSE_LABEL, b"nope", &aads("T2")[1]).1,
            "T2",
            ChannelError::Handshake,
        ),
    ];
    for (what, make, token, want) in cases {
        let (pending, ctx_g, sp) = start();
        assert_eq!(pending.confirm(&make(&ctx_g, &sp), &aads(token)).err(), Some(want), "{what}");
    }
    let (pending, ctx_g, sp) = start();
    assert!(pending.confirm(&login_ok(&ctx_g, &sp), &aads("T2")).is_ok(), "the unaltered LoginOk opens");
}

/// (d) After the handshake: a failed open (wrong AAD, tampered) leaves the channel as it was, a
/// replayed or reordered message does not open.
#[test]
fn established_channel_refuses_replays_and_survives_failed_opens() {
    let (pending, initiate) = Initiated::start(Generation::Latest, &gp(), &aads("T1")[0]).unwrap();
    let (ctx_g, sp, _) = their_g_open(&initiate, &aads("T1")[0]);
    let (mut response, ok) = their_login_ok(&ctx_g, &sp, RESPONSE_LABEL, OK, &aads("T2")[0]);
    let mut s = pending.confirm(&ok, &aads("T2")).unwrap();
    let first = b64(&response.seal(b"one", &aads("T4")[0]).unwrap());
    let second = b64(&response.seal(b"two", &aads("T6")[0]).unwrap());
    assert_eq!(s.open(&second, &aads("T6")[0]), Err(ChannelError::Decrypt), "out of order");
    assert_eq!(s.open(&first, &aads("T4")[1]), Err(ChannelError::Decrypt), "other form");
    assert_eq!(s.open(&flip(&first, 1), &aads("T4")[0]), Err(ChannelError::Decrypt), "tampered");
    assert_eq!(s.open("", &aads("T4")[0]), Err(ChannelError::Decode));
    assert_eq!(s.open(&first, &aads("T4")[0]).unwrap(), b"one");
    assert_eq!(s.open(&first, &aads("T4")[0]), Err(ChannelError::Decrypt), "replayed");
    assert_eq!(s.open(&second, &aads("T6")[0]).unwrap(), b"two");
}
