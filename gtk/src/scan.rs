//! Reading the other device's QR code: from a PNG (a file or the clipboard, converted by GTK) or
//! from the screen through the `org.freedesktop.portal.Screenshot` portal (raw zbus calls).

use std::time::Duration;

use futures_util::StreamExt;
use zbus::{
    Connection, MatchRule, MessageStream,
    message::Type as MessageType,
    zvariant::{OwnedObjectPath, OwnedValue, Value},
};

use crate::backend::PortalOptions;

const PORTAL_BUS: &str = "org.freedesktop.portal.Desktop";
const PORTAL_PATH: &str = "/org/freedesktop/portal/desktop";

/// The raw bytes of the first QR code in a PNG image.
pub fn decode_png(png: &[u8]) -> Result<Vec<u8>, String> {
    let img = image::load_from_memory(png).map_err(|e| format!("The image cannot be read: {e}"))?.to_luma8();
    matrix_linkd_client::qr::decode_luma(img)
}

/// Asks the Screenshot portal for a picture of the screen (non-interactive) and decodes the QR
/// code on it.
pub async fn screen(conn: &Connection) -> Result<Vec<u8>, String> {
    let uri = screenshot_uri(conn).await.map_err(|e| format!("The screen could not be captured: {e}"))?;
    let path = url::Url::parse(&uri)
        .ok()
        .and_then(|u| u.to_file_path().ok())
        .ok_or_else(|| format!("The screenshot portal answered an unexpected location: {uri}"))?;
    let png = tokio::fs::read(&path).await.map_err(|e| format!("{}: {e}", path.display()))?;
    tokio::task::spawn_blocking(move || decode_png(&png)).await.map_err(|e| e.to_string())?
}

async fn screenshot_uri(conn: &Connection) -> Result<String, String> {
    let token = format!("mlgtk{}", rand::random::<u32>());
    let sender =
        conn.unique_name().ok_or("no unique name on the bus")?.trim_start_matches(':').replace('.', "_");
    let request = format!("{PORTAL_PATH}/request/{sender}/{token}");
    let rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .interface("org.freedesktop.portal.Request")
        .and_then(|b| b.member("Response"))
        .and_then(|b| b.path(request.clone()))
        .map_err(|e| e.to_string())?
        .build();
    // Subscribed before the call: the answer cannot be missed.
    let mut responses =
        MessageStream::for_match_rule(rule, conn, Some(4)).await.map_err(|e| e.to_string())?;
    let proxy = zbus::Proxy::new(conn, PORTAL_BUS, PORTAL_PATH, "org.freedesktop.portal.Screenshot")
        .await
        .map_err(|e| e.to_string())?;
    let mut options: PortalOptions<'_> = PortalOptions::new();
    options.insert("handle_token", Value::from(token.as_str()));
    options.insert("interactive", Value::from(false));
    options.insert("modal", Value::from(false));
    let handle: OwnedObjectPath =
        proxy.call("Screenshot", &("", options)).await.map_err(|e| format!("no screenshot portal ({e})"))?;
    if handle.as_str() != request {
        // An old portal: the request lives elsewhere; listen there too.
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .interface("org.freedesktop.portal.Request")
            .and_then(|b| b.member("Response"))
            .and_then(|b| b.path(handle.as_str().to_owned()))
            .map_err(|e| e.to_string())?
            .build();
        responses = MessageStream::for_match_rule(rule, conn, Some(4)).await.map_err(|e| e.to_string())?;
    }
    let msg = tokio::time::timeout(Duration::from_secs(120), responses.next())
        .await
        .map_err(|_| "the screenshot portal did not answer".to_owned())?
        .ok_or("the bus connection closed")?
        .map_err(|e| e.to_string())?;
    let (code, results): (u32, std::collections::HashMap<String, OwnedValue>) =
        msg.body().deserialize().map_err(|e| e.to_string())?;
    match code {
        0 => results
            .get("uri")
            .and_then(|v| <&str>::try_from(&**v).ok())
            .map(str::to_owned)
            .ok_or_else(|| "the screenshot portal answered no uri".to_owned()),
        1 => Err("the screenshot was cancelled".to_owned()),
        _ => Err("the screenshot portal failed".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip_and_no_code() {
        let payload = b"MATRIX\x02\x03\x00\xff binary";
        let code = qrcode::QrCode::with_error_correction_level(payload, qrcode::EcLevel::L).unwrap();
        let img = code.render::<image::Luma<u8>>().min_dimensions(300, 300).build();
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        assert_eq!(decode_png(&png).unwrap(), payload);
        let blank = image::GrayImage::from_pixel(64, 64, image::Luma([255]));
        let mut png = Vec::new();
        blank.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        assert!(decode_png(&png).unwrap_err().contains("No QR code"));
    }
}
