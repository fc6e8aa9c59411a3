//! The `m.login.*` messages (docs/protocol.md §8), for both generations: decoding is tolerant where
//! real peers differ (unknown fields, `homeserver` as a server name or a URL, unknown failure
//! reasons) and strict about size and types. `Debug` never prints a secret.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest plaintext accepted: rendezvous payloads are at most 4 KiB of base64.
pub const MAX_MESSAGE_BYTES: usize = 4096;

pub const DEVICE_AUTHORIZATION_GRANT: &str = "device_authorization_grant";
pub const BACKUP_ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGrant {
    pub verification_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_uri_complete: Option<String>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrossSigningSecrets {
    pub master_key: String,
    pub self_signing_key: String,
    pub user_signing_key: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSecrets {
    pub algorithm: String,
    pub key: String,
    pub backup_version: String,
}

/// One `m.login.*` message.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum LoginMessage {
    #[serde(rename = "m.login.protocols")]
    Protocols {
        #[serde(default)]
        protocols: Vec<String>,
        /// 2024: a server name (the MSC) or a URL (matrix-sdk).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        homeserver: Option<String>,
        /// Latest: the homeserver's client-server base URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_url: Option<String>,
    },
    #[serde(rename = "m.login.protocol")]
    Protocol { protocol: String, device_authorization_grant: Option<DeviceGrant>, device_id: String },
    #[serde(rename = "m.login.protocol_accepted")]
    ProtocolAccepted {},
    #[serde(rename = "m.login.success")]
    Success {},
    #[serde(rename = "m.login.declined")]
    Declined {},
    #[serde(rename = "m.login.failure")]
    Failure {
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        homeserver: Option<String>,
    },
    #[serde(rename = "m.login.secrets")]
    Secrets {
        cross_signing: CrossSigningSecrets,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<BackupSecrets>,
    },
}

impl LoginMessage {
    /// The `type`, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            LoginMessage::Protocols { .. } => "m.login.protocols",
            LoginMessage::Protocol { .. } => "m.login.protocol",
            LoginMessage::ProtocolAccepted {} => "m.login.protocol_accepted",
            LoginMessage::Success {} => "m.login.success",
            LoginMessage::Declined {} => "m.login.declined",
            LoginMessage::Failure { .. } => "m.login.failure",
            LoginMessage::Secrets { .. } => "m.login.secrets",
        }
    }

    pub fn failure(reason: FailureReason) -> Self {
        LoginMessage::Failure { reason: reason.as_str().to_owned(), homeserver: None }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("messages always serialise")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(MessageError::TooLarge(bytes.len()));
        }
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| MessageError::NotJson)?;
        let Some(ty) = value.get("type").and_then(|t| t.as_str()) else { return Err(MessageError::NoType) };
        if !KNOWN_TYPES.contains(&ty) {
            return Err(MessageError::UnknownType);
        }
        // serde's message may quote field values (secrets): keep only the type name.
        let ty = KNOWN_TYPES.iter().find(|t| **t == ty).copied().unwrap_or("?");
        serde_json::from_value(value).map_err(|_| MessageError::Malformed(ty))
    }
}

const KNOWN_TYPES: [&str; 7] = [
    "m.login.protocols",
    "m.login.protocol",
    "m.login.protocol_accepted",
    "m.login.success",
    "m.login.declined",
    "m.login.failure",
    "m.login.secrets",
];

impl fmt::Debug for LoginMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginMessage::Failure { reason, .. } => write!(f, "m.login.failure({reason})"),
            LoginMessage::Protocols { protocols, .. } => write!(f, "m.login.protocols({protocols:?})"),
            other => f.write_str(other.kind()),
        }
    }
}

/// Why a plaintext is not a usable message. Never quotes the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("the message is too large ({0} bytes)")]
    TooLarge(usize),
    #[error("the message is not JSON")]
    NotJson,
    #[error("the message has no type")]
    NoType,
    #[error("the message has an unknown type")]
    UnknownType,
    #[error("a {0} message is malformed")]
    Malformed(&'static str),
}

/// `m.login.failure` reasons (docs/protocol.md §8). Unknown ones from a peer pass through as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    AuthorizationExpired,
    DeviceAlreadyExists,
    DeviceNotFound,
    UnexpectedMessageReceived,
    UnsupportedProtocol,
    UserCancelled,
    /// Latest generation only; 2024 peers get `user_cancelled`.
    UnableToOpenVerificationUri,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::AuthorizationExpired => "authorization_expired",
            FailureReason::DeviceAlreadyExists => "device_already_exists",
            FailureReason::DeviceNotFound => "device_not_found",
            FailureReason::UnexpectedMessageReceived => "unexpected_message_received",
            FailureReason::UnsupportedProtocol => "unsupported_protocol",
            FailureReason::UserCancelled => "user_cancelled",
            FailureReason::UnableToOpenVerificationUri => "unable_to_open_verification_uri",
        }
    }
}

/// Where `m.login.protocols` (or a 2024 reciprocate QR) says the homeserver is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeserverRef {
    /// An absolute http(s) URL: used as is.
    Url(url::Url),
    /// A server name: resolved through `.well-known`.
    ServerName(String),
}

impl HomeserverRef {
    /// Accepts a URL or a server name (`host[:port]`), as real peers send either.
    pub fn parse(s: &str) -> Option<Self> {
        if let Ok(u) = url::Url::parse(s)
            && matches!(u.scheme(), "http" | "https")
            && u.has_host()
        {
            return Some(HomeserverRef::Url(u));
        }
        let valid = !s.is_empty()
            && s.len() <= 255
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        valid.then(|| HomeserverRef::ServerName(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn js_sdk_and_matrix_sdk_plaintexts_decode() {
        let cases: [&[u8]; 6] = [
            br#"{"type":"m.login.protocols","protocols":["device_authorization_grant"],"homeserver":"localhost"}"#,
            br#"{"type":"m.login.protocol","protocol":"device_authorization_grant","device_id":"NEWDEV376770","device_authorization_grant":{"verification_uri":"http://127.0.0.1:18080/device","verification_uri_complete":"http://127.0.0.1:18080/device?user_code=WGXG-LXMG"}}"#,
            br#"{"type":"m.login.protocol_accepted"}"#,
            br#"{"type":"m.login.success"}"#,
            br#"{"type":"m.login.secrets","cross_signing":{"master_key":"9gYd","user_signing_key":"4zJT","self_signing_key":"rdkc"},"backup":{"algorithm":"m.megolm_backup.v1.curve25519-aes-sha2","key":"JtVn","backup_version":"1"}}"#,
            br#"{"type":"m.login.protocols","protocols":["device_authorization_grant"],"base_url":"https://example.org/","extra":{"x":1}}"#,
        ];
        for c in cases {
            let m = LoginMessage::decode(c).unwrap();
            assert_eq!(LoginMessage::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn tolerant_of_unknown_fields_and_reasons() {
        let m = LoginMessage::decode(br#"{"type":"m.login.failure","reason":"some_future_reason","x":true}"#)
            .unwrap();
        assert_eq!(m, LoginMessage::Failure { reason: "some_future_reason".into(), homeserver: None });
        assert!(matches!(
            LoginMessage::decode(br#"{"type":"m.login.protocols"}"#),
            Ok(LoginMessage::Protocols { .. })
        ));
    }

    #[test]
    fn bad_messages_are_named_without_content() {
        assert_eq!(LoginMessage::decode(b"nope"), Err(MessageError::NotJson));
        assert_eq!(LoginMessage::decode(b"{}"), Err(MessageError::NoType));
        assert_eq!(LoginMessage::decode(br#"{"type":"m.login.bogus"}"#), Err(MessageError::UnknownType));
        let err =
            LoginMessage::decode(br#"{"type":"m.login.secrets","cross_signing":{"master_key":"SECRET"}}"#)
                .unwrap_err();
        assert_eq!(err, MessageError::Malformed("m.login.secrets"));
        assert!(!err.to_string().contains("SECRET"));
        let big = format!(r#"{{"type":"m.login.success","pad":"{}"}}"#, "x".repeat(5000));
        assert!(matches!(LoginMessage::decode(big.as_bytes()), Err(MessageError::TooLarge(_))));
    }

    #[test]
    fn debug_hides_secrets() {
        let m = LoginMessage::decode(br#"{"type":"m.login.secrets","cross_signing":{"master_key":"SECRETM","user_signing_key":"u","self_signing_key":"s"}}"#).unwrap();
        assert!(!format!("{m:?}").contains("SECRETM"));
        let p = LoginMessage::decode(br#"{"type":"m.login.protocol","protocol":"device_authorization_grant","device_id":"D","device_authorization_grant":{"verification_uri":"https://x/SECRETURI"}}"#).unwrap();
        assert!(!format!("{p:?}").contains("SECRETURI"));
    }

    #[test]
    fn homeserver_as_url_or_name() {
        assert!(matches!(HomeserverRef::parse("https://matrix.org/"), Some(HomeserverRef::Url(_))));
        assert!(matches!(HomeserverRef::parse("http://127.0.0.1:18008/"), Some(HomeserverRef::Url(_))));
        assert_eq!(HomeserverRef::parse("localhost"), Some(HomeserverRef::ServerName("localhost".into())));
        assert_eq!(
            HomeserverRef::parse("127.0.0.1:18008"),
            Some(HomeserverRef::ServerName("127.0.0.1:18008".into()))
        );
        assert_eq!(HomeserverRef::parse("not a name/"), None);
        assert_eq!(HomeserverRef::parse(""), None);
    }
}
