//! The secure channel, both generations, over vodozemac 0.11.1 (protocol.md §6):
//! 2024 = ECIES (no AAD), latest = HPKE with the AAD of `aad.rs`.
//!
//! G (the device that generated the QR code) holds the QR key and answers; S (the scanner)
//! initiates. After the handshake S shows the check code and G's user types it in; G must not act on
//! any message before the code matched.

use base64::{Engine as _, engine::general_purpose::STANDARD_NO_PAD as B64};
use vodozemac::{
    Curve25519PublicKey,
    ecies::{self, Ecies, EstablishedEcies},
    hpke::{self, DigitMode, EstablishedHpkeChannel, HpkeRecipientChannel, HpkeSenderChannel},
};

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
    Latest(HpkeRecipientChannel),
}

/// S after sending LoginInitiate, waiting for LoginOk.
pub enum Initiated {
    V2024(EstablishedEcies),
    Latest(hpke::UnidirectionalSenderChannel),
}

/// An established channel (either side).
pub enum Channel {
    V2024(Box<EstablishedEcies>),
    Latest(Box<EstablishedHpkeChannel>),
}

impl Generator {
    pub fn new(generation: Generation) -> Self {
        match generation {
            Generation::V2024 => Generator::V2024(Ecies::new()),
            Generation::Latest => Generator::Latest(HpkeRecipientChannel::new()),
        }
    }

    /// The key to put in the QR code.
    pub fn public_key(&self) -> [u8; 32] {
        match self {
            Generator::V2024(e) => e.public_key().to_bytes(),
            Generator::Latest(h) => h.public_key().to_bytes(),
        }
    }

    /// Reads S's LoginInitiate and answers LoginOk. `initiate_aad` is AAD(T1) and `ok_aad`
    /// AAD(T2) for the latest generation (ignored for 2024). Returns the channel and the payload
    /// to write.
    pub fn accept(
        self,
        initiate: &str,
        initiate_aad: &[u8],
        ok_aad: &[u8],
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
                let msg = hpke::InitialMessage::decode(initiate).map_err(|_| ChannelError::Decode)?;
                let r = h.establish_channel(&msg, initiate_aad).map_err(|_| ChannelError::Decrypt)?;
                if r.message != INITIATE {
                    return Err(ChannelError::Handshake);
                }
                let b = r.channel.establish_bidirectional_channel(OK, ok_aad);
                Ok((Channel::Latest(Box::new(b.channel)), b.message.encode()))
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
        let key = Curve25519PublicKey::from_bytes(*qr_key);
        match generation {
            Generation::V2024 => {
                let r =
                    Ecies::new().establish_outbound_channel(key, INITIATE).map_err(|_| ChannelError::Key)?;
                Ok((Initiated::V2024(r.ecies), r.message.encode()))
            }
            Generation::Latest => {
                let r = HpkeSenderChannel::new()
                    .establish_channel(key, INITIATE, aad)
                    .map_err(|_| ChannelError::Key)?;
                Ok((Initiated::Latest(r.channel), r.message.encode()))
            }
        }
    }

    /// S: reads G's LoginOk (`aad` = AAD(T2)); the channel is then secure for S.
    pub fn confirm(self, ok: &str, aad: &[u8]) -> Result<Channel, ChannelError> {
        match self {
            Initiated::V2024(mut e) => {
                let msg = ecies::Message::decode(ok).map_err(|_| ChannelError::Decode)?;
                if e.decrypt(&msg).map_err(|_| ChannelError::Decrypt)? != OK {
                    return Err(ChannelError::Handshake);
                }
                Ok(Channel::V2024(Box::new(e)))
            }
            Initiated::Latest(h) => {
                let msg = hpke::InitialResponse::decode(ok).map_err(|_| ChannelError::Decode)?;
                let r = h.establish_bidirectional_channel(&msg, aad).map_err(|_| ChannelError::Decrypt)?;
                if r.message != OK {
                    return Err(ChannelError::Handshake);
                }
                Ok(Channel::Latest(Box::new(r.channel)))
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

    /// The two-digit code: 00–99 for 2024, 10–99 for the latest generation.
    pub fn check_code(&self) -> u8 {
        match self {
            Channel::V2024(e) => e.check_code().to_digit(DigitMode::AllowLeadingZero),
            Channel::Latest(h) => h.check_code().to_digit(DigitMode::NoLeadingZero),
        }
    }

    /// The two check-code bytes the digits come from.
    pub fn check_code_bytes(&self) -> [u8; 2] {
        match self {
            Channel::V2024(e) => *e.check_code().as_bytes(),
            Channel::Latest(h) => *h.check_code().as_bytes(),
        }
    }

    /// Encrypts one message; the result is the rendezvous payload.
    pub fn seal(&mut self, plaintext: &[u8], aad: &[u8]) -> String {
        match self {
            Channel::V2024(e) => e.encrypt(plaintext).encode(),
            Channel::Latest(h) => h.seal(plaintext, aad).encode(),
        }
    }

    /// Decrypts one payload. A failure is fatal for the flow: the channel's counters moved on.
    pub fn open(&mut self, payload: &str, aad: &[u8]) -> Result<Vec<u8>, ChannelError> {
        match self {
            Channel::V2024(e) => {
                let msg = ecies::Message::decode(payload).map_err(|_| ChannelError::Decode)?;
                e.decrypt(&msg).map_err(|_| ChannelError::Decrypt)
            }
            Channel::Latest(h) => {
                let msg = hpke::Message::decode(payload).map_err(|_| ChannelError::Decode)?;
                h.open(&msg, aad).map_err(|_| ChannelError::Decrypt)
            }
        }
    }
}

/// The digits of a check code (protocol.md §7): 2024 `b0 % 10, b1 % 10` (00–99); latest
/// `(b0 % 9) + 1, b1 % 10` (10–99).
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
        let (g, ok) = g.accept(&initiate, &a("T1"), &a("T2")).unwrap();
        let s = pending.confirm(&ok, &a("T2")).unwrap();
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
            assert!(g.accept(&initiate, &a("T1"), &a("T2")).is_err());
            let g = Generator::new(generation);
            assert_eq!(g.accept("", &a("T1"), &a("T2")).err(), Some(ChannelError::Decode));
            // An all-zero key is not contributory.
            if generation == Generation::V2024 {
                assert_eq!(Initiated::start(generation, &[0u8; 32], &[]).err().map(|_| ()), Some(()));
            }
        }
        // Latest: LoginInitiate bound to T1 cannot be opened as T7.
        let g = Generator::new(Generation::Latest);
        let (_, initiate) = Initiated::start(Generation::Latest, &g.public_key(), &a("T1")).unwrap();
        assert_eq!(g.accept(&initiate, &a("T7"), &a("T2")).err(), Some(ChannelError::Decrypt));
    }

    /// protocol.md §15.4 with the known keys, through an independent RFC 9180 implementation
    /// (the `hpke` crate): our AAD and framing open the published LoginInitiate, the response
    /// context and the check code come out as published.
    #[test]
    fn deterministic_handshake_vector() {
        use ::hpke::{
            Deserializable, Kem as _, OpModeR, Serializable, aead::ChaCha20Poly1305, kdf::HkdfSha256,
            kem::X25519HkdfSha256,
        };
        type Kem = X25519HkdfSha256;
        let gs = hex::decode("d88a5ca19ead8b3e74ab3bd0e9f783f1bb66b7d543873a7a424f5e78c33cb491").unwrap();
        let sk = <Kem as ::hpke::Kem>::PrivateKey::from_bytes(&gs).unwrap();
        let gp = Kem::sk_to_pk(&sk).to_bytes();
        assert_eq!(b64(&gp), "GxyZBjD1bQO0tpTht1xk8LSLUMQ8SCYjU2cUpCUnrUo");
        let initiate = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode("YTkEpTi8b0sYsxo2Jz3Iv/Qyj5jZWGFBWktyujuP5kbFyDqaTvLwtCVrPp1U3BJCfPnWNecaBL9P1TlYHRav6nR4zE+81oTLWJT5ye8")
            .unwrap();
        let (sp, ct) = initiate.split_at(32);
        assert_eq!(b64(sp), "YTkEpTi8b0sYsxo2Jz3Iv/Qyj5jZWGFBWktyujuP5kY");
        let enc = <Kem as ::hpke::Kem>::EncappedKey::from_bytes(sp).unwrap();
        let mut ctx = ::hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, Kem>(
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
        assert!(hpke::InitialMessage::decode("YTkEpTi8b0sYsxo2Jz3Iv/Qyj5jZWGFBWktyujuP5kbFyDqaTvLwtCVrPp1U3BJCfPnWNecaBL9P1TlYHRav6nR4zE+81oTLWJT5ye8").is_ok());
        let ok = hpke::InitialResponse::decode(
            "hgLQpkulZhU+o5TbRKZt0Q4ejla+woQeOMb/evxFuPwrrqTrGPq5t0X3DAL/XUwWuSA5sfE4wwRMhHpMchMEA2QlWkHL6RA",
        )
        .unwrap();
        assert_eq!(&ok.to_bytes()[..32], rn.as_slice());
    }

    #[test]
    fn digit_mapping_vectors() {
        // protocol.md §15.3, through the same arithmetic vodozemac documents.
        for (bytes, latest, v2024) in
            [([0u8, 0], 10, 0), ([8, 9], 99, 89), ([0xff, 0xff], 45, 55), ([9, 0x0a], 10, 90)]
        {
            assert_eq!((bytes[0] % 9 + 1) * 10 + bytes[1] % 10, latest);
            assert_eq!((bytes[0] % 10) * 10 + bytes[1] % 10, v2024);
        }
    }
}
