//! The secure channel, both generations (docs/protocol.md §6): 2024 = ECIES over vodozemac 0.10.0, the
//! one matrix-sdk 0.18 builds on (no AAD; the same bytes as vodozemac 0.11.1's, tested below),
//! latest = HPKE with the AAD of `aad.rs`, our own implementation of vodozemac 0.11.1's channel
//! (`hpke.rs`).
//!
//! G (the device that generated the QR code) holds the QR key and answers; S (the scanner)
//! initiates. After the handshake S shows the check code and G's user types it in; G must not act on
//! any message before the code matched.
//!
//! Latest generation, leniency on what we read: a handshake message is opened under each candidate
//! AAD in turn (the daemon passes both forms of the base URL: normalised, then as the QR code has
//! it), and S opens LoginOk under both response labels (vodozemac's `MATRIX_QR_CODE_LOGIN_RESPONSE`
//! and the MSC text's `MATRIX_QR_CODE_LOGIN response`). [`Channel::handshake_aad`] tells which AAD
//! the other device used, so the caller can keep that form for the rest of the link. What we write
//! follows vodozemac: G answers under `MATRIX_QR_CODE_LOGIN_RESPONSE`, the only label every
//! vodozemac-based peer (matrix-sdk, Element X) opens.

use base64::{Engine as _, engine::general_purpose::STANDARD_NO_PAD as B64};
use vodozemac::{
    Curve25519PublicKey,
    ecies::{self, Ecies, EstablishedEcies},
};

use crate::hpke;

pub const INITIATE: &[u8] = b"MATRIX_QR_CODE_LOGIN_INITIATE";
pub const OK: &[u8] = b"MATRIX_QR_CODE_LOGIN_OK";

/// Which wire generation a channel speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    V2024,
    Latest,
}

/// Why the channel failed. No variant carries content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("the other device's message is not a valid channel message")]
    Decode,
    #[error("the other device's message could not be decrypted (tampered, replayed or out of order)")]
    Decrypt,
    #[error("the handshake message has the wrong content")]
    Handshake,
    #[error("the other device's key is unusable")]
    Key,
}

/// G before the handshake: owns the key in the QR code.
pub enum Generator {
    V2024(Ecies),
    Latest(hpke::Recipient),
}

/// S after sending LoginInitiate, waiting for LoginOk.
pub enum Initiated {
    V2024(EstablishedEcies),
    Latest(hpke::Sender),
}

/// An established channel (either side).
pub enum Channel {
    V2024(Box<EstablishedEcies>),
    Latest(Box<hpke::Established>),
}

impl Generator {
    pub fn new(generation: Generation) -> Self {
        match generation {
            Generation::V2024 => Generator::V2024(Ecies::new()),
            Generation::Latest => Generator::Latest(hpke::Recipient::new()),
        }
    }

    /// A latest-generation generator with a known secret key (docs/protocol.md §15.4).
    #[cfg(test)]
    pub(crate) fn latest_from_secret(secret: &[u8; 32]) -> Self {
        Generator::Latest(hpke::Recipient::from_secret(secret))
    }

    /// The key to put in the QR code.
    pub fn public_key(&self) -> [u8; 32] {
        match self {
            Generator::V2024(e) => e.public_key().to_bytes(),
            Generator::Latest(h) => h.public_key(),
        }
    }

    /// Reads S's LoginInitiate and answers LoginOk. Returns the channel and the payload to write.
    ///
    /// Latest generation (both lists are ignored for 2024): `initiate_aads` are the candidates for
    /// AAD(T1), tried in order; `ok_aads[i]` is AAD(T2) in the same base-URL form as
    /// `initiate_aads[i]` (the last entry serves for any further index), so LoginOk is bound the way
    /// the other device binds. [`Channel::handshake_aad`] returns the `i` that opened.
    pub fn accept(
        self,
        initiate: &str,
        initiate_aads: &[Vec<u8>],
        ok_aads: &[Vec<u8>],
    ) -> Result<(Channel, String), ChannelError> {
        match self {
            Generator::V2024(e) => {
                let msg = ecies::InitialMessage::decode(initiate).map_err(|_| ChannelError::Decode)?;
                let r = e.establish_inbound_channel(&msg).map_err(|_| ChannelError::Decrypt)?;
                if r.message != INITIATE {
                    return Err(ChannelError::Handshake);
                }
                let mut channel = r.ecies;
                let ok = channel.encrypt(OK).encode();
                Ok((Channel::V2024(Box::new(channel)), ok))
            }
            Generator::Latest(h) => {
                let (opened, message) = h.open_initial(initiate, initiate_aads)?;
                if message != INITIATE {
                    return Err(ChannelError::Handshake);
                }
                let ok_aad =
                    ok_aads.get(opened.aad_index()).or(ok_aads.last()).map_or(&[][..], Vec::as_slice);
                let (channel, ok) = opened.respond(OK, ok_aad);
                Ok((Channel::Latest(Box::new(channel)), ok))
            }
        }
    }
}

impl Initiated {
    /// S: encrypts LoginInitiate to the QR key. Returns the pending channel and the payload.
    pub fn start(
        generation: Generation,
        qr_key: &[u8; 32],
        aad: &[u8],
    ) -> Result<(Self, String), ChannelError> {
        match generation {
            Generation::V2024 => {
                let key = Curve25519PublicKey::from_bytes(*qr_key);
                let r =
                    Ecies::new().establish_outbound_channel(key, INITIATE).map_err(|_| ChannelError::Key)?;
                Ok((Initiated::V2024(r.ecies), r.message.encode()))
            }
            Generation::Latest => {
                let (sender, message) = hpke::Sender::start(qr_key, INITIATE, aad)?;
                Ok((Initiated::Latest(sender), message))
            }
        }
    }

    /// S: reads G's LoginOk; the channel is then secure for S. `aads` are the candidates for
    /// AAD(T2), tried in order under each response label (ignored for 2024).
    pub fn confirm(self, ok: &str, aads: &[Vec<u8>]) -> Result<Channel, ChannelError> {
        match self {
            Initiated::V2024(mut e) => {
                let msg = ecies::Message::decode(ok).map_err(|_| ChannelError::Decode)?;
                if e.decrypt(&msg).map_err(|_| ChannelError::Decrypt)? != OK {
                    return Err(ChannelError::Handshake);
                }
                Ok(Channel::V2024(Box::new(e)))
            }
            Initiated::Latest(h) => {
                let (channel, message) = h.open_response(ok, &hpke::RESPONSE_LABELS, aads)?;
                if message != OK {
                    return Err(ChannelError::Handshake);
                }
                Ok(Channel::Latest(Box::new(channel)))
            }
        }
    }
}

impl Channel {
    pub fn generation(&self) -> Generation {
        match self {
            Channel::V2024(_) => Generation::V2024,
            Channel::Latest(_) => Generation::Latest,
        }
    }

    /// The index, in the candidate list given to [`Generator::accept`] or [`Initiated::confirm`], of
    /// the AAD the other device's handshake message opened with (0 for 2024).
    pub fn handshake_aad(&self) -> usize {
        match self {
            Channel::V2024(_) => 0,
            Channel::Latest(h) => h.aad_index(),
        }
    }

    /// The two-digit code: 00–99 for 2024, 10–99 for the latest generation.
    pub fn check_code(&self) -> u8 {
        match self {
            Channel::V2024(e) => check_code_digits(*e.check_code().as_bytes(), Generation::V2024),
            Channel::Latest(h) => check_code_digits(h.check_code(), Generation::Latest),
        }
    }

    /// The two check-code bytes the digits come from.
    pub fn check_code_bytes(&self) -> [u8; 2] {
        match self {
            Channel::V2024(e) => *e.check_code().as_bytes(),
            Channel::Latest(h) => h.check_code(),
        }
    }

    /// Encrypts one message; the result is the rendezvous payload.
    pub fn seal(&mut self, plaintext: &[u8], aad: &[u8]) -> String {
        match self {
            Channel::V2024(e) => e.encrypt(plaintext).encode(),
            Channel::Latest(h) => h.seal(plaintext, aad),
        }
    }

    /// Decrypts one payload. A failure is fatal for the flow; it leaves the latest generation's
    /// channel as it was (another AAD may be tried).
    pub fn open(&mut self, payload: &str, aad: &[u8]) -> Result<Vec<u8>, ChannelError> {
        match self {
            Channel::V2024(e) => {
                let msg = ecies::Message::decode(payload).map_err(|_| ChannelError::Decode)?;
                e.decrypt(&msg).map_err(|_| ChannelError::Decrypt)
            }
            Channel::Latest(h) => h.open(payload, aad),
        }
    }
}

/// The digits of a check code (docs/protocol.md §7): 2024 `b0 % 10, b1 % 10` (00–99, vodozemac's
/// `DigitMode::AllowLeadingZero`); latest `(b0 % 9) + 1, b1 % 10` (10–99, `NoLeadingZero`).
pub fn check_code_digits(bytes: [u8; 2], generation: Generation) -> u8 {
    let first = match generation {
        Generation::V2024 => bytes[0] % 10,
        Generation::Latest => bytes[0] % 9 + 1,
    };
    first * 10 + bytes[1] % 10
}

/// Unpadded standard base64, as the channel payloads use it.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aad::aad_raw;

    const BASE: &str = "https://matrix-client.matrix.org";
    const ID: &str = "e8da6355-550b-4a32-a193-1619d9830668";

    fn a(token: &str) -> Vec<u8> {
        aad_raw(BASE, ID, token)
    }

    fn handshake(generation: Generation) -> (Channel, Channel) {
        let g = Generator::new(generation);
        let key = g.public_key();
        let (pending, initiate) = Initiated::start(generation, &key, &a("T1")).unwrap();
        let (g, ok) = g.accept(&initiate, &[a("T1")], &[a("T2")]).unwrap();
        let s = pending.confirm(&ok, &[a("T2")]).unwrap();
        (g, s)
    }

    #[test]
    fn both_generations_agree_and_talk_both_ways() {
        for generation in [Generation::V2024, Generation::Latest] {
            let (mut g, mut s) = handshake(generation);
            assert_eq!(g.check_code(), s.check_code());
            if generation == Generation::Latest {
                assert!((10..=99).contains(&g.check_code()));
            }
            for i in 0..3 {
                let msg = format!(r#"{{"type":"m.login.success","i":{i}}}"#);
                let p = s.seal(msg.as_bytes(), &a("T3"));
                assert_eq!(g.open(&p, &a("T3")).unwrap(), msg.as_bytes());
                let p = g.seal(msg.as_bytes(), &a("T4"));
                assert_eq!(s.open(&p, &a("T4")).unwrap(), msg.as_bytes());
            }
        }
    }

    #[test]
    fn tampered_replayed_out_of_order_and_wrong_aad_fail() {
        for generation in [Generation::V2024, Generation::Latest] {
            let (mut g, mut s) = handshake(generation);
            let first = s.seal(b"one", &a("T3"));
            let second = s.seal(b"two", &a("T5"));
            // Out of order.
            assert_eq!(handshake_fresh_open(generation, &second), Err(ChannelError::Decrypt));
            assert_eq!(g.open(&first, &a("T3")).unwrap(), b"one");
            // Replayed.
            assert!(g.open(&first, &a("T3")).is_err());
            let (mut g, mut s) = handshake(generation);
            let mut bytes =
                base64::engine::general_purpose::STANDARD_NO_PAD.decode(s.seal(b"x", &a("T3"))).unwrap();
            bytes[0] ^= 1;
            assert_eq!(g.open(&b64(&bytes), &a("T3")), Err(ChannelError::Decrypt));
            let (mut g, mut s) = handshake(generation);
            if generation == Generation::Latest {
                let p = s.seal(b"x", &a("T3"));
                assert_eq!(g.open(&p, &a("T9")), Err(ChannelError::Decrypt), "AAD must bind the token");
            }
            assert_eq!(g.open("@@not base64@@", &a("T3")), Err(ChannelError::Decode));
        }
    }

    fn handshake_fresh_open(generation: Generation, payload: &str) -> Result<Vec<u8>, ChannelError> {
        let (mut g, _) = handshake(generation);
        g.open(payload, &a("T5"))
    }

    #[test]
    fn handshake_rejects_bad_keys_and_wrong_content() {
        for generation in [Generation::V2024, Generation::Latest] {
            let g = Generator::new(generation);
            // Encrypted to another key.
            let (_, initiate) =
                Initiated::start(generation, &Generator::new(generation).public_key(), &a("T1")).unwrap();
            assert!(g.accept(&initiate, &[a("T1")], &[a("T2")]).is_err());
            let g = Generator::new(generation);
            assert_eq!(g.accept("", &[a("T1")], &[a("T2")]).err(), Some(ChannelError::Decode));
            // An all-zero key is not contributory.
            assert_eq!(Initiated::start(generation, &[0u8; 32], &[]).err(), Some(ChannelError::Key));
        }
        // Latest: LoginInitiate bound to T1 cannot be opened as T7.
        let g = Generator::new(Generation::Latest);
        let (_, initiate) = Initiated::start(Generation::Latest, &g.public_key(), &a("T1")).unwrap();
        assert_eq!(g.accept(&initiate, &[a("T7")], &[a("T2")]).err(), Some(ChannelError::Decrypt));
    }

    /// docs/protocol.md §15.4 with the known keys, through an independent RFC 9180 implementation
    /// (the `hpke` crate): our AAD and framing open the published LoginInitiate, the response
    /// context and the check code come out as published.
    #[test]
    fn deterministic_handshake_vector() {
        use hpke_latest::{
            Deserializable, Kem as _, OpModeR, Serializable, aead::ChaCha20Poly1305, kdf::HkdfSha256,
            kem::X25519HkdfSha256,
        };
        type Kem = X25519HkdfSha256;
        let gs = hex::decode("d88a5ca19ead8b3e74ab3bd0e9f783f1bb66b7d543873a7a424f5e78c33cb491").unwrap();
        let sk = <Kem as hpke_latest::Kem>::PrivateKey::from_bytes(&gs).unwrap();
        let gp = Kem::sk_to_pk(&sk).to_bytes();
        assert_eq!(b64(&gp), "GxyZBjD1bQO0tpTht1xk8LSLUMQ8SCYjU2cUpCUnrUo");
        let initiate = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode("YTkEpTi8b0sYsxo2Jz3Iv/Qyj5jZWGFBWktyujuP5kbFyDqaTvLwtCVrPp1U3BJCfPnWNecaBL9P1TlYHRav6nR4zE+81oTLWJT5ye8")
            .unwrap();
        let (sp, ct) = initiate.split_at(32);
        assert_eq!(b64(sp), "YTkEpTi8b0sYsxo2Jz3Iv/Qyj5jZWGFBWktyujuP5kY");
        let enc = <Kem as hpke_latest::Kem>::EncappedKey::from_bytes(sp).unwrap();
        let mut ctx = hpke_latest::setup_receiver::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeR::Base,
            &sk,
            &enc,
            b"MATRIX_QR_CODE_LOGIN",
        )
        .unwrap();
        assert_eq!(ctx.open(ct, &a("SEQ1")).unwrap(), INITIATE);
        let mut secret = [0u8; 32];
        ctx.export(b"MATRIX_QR_CODE_LOGIN_RESPONSE", &mut secret).unwrap();
        assert_eq!(hex::encode(secret), "7fc9169958022e18becb1fb74c67abdd51875e47f04863fbbb41ba816a920e71");
        // Response context: HKDF-SHA256(salt = Sp ‖ rn, secret) -> key, nonce.
        let rn = hex::decode("8602d0a64ba566153ea394db44a66dd10e1e8e56bec2841e38c6ff7afc45b8fc").unwrap();
        let salt = [sp, &rn].concat();
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), &secret);
        let (mut key, mut nonce) = ([0u8; 32], [0u8; 12]);
        hk.expand(b"key", &mut key).unwrap();
        hk.expand(b"nonce", &mut nonce).unwrap();
        assert_eq!(hex::encode(key), "56647d9a83877fc234f1a5a8d5e49a96345a414688d4aa9579ffd149630dcb27");
        assert_eq!(hex::encode(nonce), "2659a7f89c5d5a710733b1aa");
        // The check code of vodozemac 0.11.1: raw-key context, NoLeadingZero digits -> 80.
        let mut check = [0u8; 2];
        let context = [b"MATRIX_QR_CODE_LOGIN_CHECKCODE".as_slice(), &gp, sp].concat();
        ctx.export(&context, &mut check).unwrap();
        assert_eq!(check, [0xc4, 0xaa]);
        assert_eq!(check_code_digits(check, Generation::Latest), 80);
        // S's first JSON message, sealed with ctxS at seq 1 under AAD(SEQ3), opens with ctxG.
        let success = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode("ZptIJDmW3h+H2s4hCRhuZUcPlew2GLGiz58P+jL8wS2IPwAosEgKMDbp")
            .unwrap();
        assert_eq!(ctx.open(&success, &a("SEQ3")).unwrap(), br#"{"type":"m.login.success"}"#);
        // vodozemac's message framing decodes the published LoginInitiate and LoginOk.
        assert!(vodozemac_latest::hpke::InitialMessage::decode("YTkEpTi8b0sYsxo2Jz3Iv/Qyj5jZWGFBWktyujuP5kbFyDqaTvLwtCVrPp1U3BJCfPnWNecaBL9P1TlYHRav6nR4zE+81oTLWJT5ye8").is_ok());
        let ok = vodozemac_latest::hpke::InitialResponse::decode(
            "hgLQpkulZhU+o5TbRKZt0Q4ejla+woQeOMb/evxFuPwrrqTrGPq5t0X3DAL/XUwWuSA5sfE4wwRMhHpMchMEA2QlWkHL6RA",
        )
        .unwrap();
        assert_eq!(&ok.to_bytes()[..32], rn.as_slice());
    }

    /// The 2024 channel on vodozemac 0.10.0 against vodozemac 0.11.1's ECIES in both roles: the
    /// handshake completes, the check codes agree (bytes, and the digits with a leading zero),
    /// messages go both ways.
    #[test]
    fn v2024_interoperates_with_vodozemac_latest_in_both_roles() {
        use vodozemac_latest::{
            Curve25519PublicKey as LatestKey,
            ecies::{DigitMode, Ecies as LatestEcies, InitialMessage, Message},
        };
        // Our G, vodozemac 0.11.1's S.
        let g = Generator::new(Generation::V2024);
        let theirs = LatestEcies::new()
            .establish_outbound_channel(LatestKey::from_bytes(g.public_key()), INITIATE)
            .unwrap();
        let (mut ours, ok) = g.accept(&theirs.message.encode(), &[], &[]).unwrap();
        let mut theirs = theirs.ecies;
        assert_eq!(theirs.decrypt(&Message::decode(&ok).unwrap()).unwrap(), OK);
        assert_eq!(theirs.check_code().as_bytes(), &ours.check_code_bytes());
        assert_eq!(theirs.check_code().to_digit(DigitMode::AllowLeadingZero), ours.check_code());
        for i in 0..3 {
            let msg = format!("s{i}");
            assert_eq!(ours.open(&theirs.encrypt(msg.as_bytes()).encode(), &[]).unwrap(), msg.as_bytes());
            let sealed = ours.seal(msg.as_bytes(), &[]);
            assert_eq!(theirs.decrypt(&Message::decode(&sealed).unwrap()).unwrap(), msg.as_bytes());
        }

        // vodozemac 0.11.1's G, our S.
        let theirs = LatestEcies::new();
        let (pending, initiate) =
            Initiated::start(Generation::V2024, &theirs.public_key().to_bytes(), &[]).unwrap();
        let r = theirs.establish_inbound_channel(&InitialMessage::decode(&initiate).unwrap()).unwrap();
        assert_eq!(r.message, INITIATE);
        let mut theirs = r.ecies;
        let mut ours = pending.confirm(&theirs.encrypt(OK).encode(), &[]).unwrap();
        assert_eq!(theirs.check_code().as_bytes(), &ours.check_code_bytes());
        assert_eq!(theirs.check_code().to_digit(DigitMode::AllowLeadingZero), ours.check_code());
        for i in 0..3 {
            let msg = format!("g{i}");
            let sealed = ours.seal(msg.as_bytes(), &[]);
            assert_eq!(theirs.decrypt(&Message::decode(&sealed).unwrap()).unwrap(), msg.as_bytes());
            assert_eq!(ours.open(&theirs.encrypt(msg.as_bytes()).encode(), &[]).unwrap(), msg.as_bytes());
        }
    }

    /// The 2024 digits are vodozemac 0.10.0's own `CheckCode::to_digit` (leading zero allowed).
    #[test]
    fn v2024_digits_are_vodozemacs() {
        for _ in 0..20 {
            let (g, _) = handshake(Generation::V2024);
            let Channel::V2024(e) = &g else { unreachable!() };
            assert_eq!(g.check_code(), e.check_code().to_digit());
        }
    }

    #[test]
    fn digit_mapping_vectors() {
        // docs/protocol.md §15.3, through the same arithmetic vodozemac documents.
        for (bytes, latest, v2024) in
            [([0u8, 0], 10, 0), ([8, 9], 99, 89), ([0xff, 0xff], 45, 55), ([9, 0x0a], 10, 90)]
        {
            assert_eq!((bytes[0] % 9 + 1) * 10 + bytes[1] % 10, latest);
            assert_eq!((bytes[0] % 10) * 10 + bytes[1] % 10, v2024);
        }
    }
}
