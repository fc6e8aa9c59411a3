//! Reading QR codes for the CLI: from an image file (decoded with `rqrr`) or from hex.

use std::path::Path;

use crate::{ClientError, Result};

/// The raw bytes of the first QR code found in the image at `path`.
pub fn decode_image(path: &Path) -> Result<Vec<u8>> {
    let img = image::open(path)
        .map_err(|e| ClientError::Other(format!("{}: cannot read the image: {e}", path.display())))?
        .to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(img);
    let grids = prepared.detect_grids();
    let grid = grids
        .first()
        .ok_or_else(|| ClientError::Other(format!("{}: no QR code found in the image", path.display())))?;
    let mut bytes = Vec::new();
    grid.decode_to(&mut bytes)
        .map_err(|e| ClientError::Other(format!("{}: the QR code cannot be decoded: {e}", path.display())))?;
    Ok(bytes)
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
