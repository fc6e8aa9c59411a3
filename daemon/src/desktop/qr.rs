//! Renders QR protocol bytes for `GetQrCode`.

use std::io::Cursor;

use image::Luma;
use qrcode::{EcLevel, QrCode, render::unicode::Dense1x2};

use crate::error::{LinkError, Result};

/// Formats of `GetQrCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QrFormat {
    Raw,
    Png,
    Svg,
    Utf8,
}

impl std::str::FromStr for QrFormat {
    type Err = LinkError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(QrFormat::Raw),
            "png" => Ok(QrFormat::Png),
            "svg" => Ok(QrFormat::Svg),
            "utf8" => Ok(QrFormat::Utf8),
            other => {
                Err(LinkError::InvalidArgs(format!("unknown QR format `{other}` (raw, png, svg, utf8)")))
            }
        }
    }
}

fn encode(bytes: &[u8]) -> Result<QrCode> {
    // Binary mode with low error correction keeps ~120-byte payloads at a scannable size.
    QrCode::with_error_correction_level(bytes, EcLevel::L)
        .map_err(|e| LinkError::Failed(format!("cannot encode the QR code: {e}")))
}

/// Renders `bytes` in `format`. `utf8` is light-on-dark half blocks for terminals.
pub fn render(bytes: &[u8], format: QrFormat) -> Result<Vec<u8>> {
    match format {
        QrFormat::Raw => Ok(bytes.to_vec()),
        QrFormat::Png => {
            let img = encode(bytes)?.render::<Luma<u8>>().min_dimensions(300, 300).build();
            let mut out = Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png)
                .map_err(|e| LinkError::Failed(format!("cannot write PNG: {e}")))?;
            Ok(out.into_inner())
        }
        QrFormat::Svg => Ok(encode(bytes)?
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(300, 300)
            .build()
            .into_bytes()),
        QrFormat::Utf8 => Ok(encode(bytes)?
            .render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build()
            .into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_renders() {
        let bytes = b"MATRIX\x02\x03 some binary \xff\x00 payload";
        assert_eq!(render(bytes, QrFormat::Raw).unwrap(), bytes);
        assert!(render(bytes, QrFormat::Png).unwrap().starts_with(b"\x89PNG"));
        assert!(String::from_utf8(render(bytes, QrFormat::Svg).unwrap()).unwrap().contains("<svg"));
        assert!(String::from_utf8(render(bytes, QrFormat::Utf8).unwrap()).unwrap().contains('▀'));
        assert!("bmp".parse::<QrFormat>().is_err());
    }
}
