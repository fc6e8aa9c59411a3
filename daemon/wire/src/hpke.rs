//! The latest generation's secure channel (docs/protocol.md §6.2, §6.3, §7): MSC4388's HPKE channel
//! exactly as vodozemac 0.11.1 builds it (`src/hpke/`), on the `hpke` crate of matrix-sdk's
//! RustCrypto generation (`=0.13.0`: x25519-dalek 2, chacha20poly1305 0.10, hkdf 0.12, sha2 0.10),
//! plus what vodozemac's API cannot do: try several AADs (the two forms of the base URL) and both
//! response labels from one primary context without consuming it. RFC 9180 fixes every byte, so
//! the messages are those of vodozemac 0.11.1 on `hpke` 0.14.1; the tests prove it against both.
//!
//! - RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, `info` =
//!   `MATRIX_QR_CODE_LOGIN`. S runs `SetupBaseS(Gp)` → (`Sp`, ctxS); G runs `SetupBaseR(Sp, Gs)` →
//!   ctxG.
//! - The response direction (G → S, the OHTTP construction of RFC 9458 §4.4): `secret =
//!   ctx.Export(label, 32)`, then HKDF-SHA256 with `salt = Sp ‖ rn` expands `"key"` (32 bytes) and
//!   `"nonce"` (12 bytes) into a fresh AEAD context (RFC 9180 §5.2 `ContextS`/`ContextR`: nonce =
//!   base nonce XOR the big-endian sequence number) that never exports. G seals with it, S opens
//!   with it. `hpke` 0.13 cannot build a context from a raw key and nonce (0.14 has
//!   `danger::streaming_enc` for it), so [`ResponseContext`] is that context, written out.
//! - Check code: `ctx.Export("MATRIX_QR_CODE_LOGIN_CHECKCODE" ‖ Gp ‖ Sp, 2)` on the primary
//!   context (`Gp` the QR key, `Sp` the encapsulated key).
//! - Framing, unpadded standard base64: LoginInitiate = `Sp ‖ ct`, LoginOk = `rn ‖ ct`, later
//!   messages = `ct` (ciphertext ‖ tag).
//!
//! Labels: G always answers with vodozemac's `MATRIX_QR_CODE_LOGIN_RESPONSE` (every vodozemac-based
//! peer, matrix-sdk and Element X among them, opens nothing else); S accepts that one and the MSC
//! text's `MATRIX_QR_CODE_LOGIN response`.
//!
//! Trying several candidates is sound because an AEAD context is unchanged by a failed open (its
//! sequence number moves on success only): the first candidate that opens wins, and the context
//! continues at the same sequence number as a single-candidate one would.
//!
//! Secrets: G's private key (x25519-dalek, zeroized on drop), the primary AEAD contexts (key
//! material and exporter secrets zeroized on drop by the `hpke` crate), the response contexts (the
//! cipher's key zeroized on drop by chacha20poly1305, the base nonce here), the exported response
//! secret and the derived key (zeroized here). No type of this module implements `Debug`.

use ::hpke::{
    Deserializable as _, HpkeError, Kem as _, OpModeR, OpModeS, Serializable as _,
    aead::{AeadCtxR, AeadCtxS, ChaCha20Poly1305},
    kdf::HkdfSha256,
    kem::X25519HkdfSha256,
};
use base64::{Engine as _, engine::general_purpose::STANDARD_NO_PAD as B64};
use chacha20poly1305::{AeadInPlace as _, KeyInit as _, Tag};
use hkdf::Hkdf;
use rand_core::{OsRng, TryRngCore as _};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::channel::{ChannelError, b64};

type Kem = X25519HkdfSha256;
type Aead = ChaCha20Poly1305;
type Kdf = HkdfSha256;
type PrivateKey = <Kem as ::hpke::Kem>::PrivateKey;
type PublicKey = <Kem as ::hpke::Kem>::PublicKey;
type EncappedKey = <Kem as ::hpke::Kem>::EncappedKey;
/// S's primary context (seals).
type SealContext = AeadCtxS<Aead, Kdf, Kem>;
/// G's primary context (opens).
type OpenContext = AeadCtxR<Aead, Kdf, Kem>;

/// HPKE `info` of every context.
pub const INFO: &[u8] = b"MATRIX_QR_CODE_LOGIN";
/// The response export label of vodozemac (`info` + `_RESPONSE`): the one we send.
pub const RESPONSE_LABEL: &[u8] = b"MATRIX_QR_CODE_LOGIN_RESPONSE";
/// The response export label as the MSC4388 text writes it: accepted, never sent.
pub const MSC_RESPONSE_LABEL: &[u8] = b"MATRIX_QR_CODE_LOGIN response";
/// Both labels, in the order S tries them.
pub const RESPONSE_LABELS: [&[u8]; 2] = [RESPONSE_LABEL, MSC_RESPONSE_LABEL];
/// Prefix of the check code's exporter context.
const CHECK_CODE_LABEL: &[u8] = b"MATRIX_QR_CODE_LOGIN_CHECKCODE";
/// Length of `Sp` and of `rn` (the AEAD key size, as vodozemac and RFC 9458 have it).
const PREFIX: usize = 32;
/// ChaCha20-Poly1305's key, nonce and tag sizes (RFC 9180 `Nk`, `Nn`, `Nt`).
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The response direction's AEAD context (RFC 9180 §5.2, as `hpke` builds one from a raw key and
/// base nonce): message `seq` uses `base_nonce XOR I2OSP(seq, 12)`; `seq` moves on a successful
/// seal or open only; after the 2⁶⁴th message nothing more seals or opens (as in `hpke`).
struct ResponseContext {
    cipher: chacha20poly1305::ChaCha20Poly1305,
    base_nonce: Zeroizing<[u8; NONCE_LEN]>,
    seq: u64,
    exhausted: bool,
}

impl ResponseContext {
    fn new(key: &[u8; KEY_LEN], base_nonce: [u8; NONCE_LEN]) -> Self {
        Self {
            cipher: chacha20poly1305::ChaCha20Poly1305::new(key.into()),
            base_nonce: Zeroizing::new(base_nonce),
            seq: 0,
            exhausted: false,
        }
    }

    /// `ComputeNonce(seq)`: the sequence number big-endian in the nonce's last 8 bytes, XOR the
    /// base nonce.
    fn nonce(&self) -> chacha20poly1305::Nonce {
        let mut nonce = *self.base_nonce;
        for (byte, seq) in nonce[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *byte ^= seq;
        }
        nonce.into()
    }

    /// `IncrementSeq()`, after a successful seal or open.
    fn advance(&mut self) {
        match self.seq.checked_add(1) {
            Some(next) => self.seq = next,
            None => self.exhausted = true,
        }
    }

    /// `ContextS.Seal(aad, pt)`: ciphertext ‖ tag. `None` once the sequence numbers ran out.
    fn seal(&mut self, plaintext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if self.exhausted {
            return None;
        }
        let mut buffer = plaintext.to_vec();
        let tag = self.cipher.encrypt_in_place_detached(&self.nonce(), aad, &mut buffer).ok()?;
        buffer.extend_from_slice(&tag);
        self.advance();
        Some(buffer)
    }

    /// `ContextR.Open(aad, ct)`. A failure leaves the context as it was.
    fn open(&mut self, ciphertext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if self.exhausted {
            return None;
        }
        let (body, tag) = ciphertext.split_at_checked(ciphertext.len().checked_sub(TAG_LEN)?)?;
        let mut buffer = body.to_vec();
        self.cipher.decrypt_in_place_detached(&self.nonce(), aad, &mut buffer, Tag::from_slice(tag)).ok()?;
        self.advance();
        Some(buffer)
    }
}

/// The exporter both kinds of primary context have.
trait Exporter {
    fn export_into(&self, exporter_context: &[u8], out: &mut [u8]) -> Result<(), HpkeError>;
}

impl Exporter for SealContext {
    fn export_into(&self, exporter_context: &[u8], out: &mut [u8]) -> Result<(), HpkeError> {
        self.export(exporter_context, out)
    }
}

impl Exporter for OpenContext {
    fn export_into(&self, exporter_context: &[u8], out: &mut [u8]) -> Result<(), HpkeError> {
        self.export(exporter_context, out)
    }
}

/// The response context (vodozemac `response_context.rs`): key and base nonce from
/// HKDF-SHA256(salt = `Sp ‖ rn`, ikm = `primary.Export(label, 32)`).
fn response_context(
    primary: &impl Exporter,
    label: &[u8],
    sp: &[u8; PREFIX],
    rn: &[u8; PREFIX],
) -> ResponseContext {
    let mut secret = Zeroizing::new([0u8; KEY_LEN]);
    primary.export_into(label, secret.as_mut_slice()).expect("32 bytes are within the export limit");
    let salt = [sp.as_slice(), rn.as_slice()].concat();
    let hkdf = Hkdf::<Sha256>::new(Some(&salt), secret.as_slice());
    let (mut key, mut nonce) = (Zeroizing::new([0u8; KEY_LEN]), Zeroizing::new([0u8; NONCE_LEN]));
    hkdf.expand(b"key", key.as_mut_slice()).expect("32 bytes are a valid HKDF-SHA256 length");
    hkdf.expand(b"nonce", nonce.as_mut_slice()).expect("12 bytes are a valid HKDF-SHA256 length");
    ResponseContext::new(&key, *nonce)
}

/// The check code's two bytes, exported from the primary context.
fn check_code(primary: &impl Exporter, gp: &[u8; 32], sp: &[u8; 32]) -> [u8; 2] {
    let context = [CHECK_CODE_LABEL, gp.as_slice(), sp.as_slice()].concat();
    let mut bytes = [0u8; 2];
    primary.export_into(&context, &mut bytes).expect("2 bytes are within the export limit");
    bytes
}

/// Splits a base64 payload into its 32-byte prefix (`Sp` or `rn`) and the ciphertext.
fn decode_prefixed(payload: &str) -> Result<([u8; PREFIX], Vec<u8>), ChannelError> {
    let bytes = B64.decode(payload).map_err(|_| ChannelError::Decode)?;
    let (prefix, ciphertext) = bytes.split_first_chunk::<PREFIX>().ok_or(ChannelError::Decode)?;
    Ok((*prefix, ciphertext.to_vec()))
}

/// Opens `ciphertext` under the first AAD of `aads` that fits; returns the plaintext and the AAD's
/// index. A failed try leaves `ctx` as it was.
fn open_first(ctx: &mut OpenContext, ciphertext: &[u8], aads: &[Vec<u8>]) -> Option<(Vec<u8>, usize)> {
    aads.iter().enumerate().find_map(|(i, aad)| ctx.open(ciphertext, aad).ok().map(|plain| (plain, i)))
}

/// [`open_first`] for a response context.
fn open_first_response(
    ctx: &mut ResponseContext,
    ciphertext: &[u8],
    aads: &[Vec<u8>],
) -> Option<(Vec<u8>, usize)> {
    aads.iter().enumerate().find_map(|(i, aad)| ctx.open(ciphertext, aad).map(|plain| (plain, i)))
}

fn public_bytes(key: &PublicKey) -> [u8; 32] {
    key.to_bytes().into()
}

/// The operating system's random number generator, as `hpke` wants one.
fn os_rng() -> impl rand_core::CryptoRng {
    OsRng.unwrap_err()
}

/// G before the handshake: the key pair whose public half is in the QR code. Opening S's
/// LoginInitiate borrows it, so a failed try costs nothing.
pub struct Recipient {
    secret: PrivateKey,
    public: [u8; 32],
}

impl Recipient {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let (secret, public) = Kem::gen_keypair(&mut os_rng());
        Self { secret, public: public_bytes(&public) }
    }

    /// A recipient with a known secret key (docs/protocol.md §15.4).
    #[cfg(test)]
    pub(crate) fn from_secret(secret: &[u8; 32]) -> Self {
        let secret = PrivateKey::from_bytes(secret).expect("32 bytes");
        let public = public_bytes(&Kem::sk_to_pk(&secret));
        Self { secret, public }
    }

    /// `Gp`, for the QR code.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// Opens S's LoginInitiate (`Sp ‖ ct`) under the first of `aads` that fits.
    pub fn open_initial(&self, payload: &str, aads: &[Vec<u8>]) -> Result<(Opened, Vec<u8>), ChannelError> {
        let (sp, ciphertext) = decode_prefixed(payload)?;
        let enc = EncappedKey::from_bytes(&sp).map_err(|_| ChannelError::Decode)?;
        // Fails only for a key whose shared secret is all zeros: nothing can open then.
        let mut ctx = ::hpke::setup_receiver::<Aead, Kdf, Kem>(&OpModeR::Base, &self.secret, &enc, INFO)
            .map_err(|_| ChannelError::Decrypt)?;
        let (plaintext, aad_index) = open_first(&mut ctx, &ciphertext, aads).ok_or(ChannelError::Decrypt)?;
        Ok((Opened { ctx, gp: self.public, sp, aad_index }, plaintext))
    }
}

/// G after opening LoginInitiate: its primary context (ctxG), before the response.
pub struct Opened {
    ctx: OpenContext,
    gp: [u8; 32],
    sp: [u8; 32],
    aad_index: usize,
}

impl Opened {
    /// Which of the candidate AADs opened LoginInitiate.
    pub fn aad_index(&self) -> usize {
        self.aad_index
    }

    /// Builds the response context under vodozemac's label with a fresh `rn` and seals LoginOk
    /// (`rn ‖ ct`) with `aad`.
    pub fn respond(self, plaintext: &[u8], aad: &[u8]) -> (Established, String) {
        let mut rn = [0u8; PREFIX];
        OsRng.try_fill_bytes(&mut rn).expect("the system's random number generator works");
        self.respond_with(rn, plaintext, aad)
    }

    /// [`Opened::respond`] with a given response nonce (for the vectors of docs/protocol.md §15.4).
    pub(crate) fn respond_with(
        self,
        rn: [u8; PREFIX],
        plaintext: &[u8],
        aad: &[u8],
    ) -> (Established, String) {
        let Opened { ctx, gp, sp, aad_index } = self;
        let mut response = response_context(&ctx, RESPONSE_LABEL, &sp, &rn);
        let ciphertext = response.seal(plaintext, aad).expect("the first message of a context seals");
        let check_code = check_code(&ctx, &gp, &sp);
        let message = b64(&[rn.as_slice(), &ciphertext].concat());
        let role = Role::Recipient { primary: ctx, response };
        (Established { role, check_code, aad_index }, message)
    }
}

/// S after sending LoginInitiate: its primary context (ctxS), waiting for LoginOk.
pub struct Sender {
    ctx: SealContext,
    gp: [u8; 32],
    sp: [u8; 32],
}

impl Sender {
    /// Encapsulates to the QR key and seals LoginInitiate (`Sp ‖ ct`) with `aad`.
    pub fn start(qr_key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<(Self, String), ChannelError> {
        let pk = PublicKey::from_bytes(qr_key).map_err(|_| ChannelError::Key)?;
        let (enc, mut ctx) =
            ::hpke::setup_sender::<Aead, Kdf, Kem, _>(&OpModeS::Base, &pk, INFO, &mut os_rng())
                .map_err(|_| ChannelError::Key)?;
        let sp: [u8; 32] = enc.to_bytes().into();
        let ciphertext = ctx.seal(plaintext, aad).expect("the first message of a context seals");
        let message = b64(&[sp.as_slice(), &ciphertext].concat());
        Ok((Self { ctx, gp: *qr_key, sp }, message))
    }

    /// Opens G's LoginOk (`rn ‖ ct`): for each label in turn, a response context from the same
    /// primary context, tried with each AAD. The first combination that opens is kept.
    pub fn open_response(
        self,
        payload: &str,
        labels: &[&[u8]],
        aads: &[Vec<u8>],
    ) -> Result<(Established, Vec<u8>), ChannelError> {
        let (rn, ciphertext) = decode_prefixed(payload)?;
        for label in labels {
            let mut response = response_context(&self.ctx, label, &self.sp, &rn);
            if let Some((plaintext, aad_index)) = open_first_response(&mut response, &ciphertext, aads) {
                let check_code = check_code(&self.ctx, &self.gp, &self.sp);
                let role = Role::Sender { primary: self.ctx, response };
                return Ok((Established { role, check_code, aad_index }, plaintext));
            }
        }
        Err(ChannelError::Decrypt)
    }
}

/// Which contexts seal and open: S seals with ctxS and opens with its response context, G the
/// opposite.
enum Role {
    Sender { primary: SealContext, response: ResponseContext },
    Recipient { primary: OpenContext, response: ResponseContext },
}

/// An established channel, either side.
pub struct Established {
    role: Role,
    check_code: [u8; 2],
    aad_index: usize,
}

impl Established {
    /// The check code's two bytes (docs/protocol.md §7).
    pub fn check_code(&self) -> [u8; 2] {
        self.check_code
    }

    /// Which of the candidate AADs opened the other device's handshake message (LoginInitiate for
    /// G, LoginOk for S).
    pub fn aad_index(&self) -> usize {
        self.aad_index
    }

    /// Seals one message (`ct`, base64).
    ///
    /// # Panics
    /// After 2⁶⁴ messages, as vodozemac.
    pub fn seal(&mut self, plaintext: &[u8], aad: &[u8]) -> String {
        let sealed = match &mut self.role {
            Role::Sender { primary, .. } => primary.seal(plaintext, aad).ok(),
            Role::Recipient { response, .. } => response.seal(plaintext, aad),
        };
        b64(&sealed.expect("fewer than 2^64 messages"))
    }

    /// Opens one message. A failure leaves the channel as it was.
    pub fn open(&mut self, payload: &str, aad: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let ciphertext = B64.decode(payload).map_err(|_| ChannelError::Decode)?;
        if ciphertext.is_empty() {
            return Err(ChannelError::Decode);
        }
        let opened = match &mut self.role {
            Role::Sender { response, .. } => response.open(&ciphertext, aad),
            Role::Recipient { primary, .. } => primary.open(&ciphertext, aad).ok(),
        };
        opened.ok_or(ChannelError::Decrypt)
    }
}

#[cfg(test)]
mod tests;
