//! `matrix-link-gtk`: a GTK 4 + libadwaita app to link devices through matrix-linkd.

mod backend;
mod delegations;
mod listpage;
mod pages;
mod permissions;
mod picker;
mod scan;
mod window;

use adw::prelude::*;
use clap::Parser;
use gtk::glib;
use matrix_link_gtk::cli::Args;

pub const APP_ID: &str = "io.github.matrix_linkd.LinkDevice";

fn main() -> glib::ExitCode {
    let args = Args::parse();
    let app = adw::Application::builder().application_id(APP_ID).build();
    app.connect_activate(move |app| {
        if let Some(win) = app.active_window() {
            win.present();
            return;
        }
        window::build(app, &args);
    });
    // The arguments were parsed by clap; GApplication sees none.
    app.run_with_args::<&str>(&[])
}
