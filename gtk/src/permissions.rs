//! Answers to sandboxed apps: what the user answered when a Flatpak app asked to use the daemon,
//! remembered in the xdg-desktop-portal permission store (see `matrix_link_gtk::answers`), with a
//! Reset button per app so that it is asked again.

use std::rc::Rc;

use adw::prelude::*;

use matrix_link_gtk::answers::{AppAnswers, StoreError};

use crate::{backend::Cmd, listpage::Row, window::Ui};

/// Shows the page and reads the answers.
pub fn open(ui: &Rc<Ui>) {
    let page = &ui.pages.answers;
    page.set_outcome("");
    page.clear("Loading…");
    ui.show("answers");
    ui.send(Cmd::ListAnswers);
}

/// Why the answers cannot be shown or reset, in plain words.
fn failure_text(e: &StoreError) -> String {
    match e {
        StoreError::NotRunning => "Remembered answers are not available: the xdg-desktop-portal permission store is not running, so no answer can be kept or shown.".to_owned(),
        StoreError::Failed(message) => format!("The permission store did not answer as expected: {message}"),
    }
}

pub fn listed(ui: &Rc<Ui>, apps: Result<Vec<AppAnswers>, StoreError>) {
    let page = &ui.pages.answers;
    let apps = match apps {
        Ok(apps) => apps,
        Err(e) => return page.clear(&failure_text(&e)),
    };
    let rows = apps
        .into_iter()
        .map(|app| {
            let weak = Rc::downgrade(ui);
            let id = app.app_id.clone();
            Row {
                title: app.app_id.clone(),
                subtitle: app.summary(),
                button_label: "Reset",
                button_name: format!("Reset {}", app.app_id),
                button_css: None,
                on_click: Box::new(move |btn| {
                    if let Some(ui) = weak.upgrade() {
                        btn.set_sensitive(false);
                        ui.pages.answers.set_outcome(&format!("Forgetting the answers to {id}…"));
                        ui.send(Cmd::ResetAnswers(id.clone()));
                    }
                }),
            }
        })
        .collect();
    page.fill(rows, "No sandboxed app has asked yet: there are no remembered answers.");
}

pub fn reset_done(ui: &Rc<Ui>, app_id: &str, result: Result<(), StoreError>) {
    let text = match result {
        Ok(()) => format!("Reset: {app_id} will be asked again next time."),
        Err(e) => format!("The answers to {app_id} could not be reset. {}", failure_text(&e)),
    };
    ui.pages.answers.set_outcome(&text);
    ui.send(Cmd::ListAnswers);
}
