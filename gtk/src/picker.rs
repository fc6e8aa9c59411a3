//! The GTK side of scanning: an image file (GtkFileChooserNative: GtkFileDialog needs GTK 4.10)
//! or the clipboard's image, turned into PNG bytes for the backend to decode.

use adw::prelude::*;
use gtk::{gdk, gio, glib};

/// Asks for an image file and returns its content as PNG, or `None` when the user cancelled.
pub async fn image_file(parent: &impl IsA<gtk::Window>) -> Result<Option<Vec<u8>>, String> {
    let chooser = gtk::FileChooserNative::new(
        Some("Open an Image of a QR Code"),
        Some(parent),
        gtk::FileChooserAction::Open,
        Some("_Open"),
        Some("_Cancel"),
    );
    let filter = gtk::FileFilter::new();
    filter.set_name(Some("Images"));
    filter.add_mime_type("image/*");
    chooser.add_filter(&filter);
    chooser.set_modal(true);
    let (tx, rx) = async_channel::bounded(1);
    chooser.connect_response(move |chooser, response| {
        let file = (response == gtk::ResponseType::Accept).then(|| chooser.file()).flatten();
        let _ = tx.try_send(file);
    });
    chooser.show();
    let file: Option<gio::File> = rx.recv().await.ok().flatten();
    let Some(file) = file else { return Ok(None) };
    let (bytes, _etag) = file.load_bytes_future().await.map_err(|e| e.to_string())?;
    texture_png(&gdk::Texture::from_bytes(&bytes).map_err(|e| format!("The file is not an image: {e}"))?)
        .map(Some)
}

/// The clipboard's image as PNG.
pub async fn clipboard(widget: &impl IsA<gtk::Widget>) -> Result<Vec<u8>, String> {
    let clipboard = widget.as_ref().clipboard();
    match clipboard.read_texture_future().await {
        Ok(Some(texture)) => texture_png(&texture),
        Ok(None) => Err("The clipboard holds no image.".to_owned()),
        Err(e) => Err(format!("The clipboard holds no image ({e}).")),
    }
}

fn texture_png(texture: &gdk::Texture) -> Result<Vec<u8>, String> {
    let bytes: glib::Bytes = texture.save_to_png_bytes();
    Ok(bytes.to_vec())
}

/// A texture from PNG bytes (the daemon's `GetQrCode("png")`).
pub fn png_texture(png: &[u8]) -> Option<gdk::Texture> {
    gdk::Texture::from_bytes(&glib::Bytes::from(png)).ok()
}
