//! The login QR code, both generations (docs/protocol.md §4): parsing and encoding.
//!
//! ```text
//! 2024:   "MATRIX" 02 <intent 03|04> <key 32> <u16 len> <rendezvous URL> [<u16 len> <server name or URL>]  (04 only)
//! latest: "MATRIX" | "IO_ELEMENT_MSC4388"  03 <intent 00|01> <key 32> <u8 len> <rendezvous id> <u16 len> <base URL>
//! ```

use std::fmt;

/// Who showed the QR code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// A new device that wants to sign in (2024 `0x03`, latest `0x00`).
    Login,
    /// A signed-in device offering to sign another one in (2024 `0x04`, latest `0x01`).
    Reciprocate,
}

/// Which prefix a latest-generation code used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// `MATRIX`
    Stable,
    /// `IO_ELEMENT_MSC4388`
    Unstable,
}

/// A decoded login QR code.
#[derive(Clone, PartialEq, Eq)]
pub enum LoginQr {
    V2024 {
        intent: Intent,
        key: [u8; 32],
        /// Absolute rendezvous session URL.
        rendezvous_url: String,
        /// Only with `Reciprocate`: the existing device's server name (or, from matrix-sdk, a URL).
        server: Option<String>,
    },
    Msc4388 {
        prefix: Prefix,
        intent: Intent,
        key: [u8; 32],
        rendezvous_id: String,
        /// Client-server base URL of the rendezvous host.
        base_url: String,
    },
}

/// Redacted: a QR code is a secret.
impl fmt::Debug for LoginQr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginQr::V2024 { intent, .. } => write!(f, "LoginQr::V2024({intent:?}, <redacted>)"),
            LoginQr::Msc4388 { intent, prefix, .. } => {
                write!(f, "LoginQr::Msc4388({prefix:?}, {intent:?}, <redacted>)")
            }
        }
    }
}

/// Why bytes are not a login QR code. Messages carry no content of the code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrError {
    #[error("not a Matrix login QR code (unknown prefix)")]
    Prefix,
    #[error("this is a device verification QR code, not a login QR code")]
    Verification,
    #[error("unknown QR code version or type {0:#04x}")]
    Type(u8),
    #[error("unknown intent {0:#04x}")]
    Intent(u8),
    #[error("the QR code is truncated")]
    Truncated,
    #[error("the QR code has {0} bytes of trailing data")]
    Trailing(usize),
    #[error("a text field of the QR code is not UTF-8")]
    Utf8,
    #[error("the rendezvous ID is empty or has characters outside [0-9A-Za-z._~-]")]
    RendezvousId,
    #[error("the URL in the QR code is not an absolute http(s) URL")]
    Url,
    #[error("the QR code is too long ({0} bytes)")]
    TooLong(usize),
}

/// Longest payload we accept: a version-40 binary QR code holds 2953 bytes.
pub const MAX_QR_BYTES: usize = 2953;

const MATRIX: &[u8] = b"MATRIX";
const UNSTABLE: &[u8] = b"IO_ELEMENT_MSC4388";

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], QrError> {
        if self.0.len() < n {
            return Err(QrError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, QrError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<usize, QrError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn key(&mut self) -> Result<[u8; 32], QrError> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }
    fn text(&mut self, n: usize) -> Result<String, QrError> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| QrError::Utf8)
    }
    fn end(&self) -> Result<(), QrError> {
        if self.0.is_empty() { Ok(()) } else { Err(QrError::Trailing(self.0.len())) }
    }
}

fn check_url(s: &str) -> Result<(), QrError> {
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
        _ => Err(QrError::Url),
    }
}

fn check_id(id: &str) -> Result<(), QrError> {
    let ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b));
    if ok { Ok(()) } else { Err(QrError::RendezvousId) }
}

impl LoginQr {
    pub fn intent(&self) -> Intent {
        match self {
            LoginQr::V2024 { intent, .. } | LoginQr::Msc4388 { intent, .. } => *intent,
        }
    }

    pub fn key(&self) -> &[u8; 32] {
        match self {
            LoginQr::V2024 { key, .. } | LoginQr::Msc4388 { key, .. } => key,
        }
    }

    /// Parses a scanned code. Every length is checked; nothing may follow the last field.
    pub fn parse(bytes: &[u8]) -> Result<Self, QrError> {
        if bytes.len() > MAX_QR_BYTES {
            return Err(QrError::TooLong(bytes.len()));
        }
        let (prefix, rest) = if let Some(rest) = bytes.strip_prefix(UNSTABLE) {
            (Prefix::Unstable, rest)
        } else if let Some(rest) = bytes.strip_prefix(MATRIX) {
            (Prefix::Stable, rest)
        } else if MATRIX.starts_with(bytes) || UNSTABLE.starts_with(bytes) {
            return Err(QrError::Truncated);
        } else {
            return Err(QrError::Prefix);
        };
        let mut r = Reader(rest);
        let ty = r.u8()?;
        match (prefix, ty) {
            (Prefix::Stable, 0x02) => {
                let intent = match r.u8()? {
                    0x03 => Intent::Login,
                    0x04 => Intent::Reciprocate,
                    0x00..=0x02 => return Err(QrError::Verification),
                    other => return Err(QrError::Intent(other)),
                };
                let key = r.key()?;
                let n = r.u16()?;
                let rendezvous_url = r.text(n)?;
                check_url(&rendezvous_url)?;
                let server = match intent {
                    Intent::Reciprocate => {
                        let n = r.u16()?;
                        let s = r.text(n)?;
                        if s.is_empty() {
                            return Err(QrError::Truncated);
                        }
                        Some(s)
                    }
                    Intent::Login => None,
                };
                r.end()?;
                Ok(LoginQr::V2024 { intent, key, rendezvous_url, server })
            }
            (_, 0x03) => {
                let intent = match r.u8()? {
                    0x00 => Intent::Login,
                    0x01 => Intent::Reciprocate,
                    other => return Err(QrError::Intent(other)),
                };
                let key = r.key()?;
                let n = r.u8()? as usize;
                let rendezvous_id = r.text(n)?;
                check_id(&rendezvous_id)?;
                let n = r.u16()?;
                let base_url = r.text(n)?;
                check_url(&base_url)?;
                r.end()?;
                Ok(LoginQr::Msc4388 { prefix, intent, key, rendezvous_id, base_url })
            }
            (_, other) => Err(QrError::Type(other)),
        }
    }

    /// The protocol bytes to put in a binary-mode QR code.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        match self {
            LoginQr::V2024 { intent, key, rendezvous_url, server } => {
                out.extend_from_slice(MATRIX);
                out.push(0x02);
                out.push(if *intent == Intent::Login { 0x03 } else { 0x04 });
                out.extend_from_slice(key);
                push16(&mut out, rendezvous_url.as_bytes());
                if let Some(s) = server.as_ref().filter(|_| *intent == Intent::Reciprocate) {
                    push16(&mut out, s.as_bytes());
                }
            }
            LoginQr::Msc4388 { prefix, intent, key, rendezvous_id, base_url } => {
                out.extend_from_slice(if *prefix == Prefix::Stable { MATRIX } else { UNSTABLE });
                out.push(0x03);
                out.push(if *intent == Intent::Login { 0x00 } else { 0x01 });
                out.extend_from_slice(key);
                let id = &rendezvous_id.as_bytes()[..rendezvous_id.len().min(255)];
                out.push(id.len() as u8);
                out.extend_from_slice(id);
                push16(&mut out, base_url.as_bytes());
            }
        }
        out
    }

    /// The base URL for the latest generation as QR encoders write it: without the trailing `/`
    /// of a root path (docs/protocol.md §4.2).
    pub fn qr_base_url(url: &url::Url) -> String {
        let s = url.as_str();
        if url.path() == "/" && url.query().is_none() {
            s.trim_end_matches('/').to_owned()
        } else {
            s.to_owned()
        }
    }
}

fn push16(out: &mut Vec<u8>, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::STANDARD_NO_PAD as B64};

    use super::*;

    const KEY_HEX: &str = "d886686ab2197b780e300a9d4a2147480700d7929f39ab31b9e514370248ed6b";
    const ID: &str = "e8da6355-550b-4a32-a193-1619d9830668";
    const BASE: &str = "https://matrix-client.matrix.org";

    fn key() -> [u8; 32] {
        hex::decode(KEY_HEX).unwrap().try_into().unwrap()
    }

    /// docs/protocol.md §15.1, all four published variants, both ways.
    #[test]
    fn msc4388_vectors() {
        let cases = [
            (
                Prefix::Stable,
                Intent::Login,
                "TUFUUklYAwDYhmhqshl7eA4wCp1KIUdIBwDXkp85qzG55RQ3AkjtayRlOGRhNjM1NS01NTBiLTRhMzItYTE5My0xNjE5ZDk4MzA2NjgAIGh0dHBzOi8vbWF0cml4LWNsaWVudC5tYXRyaXgub3Jn",
            ),
            (
                Prefix::Stable,
                Intent::Reciprocate,
                "TUFUUklYAwHYhmhqshl7eA4wCp1KIUdIBwDXkp85qzG55RQ3AkjtayRlOGRhNjM1NS01NTBiLTRhMzItYTE5My0xNjE5ZDk4MzA2NjgAIGh0dHBzOi8vbWF0cml4LWNsaWVudC5tYXRyaXgub3Jn",
            ),
            (
                Prefix::Unstable,
                Intent::Login,
                "SU9fRUxFTUVOVF9NU0M0Mzg4AwDYhmhqshl7eA4wCp1KIUdIBwDXkp85qzG55RQ3AkjtayRlOGRhNjM1NS01NTBiLTRhMzItYTE5My0xNjE5ZDk4MzA2NjgAIGh0dHBzOi8vbWF0cml4LWNsaWVudC5tYXRyaXgub3Jn",
            ),
            (
                Prefix::Unstable,
                Intent::Reciprocate,
                "SU9fRUxFTUVOVF9NU0M0Mzg4AwHYhmhqshl7eA4wCp1KIUdIBwDXkp85qzG55RQ3AkjtayRlOGRhNjM1NS01NTBiLTRhMzItYTE5My0xNjE5ZDk4MzA2NjgAIGh0dHBzOi8vbWF0cml4LWNsaWVudC5tYXRyaXgub3Jn",
            ),
        ];
        for (prefix, intent, b64) in cases {
            let bytes = B64.decode(b64).unwrap();
            let want = LoginQr::Msc4388 {
                prefix,
                intent,
                key: key(),
                rendezvous_id: ID.into(),
                base_url: BASE.into(),
            };
            assert_eq!(LoginQr::parse(&bytes).unwrap(), want, "{b64}");
            assert_eq!(want.encode(), bytes);
            assert_eq!(bytes.len(), if prefix == Prefix::Stable { 111 } else { 123 });
        }
        let hex_stable_00 = "4d41545249580300d886686ab2197b780e300a9d4a2147480700d7929f39ab31b9e514370248ed6b2465386461363335352d353530622d346133322d613139332d313631396439383330363638002068747470733a2f2f6d61747269782d636c69656e742e6d61747269782e6f7267";
        assert_eq!(
            hex::encode(LoginQr::parse(&hex::decode(hex_stable_00).unwrap()).unwrap().encode()),
            hex_stable_00
        );
    }

    #[test]
    fn synapse_ulid_vector() {
        let b = B64.decode("SU9fRUxFTUVOVF9NU0M0Mzg4AwG0yzZ1QVpQ1jlnoxWX3d5jrWRFfELxjS2gN7pz9y+3PBowMUhYOUswMFExSDZLUEQ0N0VHNEcxVDNYRwAkaHR0cHM6Ly9zeW5hcHNlLW9pZGMubGFiLmVsZW1lbnQuZGV2").unwrap();
        let LoginQr::Msc4388 { intent, key, rendezvous_id, base_url, .. } = LoginQr::parse(&b).unwrap()
        else {
            panic!()
        };
        assert_eq!(intent, Intent::Reciprocate);
        assert_eq!(B64.encode(key), "tMs2dUFaUNY5Z6MVl93eY61kRXxC8Y0toDe6c/cvtzw");
        assert_eq!(rendezvous_id, "01HX9K00Q1H6KPD47EG4G1T3XG");
        assert_eq!(base_url, "https://synapse-oidc.lab.element.dev");
    }

    #[test]
    fn v2024_round_trip_and_examples() {
        let url = "https://rendezvous.lab.element.dev/e8da6355-550b-4a32-a193-1619d9830668";
        let login =
            LoginQr::V2024 { intent: Intent::Login, key: key(), rendezvous_url: url.into(), server: None };
        let bytes = login.encode();
        assert_eq!(&bytes[..8], b"MATRIX\x02\x03");
        assert_eq!(&bytes[40..42], &[0x00, 0x47]);
        assert_eq!(LoginQr::parse(&bytes).unwrap(), login);
        let rec = LoginQr::V2024 {
            intent: Intent::Reciprocate,
            key: key(),
            rendezvous_url: url.into(),
            server: Some("matrix.org".into()),
        };
        let bytes = rec.encode();
        assert_eq!(&bytes[bytes.len() - 12..bytes.len() - 10], &[0x00, 0x0a]);
        assert_eq!(LoginQr::parse(&bytes).unwrap(), rec);
    }

    #[test]
    fn bad_codes_are_named() {
        let good = LoginQr::Msc4388 {
            prefix: Prefix::Stable,
            intent: Intent::Login,
            key: key(),
            rendezvous_id: ID.into(),
            base_url: BASE.into(),
        }
        .encode();
        for n in 0..good.len() {
            assert!(LoginQr::parse(&good[..n]).is_err(), "prefix of {n} bytes accepted");
        }
        assert_eq!(LoginQr::parse(&good[..20]), Err(QrError::Truncated));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(LoginQr::parse(&long), Err(QrError::Trailing(1)));
        assert_eq!(LoginQr::parse(b"HELLO WORLD"), Err(QrError::Prefix));
        assert_eq!(LoginQr::parse(b"MATRIX\x02\x01rest"), Err(QrError::Verification));
        assert_eq!(LoginQr::parse(b"MATRIX\x07"), Err(QrError::Type(7)));
        let mut bad_intent = good.clone();
        bad_intent[7] = 0x05;
        assert_eq!(LoginQr::parse(&bad_intent), Err(QrError::Intent(5)));
        let mut bad_id = good.clone();
        bad_id[41] = b'/';
        assert_eq!(LoginQr::parse(&bad_id), Err(QrError::RendezvousId));
        let mut bad_url = good.clone();
        let at = bad_url.len() - BASE.len();
        bad_url[at..at + 5].copy_from_slice(b"ftp:/");
        assert_eq!(LoginQr::parse(&bad_url), Err(QrError::Url));
        assert_eq!(LoginQr::parse(&vec![b'M'; MAX_QR_BYTES + 1]), Err(QrError::TooLong(MAX_QR_BYTES + 1)));
        // matrix-sdk 0.18's stale u16 ID length is not the MSC's u8: rejected, not misread.
        let mut u16_len = good[..40].to_vec();
        u16_len.extend_from_slice(&(ID.len() as u16).to_be_bytes());
        u16_len.extend_from_slice(ID.as_bytes());
        u16_len.extend_from_slice(&good[41 + ID.len()..]);
        assert!(LoginQr::parse(&u16_len).is_err());
    }

    #[test]
    fn base_url_for_the_qr_drops_the_root_slash() {
        let u = url::Url::parse("https://matrix-client.matrix.org/").unwrap();
        assert_eq!(LoginQr::qr_base_url(&u), BASE);
        let u = url::Url::parse("https://example.org/matrix/").unwrap();
        assert_eq!(LoginQr::qr_base_url(&u), "https://example.org/matrix/");
    }

    #[test]
    fn debug_is_redacted() {
        let q = LoginQr::Msc4388 {
            prefix: Prefix::Stable,
            intent: Intent::Login,
            key: key(),
            rendezvous_id: ID.into(),
            base_url: BASE.into(),
        };
        assert!(!format!("{q:?}").contains(ID));
    }
}
