//! Reading QR codes for the CLI: from an image file (decoded with `rqrr`) or from hex.

use std::path::Path;

use crate::{ClientError, Result};

/// The raw bytes of a QR code in the image at `path` (see [`decode_luma`]).
pub fn decode_image(path: &Path) -> Result<Vec<u8>> {
    let img = image::open(path)
        .map_err(|e| ClientError::Other(format!("{}: cannot read the image: {e}", path.display())))?
        .to_luma8();
    decode_luma(img).map_err(|e| ClientError::Other(format!("{}: {e}", path.display())))
}

/// The raw bytes of the first QR code in `img` that decodes; every code found is tried. The error
/// says whether a code was found at all.
pub fn decode_luma(img: image::GrayImage) -> std::result::Result<Vec<u8>, String> {
    let mut prepared = rqrr::PreparedImage::prepare(img);
    let mut last_error = None;
    for grid in prepared.detect_grids() {
        let mut bytes = Vec::new();
        match grid.decode_to(&mut bytes) {
            Ok(_) => return Ok(bytes),
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e) => format!("A QR code was found but cannot be decoded: {e}"),
        None => "No QR code was found in the image.".to_owned(),
    })
}

/// Bytes from hex (spaces and colons allowed).
pub fn decode_hex(text: &str) -> Result<Vec<u8>> {
    let clean: String = text.chars().filter(|c| !c.is_whitespace() && *c != ':').collect();
    hex::decode(clean).map_err(|e| ClientError::Other(format!("bad hex: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_round_trip() {
        let payload = b"MATRIX\x02\x03\x00\xff binary payload \x01\x02";
        let code = qrcode::QrCode::with_error_correction_level(payload, qrcode::EcLevel::L).unwrap();
        let img = code.render::<image::Luma<u8>>().min_dimensions(300, 300).build();
        let dir = std::env::temp_dir().join(format!("mlqr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("qr.png");
        img.save(&file).unwrap();
        assert_eq!(decode_image(&file).unwrap(), payload);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn hex_forms() {
        assert_eq!(decode_hex("4d 41:54").unwrap(), b"MAT");
        assert!(decode_hex("zz").is_err());
    }
}
