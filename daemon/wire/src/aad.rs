//! The latest generation's associated data (docs/protocol.md §6.2.4):
//! `u16be(len(BaseUrl)) ‖ BaseUrl ‖ u8(len(Id)) ‖ Id ‖ u8(len(Token)) ‖ Token`.
//!
//! The base URL is the *normalised* one (`Url::as_str()`, with the trailing `/` of a root path), as
//! matrix-rust-sdk and matrix-js-sdk compute it although their QR encoders strip that slash.

/// AAD for a message written with `sequence_token` as the compare-and-swap precondition.
pub fn aad(base_url: &url::Url, rendezvous_id: &str, sequence_token: &str) -> Vec<u8> {
    aad_raw(base_url.as_str(), rendezvous_id, sequence_token)
}

/// AAD over the base URL exactly as given (for peers that use the QR's form).
pub fn aad_raw(base_url: &str, rendezvous_id: &str, sequence_token: &str) -> Vec<u8> {
    let base = &base_url.as_bytes()[..base_url.len().min(u16::MAX as usize)];
    let id = &rendezvous_id.as_bytes()[..rendezvous_id.len().min(255)];
    let token = &sequence_token.as_bytes()[..sequence_token.len().min(255)];
    let mut out = Vec::with_capacity(4 + base.len() + id.len() + token.len());
    out.extend_from_slice(&(base.len() as u16).to_be_bytes());
    out.extend_from_slice(base);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out.push(token.len() as u8);
    out.extend_from_slice(token);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "e8da6355-550b-4a32-a193-1619d9830668";

    /// docs/protocol.md §15.2 (no trailing slash, 116 bytes) and the trailing-slash variant (117).
    #[test]
    fn vector() {
        let want = "002068747470733a2f2f6d61747269782d636c69656e742e6d61747269782e6f72672465386461363335352d353530622d346133322d613139332d3136313964393833303636382c566d62784631335144757354674f437438616f613064325051636e424f586549784571687735615130336f3d";
        let got =
            aad_raw("https://matrix-client.matrix.org", ID, "VmbxF13QDusTgOCt8aoa0d2PQcnBOXeIxEqhw5aQ03o=");
        assert_eq!(hex::encode(&got), want);
        assert_eq!(got.len(), 116);
        let normalised = aad(
            &url::Url::parse("https://matrix-client.matrix.org").unwrap(),
            ID,
            "VmbxF13QDusTgOCt8aoa0d2PQcnBOXeIxEqhw5aQ03o=",
        );
        assert_eq!(normalised.len(), 117);
        assert!(hex::encode(&normalised).starts_with("0021"));
        assert!(hex::encode(&normalised).contains("6f72672f"));
    }

    /// docs/protocol.md §15.4: AAD(SEQ1).
    #[test]
    fn handshake_vector_aad() {
        let want = "002068747470733a2f2f6d61747269782d636c69656e742e6d61747269782e6f72672465386461363335352d353530622d346133322d613139332d3136313964393833303636380453455131";
        assert_eq!(hex::encode(aad_raw("https://matrix-client.matrix.org", ID, "SEQ1")), want);
    }
}
