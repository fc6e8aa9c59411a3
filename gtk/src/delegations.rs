//! Devices of programs: the programs that got a Matrix device of their own from the daemon
//! (`ListDelegations`), each with a Revoke button (`RevokeDelegation`). Signed in only.

use std::{rc::Rc, time::SystemTime};

use adw::prelude::*;
use gtk::glib;
use matrix_link_gtk::errors;
use matrix_linkd_client::{Delegation, Revoked};

use crate::{
    backend::{Cmd, ErrInfo},
    listpage::Row,
    window::Ui,
};

/// Shows the page and asks for the list.
pub fn open(ui: &Rc<Ui>) {
    let page = &ui.pages.delegations;
    page.set_outcome("");
    page.clear("Loading…");
    ui.show("delegations");
    ui.send(Cmd::ListDelegations);
}

/// When the device was made, in local time.
fn created_text(created: SystemTime) -> String {
    let secs = created.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let when = i64::try_from(secs)
        .ok()
        .filter(|s| *s > 0)
        .and_then(|s| glib::DateTime::from_unix_local(s).ok())
        .and_then(|d| d.format("%Y-%m-%d %H:%M").ok());
    match when {
        Some(w) => format!("Created {w}"),
        None => "Created at a time not known".to_owned(),
    }
}

fn program_name(d: &Delegation) -> String {
    if d.client_name.is_empty() { "A program".to_owned() } else { d.client_name.clone() }
}

/// The device's line: its display name and its ID.
fn device_text(d: &Delegation) -> String {
    if d.device_display_name.is_empty() {
        format!("Device {}", d.device_id)
    } else {
        format!("Device “{}” ({})", d.device_display_name, d.device_id)
    }
}

/// Why the list cannot be shown, in plain words.
fn failure_text(e: &ErrInfo) -> String {
    let (title, text) = errors::describe(&e.short);
    match e.short.as_str() {
        errors::NOT_RUNNING | errors::NO_BUS => text.to_owned(),
        "NotSignedIn" => "This computer is not signed in, so no program has a device from it.".to_owned(),
        _ if e.message.is_empty() => format!("The devices of programs cannot be listed. {title}."),
        _ => format!("The devices of programs cannot be listed. {title}: {}", e.message),
    }
}

pub fn listed(ui: &Rc<Ui>, list: Result<Vec<Delegation>, ErrInfo>) {
    let page = &ui.pages.delegations;
    let list = match list {
        Ok(list) => list,
        Err(e) => return page.clear(&failure_text(&e)),
    };
    let rows = list
        .into_iter()
        .map(|d| {
            let weak = Rc::downgrade(ui);
            let (id, name) = (d.device_id.clone(), program_name(&d));
            Row {
                title: program_name(&d),
                subtitle: format!("{}\n{}", device_text(&d), created_text(d.created)),
                button_label: "Revoke",
                button_name: format!("Revoke {}", d.device_id),
                button_css: Some("destructive-action"),
                on_click: Box::new(move |btn| {
                    if let Some(ui) = weak.upgrade() {
                        confirm_revoke(&ui, btn, &id, &name);
                    }
                }),
            }
        })
        .collect();
    page.fill(rows, "No program has a device of its own: none asked for one, or all were revoked.");
}

fn confirm_revoke(ui: &Rc<Ui>, btn: &gtk::Button, device_id: &str, program: &str) {
    let dialog = adw::MessageDialog::new(
        Some(&ui.window),
        Some("Revoke this device?"),
        Some(&format!(
            "{program} is signed out of your account: its device {device_id} is removed. It can ask for a new device later."
        )),
    );
    dialog.add_responses(&[("cancel", "_Cancel"), ("revoke", "_Revoke")]);
    dialog.set_response_appearance("revoke", adw::ResponseAppearance::Destructive);
    dialog.set_default_response(Some("cancel"));
    dialog.set_close_response("cancel");
    let weak = Rc::downgrade(ui);
    let (btn, device_id) = (btn.clone(), device_id.to_owned());
    dialog.connect_response(None, move |_, response| {
        if let (Some(ui), "revoke") = (weak.upgrade(), response) {
            btn.set_sensitive(false);
            ui.pages.delegations.set_outcome(&format!("Revoking the device {device_id}…"));
            ui.send(Cmd::Revoke(device_id.clone()));
        }
    });
    dialog.present();
}

/// What `RevokeDelegation` did, in words.
fn outcome_text(device_id: &str, result: &Result<Revoked, ErrInfo>) -> String {
    match result {
        Ok(Revoked::Revoked) => format!("Revoked: the device {device_id} is signed out of your account."),
        Ok(Revoked::AccountPage) => format!(
            "Your account page opened in the browser: confirm there to sign the device {device_id} out. It leaves this list once it is signed out."
        ),
        Err(e) if e.short == errors::NOT_RUNNING => {
            format!("The device {device_id} could not be revoked. {}", errors::describe(&e.short).1)
        }
        Err(e) => {
            let (title, _) = errors::describe(&e.short);
            format!("The device {device_id} could not be revoked. {title}: {}", e.message)
        }
    }
}

pub fn revoked(ui: &Rc<Ui>, device_id: &str, result: Result<Revoked, ErrInfo>) {
    ui.pages.delegations.set_outcome(&outcome_text(device_id, &result));
    // The list again: a revoked device left it (one left to the account page stays until then).
    ui.send(Cmd::ListDelegations);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_in_words() {
        let revoked = outcome_text("DEV1", &Ok(Revoked::Revoked));
        assert!(revoked.starts_with("Revoked") && revoked.contains("DEV1"), "{revoked}");
        let page = outcome_text("DEV1", &Ok(Revoked::AccountPage));
        assert!(page.contains("account page") && page.contains("confirm"), "{page}");
        let missing =
            ErrInfo { short: errors::NOT_RUNNING.into(), message: "The name … was not provided".into() };
        let failed = outcome_text("DEV1", &Err(missing));
        assert!(failed.contains("not installed or not running") && !failed.contains("provided"), "{failed}");
    }

    #[test]
    fn devices_in_words() {
        let d = Delegation {
            device_id: "DEV1".into(),
            client_name: String::new(),
            device_display_name: "Bot".into(),
            created: SystemTime::UNIX_EPOCH,
        };
        assert_eq!(program_name(&d), "A program");
        assert_eq!(device_text(&d), "Device “Bot” (DEV1)");
        assert_eq!(created_text(d.created), "Created at a time not known");
        let when = created_text(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
        assert!(when.starts_with("Created 2023-11-1"), "{when}");
    }
}
