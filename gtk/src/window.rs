//! The main window: wires the pages to the backend's commands and shows its events.

use std::{cell::RefCell, rc::Rc};

use adw::prelude::*;
use async_channel::Sender;
use gtk::glib;
use matrix_link_gtk::{
    cli::{Args, StartPage},
    errors,
};
use matrix_linkd_client::{SessionState, State, Status};

use crate::{
    backend::{self, Cmd, ErrInfo, Event, Kind},
    delegations,
    pages::{self, Pages},
    permissions, picker,
};

pub(crate) struct Ui {
    pub(crate) window: adw::ApplicationWindow,
    toasts: adw::ToastOverlay,
    pub(crate) pages: Pages,
    /// Below the pages, outside the toasts' area, so that no toast ever covers it: the Cancel
    /// button of the flow pages (`pages::WITH_CANCEL`).
    cancel_bar: gtk::Box,
    cancel_btn: gtk::Button,
    cmd: Sender<Cmd>,
    kind: RefCell<Kind>,
    in_flow: RefCell<bool>,
    /// The user pressed Cancel or Deny: the flow's `Cancelled` end is no error to show.
    cancelled_here: RefCell<bool>,
    /// A QR code is being read (screen, file, clipboard); Cancel or Back drops its result.
    scanning: RefCell<bool>,
    /// The toast on screen: dismissed when the page changes (under no window manager, or while
    /// the window is not focused, libadwaita keeps toasts up).
    last_toast: RefCell<Option<adw::Toast>>,
    status: RefCell<Option<Status>>,
}

pub fn build(app: &adw::Application, args: &Args) {
    let pages = Pages::build();
    let header = adw::HeaderBar::new();
    header.set_title_widget(Some(&adw::WindowTitle::new("Link a Device", "")));
    let toasts = adw::ToastOverlay::new();
    toasts.set_child(Some(&pages.stack));
    toasts.set_vexpand(true);
    let cancel_btn = pages::button("Cancel", None);
    let cancel_bar = gtk::Box::new(gtk::Orientation::Horizontal, 0);
    cancel_bar.set_halign(gtk::Align::Center);
    cancel_bar.set_margin_top(6);
    cancel_bar.set_margin_bottom(18);
    cancel_bar.append(&cancel_btn);
    cancel_bar.set_visible(false);
    let content = gtk::Box::new(gtk::Orientation::Vertical, 0);
    content.append(&header);
    content.append(&toasts);
    content.append(&cancel_bar);
    let window = adw::ApplicationWindow::builder()
        .application(app)
        .title("Link a Device")
        .default_width(520)
        .default_height(720)
        .content(&content)
        .build();

    let (cmd, events) = backend::spawn();
    let ui = Rc::new(Ui {
        window: window.clone(),
        toasts,
        pages,
        cancel_bar,
        cancel_btn,
        cmd,
        kind: RefCell::new(Kind::Grant),
        in_flow: RefCell::new(false),
        cancelled_here: RefCell::new(false),
        scanning: RefCell::new(false),
        last_toast: RefCell::new(None),
        status: RefCell::new(None),
    });
    if let Some(hs) = &args.homeserver {
        ui.pages.homeserver.set_text(hs);
    }
    connect(&ui);
    let ui2 = ui.clone();
    glib::spawn_future_local(async move {
        while let Ok(ev) = events.recv().await {
            ui2.handle(ev);
        }
    });
    ui.send(Cmd::Refresh);
    match args.start_page() {
        StartPage::Status => ui.show("status"),
        StartPage::Grant => ui.choose(Kind::Grant),
        StartPage::Login => ui.choose(Kind::Login),
    }
    window.present();
}

fn on_click(btn: &gtk::Button, ui: &Rc<Ui>, f: impl Fn(&Rc<Ui>) + 'static) {
    let ui = Rc::downgrade(ui);
    btn.connect_clicked(move |_| {
        if let Some(ui) = ui.upgrade() {
            f(&ui)
        }
    });
}

fn connect(ui: &Rc<Ui>) {
    let p = &ui.pages;
    on_click(&p.grant_btn, ui, |ui| ui.choose(Kind::Grant));
    on_click(&p.login_btn, ui, |ui| ui.choose(Kind::Login));
    on_click(&p.refresh_btn, ui, |ui| ui.send(Cmd::Refresh));
    on_click(&p.signout_btn, ui, |ui| ui.confirm_sign_out());
    on_click(&p.back_btn, ui, |ui| ui.home());
    on_click(&p.done_btn, ui, |ui| ui.home());
    on_click(&p.error_btn, ui, |ui| ui.home());
    on_click(&p.show_btn, ui, |ui| {
        let kind = *ui.kind.borrow();
        ui.start(kind, None);
    });
    on_click(&p.screen_btn, ui, |ui| {
        ui.progress(
            "Looking for a QR code on the screen…",
            "Keep the other device's QR code visible on the screen.",
        );
        *ui.scanning.borrow_mut() = true;
        ui.send(Cmd::ScanScreen);
    });
    on_click(&p.file_btn, ui, |ui| {
        let ui = ui.clone();
        glib::spawn_future_local(async move {
            match picker::image_file(&ui.window).await {
                Ok(Some(png)) => {
                    ui.progress("Reading the QR code…", "");
                    *ui.scanning.borrow_mut() = true;
                    ui.send(Cmd::DecodePng(png));
                }
                Ok(None) => {}
                Err(e) => ui.scan_failed(&e),
            }
        });
    });
    on_click(&p.clipboard_btn, ui, |ui| {
        let ui = ui.clone();
        glib::spawn_future_local(async move {
            match picker::clipboard(&ui.window).await {
                Ok(png) => {
                    ui.progress("Reading the QR code…", "");
                    *ui.scanning.borrow_mut() = true;
                    ui.send(Cmd::DecodePng(png));
                }
                Err(e) => ui.scan_failed(&e),
            }
        });
    });
    on_click(&ui.cancel_btn, ui, |ui| ui.cancel());
    on_click(&p.delegations_btn, ui, delegations::open);
    on_click(&p.delegations.back_btn, ui, |ui| ui.home());
    on_click(&p.delegations.refresh_btn, ui, delegations::open);
    on_click(&p.answers_btn, ui, permissions::open);
    on_click(&p.answers.back_btn, ui, |ui| ui.home());
    on_click(&p.answers.refresh_btn, ui, permissions::open);
    on_click(&p.deny_btn, ui, |ui| ui.cancel());
    on_click(&p.approve_btn, ui, |ui| {
        ui.pages.approve_btn.set_sensitive(false);
        ui.send(Cmd::Approve);
        ui.progress("Approved", "Finish the approval on the consent page that opened in your browser.");
    });
    let weak = Rc::downgrade(ui);
    p.code_entry.connect_changed(move |e| {
        if let Some(ui) = weak.upgrade() {
            ui.pages.code_btn.set_sensitive(parse_code(&e.text()).is_some());
        }
    });
    let submit = |ui: &Rc<Ui>| {
        if let Some(code) = parse_code(&ui.pages.code_entry.text()) {
            ui.send(Cmd::CheckCode(code));
            ui.progress("Checking the code…", "");
        }
    };
    on_click(&p.code_btn, ui, submit);
    let weak = Rc::downgrade(ui);
    p.code_entry.connect_activate(move |_| {
        if let Some(ui) = weak.upgrade() {
            submit(&ui)
        }
    });
}

/// A two-digit check code (`0`–`99`; one digit is accepted as is).
fn parse_code(text: &str) -> Option<u8> {
    let t = text.trim();
    if t.is_empty() || t.len() > 2 || !t.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

impl Ui {
    pub(crate) fn send(&self, cmd: Cmd) {
        // Unbounded: never blocks the GTK thread.
        let _ = self.cmd.try_send(cmd);
    }

    pub(crate) fn show(&self, page: &str) {
        let stack = &self.pages.stack;
        if stack.visible_child_name().as_deref() != Some(page)
            && let Some(toast) = self.last_toast.take()
        {
            toast.dismiss();
        }
        stack.set_visible_child_name(page);
        self.cancel_bar.set_visible(pages::WITH_CANCEL.contains(&page));
        // GTK 4.8 exposes every page to assistive technologies as visible: mark the others hidden.
        let shown = stack.visible_child();
        let mut child = stack.first_child();
        while let Some(w) = child {
            w.update_state(&[gtk::accessible::State::Hidden(shown.as_ref() != Some(&w))]);
            child = w.next_sibling();
        }
    }

    fn toast(&self, text: &str) {
        let toast = adw::Toast::new(text);
        self.toasts.add_toast(toast.clone());
        if let Some(old) = self.last_toast.replace(Some(toast)) {
            old.dismiss();
        }
    }

    pub(crate) fn home(&self) {
        *self.in_flow.borrow_mut() = false;
        *self.scanning.borrow_mut() = false;
        self.send(Cmd::Refresh);
        self.show("status");
    }

    fn choose(&self, kind: Kind) {
        *self.kind.borrow_mut() = kind;
        let p = &self.pages;
        match kind {
            Kind::Grant => {
                p.choose.set_title("Link a new device");
                p.choose.set_description(Some(
                    "Let a phone, a browser or another computer in to your account. Show it a QR code, or scan the code it shows.",
                ));
            }
            Kind::Login => {
                p.choose.set_title("Sign this computer in");
                p.choose.set_description(Some(
                    "Use a device that is already signed in (e.g. your phone). Show it a QR code, or scan the code it shows.",
                ));
            }
        }
        p.homeserver_group.set_visible(kind == Kind::Login);
        self.show("choose");
    }

    fn start(&self, kind: Kind, qr: Option<Vec<u8>>) {
        // The homeserver matters only when this computer shows the QR code (a scanned code names
        // its own).
        let homeserver = Some(self.pages.homeserver.text().trim().to_owned())
            .filter(|h| !h.is_empty() && qr.is_none() && kind == Kind::Login);
        *self.in_flow.borrow_mut() = true;
        *self.cancelled_here.borrow_mut() = false;
        self.pages.approve_btn.set_sensitive(true);
        self.pages.code_entry.set_text("");
        self.progress("Starting…", "Connecting to the homeserver.");
        self.send(Cmd::Start { kind, qr, homeserver });
    }

    fn cancel(&self) {
        if *self.in_flow.borrow() {
            *self.cancelled_here.borrow_mut() = true;
            self.send(Cmd::Cancel);
            self.progress("Cancelling…", "");
        } else {
            self.home();
        }
    }

    fn progress(&self, title: &str, description: &str) {
        self.pages.progress.set_title(title);
        self.pages.progress.set_description(Some(description).filter(|d| !d.is_empty()));
        self.show("progress");
    }

    fn scan_failed(&self, message: &str) {
        let p = &self.pages;
        p.error.set_title("No QR code found");
        p.error.set_description(Some(message));
        self.show("error");
    }

    fn error(&self, e: &ErrInfo) {
        *self.in_flow.borrow_mut() = false;
        let (title, text) = errors::describe(&e.short);
        let p = &self.pages;
        p.error.set_title(title);
        let detail = match e.short.as_str() {
            // The bus's own words ("The name … was not provided by any .service files") are for
            // the log, not for the person.
            errors::NOT_RUNNING => {
                eprintln!("matrix-link-gtk: {}", e.message);
                text.to_owned()
            }
            _ if e.message.is_empty() => text.to_owned(),
            _ => format!("{text}\n\n{}", e.message),
        };
        p.error.set_description(Some(&detail));
        self.show("error");
        self.send(Cmd::Refresh);
    }

    fn confirm_sign_out(self: &Rc<Self>) {
        let dialog = adw::MessageDialog::new(
            Some(&self.window),
            Some("Sign out?"),
            Some(
                "This computer's device is removed from your account. You can sign it in again with a QR code.",
            ),
        );
        dialog.add_responses(&[("cancel", "_Cancel"), ("sign-out", "_Sign Out")]);
        dialog.set_response_appearance("sign-out", adw::ResponseAppearance::Destructive);
        dialog.set_default_response(Some("cancel"));
        dialog.set_close_response("cancel");
        let weak = Rc::downgrade(self);
        dialog.connect_response(None, move |_, response| {
            if let (Some(ui), "sign-out") = (weak.upgrade(), response) {
                ui.progress("Signing out…", "");
                ui.send(Cmd::SignOut);
            }
        });
        dialog.present();
    }

    fn show_status(&self, status: Result<Status, ErrInfo>) {
        let p = &self.pages;
        let (title, description, signed_in) = match &status {
            Ok(s) if s.state == SessionState::SignedIn => {
                ("Signed in".to_owned(), format!("As {} on {}", s.user_id, s.homeserver), true)
            }
            Ok(s) if s.state == SessionState::Restoring => {
                ("Restoring the session…".to_owned(), String::new(), false)
            }
            Ok(s) if s.state == SessionState::Error => (
                "The session cannot be read".to_owned(),
                "Is the keyring unlocked? Sign in again if this persists.".to_owned(),
                false,
            ),
            Ok(_) => ("Signed out".to_owned(), "This computer is not signed in to Matrix.".to_owned(), false),
            Err(e) if [errors::NOT_RUNNING, errors::NO_BUS].contains(&e.short.as_str()) => {
                eprintln!("matrix-link-gtk: the service is not available: {}", e.message);
                let (title, text) = errors::describe(&e.short);
                (title.to_owned(), text.to_owned(), false)
            }
            Err(e) => (
                "The link service is not available".to_owned(),
                format!("matrix-linkd answered with an error: {}", e.message),
                false,
            ),
        };
        p.status.set_title(&title);
        p.status.set_description(Some(&description).filter(|d| !d.is_empty()).map(String::as_str));
        p.grant_btn.set_visible(signed_in);
        p.signout_btn.set_visible(signed_in);
        p.login_btn.set_visible(matches!(&status, Ok(s) if s.state == SessionState::SignedOut));
        p.delegations_btn.set_visible(signed_in);
        if !signed_in && self.pages.stack.visible_child_name().as_deref() == Some("delegations") {
            self.show("status");
        }
        *self.status.borrow_mut() = status.ok();
    }

    fn handle(self: &Rc<Self>, ev: Event) {
        let p = &self.pages;
        match ev {
            // Also sent whenever the daemon's session changes (the backend follows it).
            Event::Status(s) => self.show_status(s),
            Event::SignedOut(Ok(())) => {
                self.home();
                self.toast("Signed out");
            }
            Event::SignedOut(Err(e)) => self.error(&e),
            Event::Scanned(_) if !self.scanning.replace(false) => {}
            Event::Scanned(Ok(bytes)) => {
                let kind = *self.kind.borrow();
                self.start(kind, Some(bytes));
            }
            Event::Scanned(Err(e)) => self.scan_failed(&e),
            Event::Qr { png, replaced } => {
                p.qr_picture.set_paintable(picker::png_texture(&png).as_ref());
                // On the page itself, not in a toast: nothing covers the code or Cancel.
                p.qr_note.set_text(if replaced {
                    "The previous code expired unscanned: this is a new one."
                } else {
                    "The code is valid for a few minutes; a new one appears by itself."
                });
                if replaced {
                    p.qr_note.remove_css_class("dim-label");
                    p.qr_note.add_css_class("accent");
                } else {
                    p.qr_note.remove_css_class("accent");
                    p.qr_note.add_css_class("dim-label");
                }
                p.qr_title.set_text(match *self.kind.borrow() {
                    Kind::Grant => "Scan this QR code with the new device",
                    Kind::Login => "Scan this QR code with your signed-in device",
                });
                self.show("qr");
            }
            Event::State(State::WaitingForCheckCode) => {
                p.code_entry.set_text("");
                self.show("enter-code");
                p.code_entry.grab_focus();
            }
            Event::ShowCheckCode(code) => {
                p.show_code_label.set_text(&format!("{code:02}"));
                self.show("show-code");
            }
            Event::Approval { device, host, user_code } => {
                let unknown = "not known yet";
                p.consent_device.set_subtitle(if device.is_empty() { unknown } else { &device });
                p.consent_host.set_subtitle(if host.is_empty() { unknown } else { &host });
                p.consent_code.set_subtitle(&user_code);
                p.consent_code.set_visible(!user_code.is_empty());
                p.approve_btn.set_sensitive(true);
                self.show("consent");
            }
            Event::Token { user_code } => {
                let text = if user_code.is_empty() {
                    "Approve the sign-in on your other device.".to_owned()
                } else {
                    format!("Approve the sign-in on your other device. Code: {user_code}")
                };
                self.progress("Waiting for approval", &text);
            }
            Event::State(State::SyncingSecrets) => {
                self.progress("Sharing encryption keys…", "Almost done: the new device is being verified.")
            }
            Event::State(State::Starting) => self.progress("Starting…", "Connecting to the homeserver."),
            Event::State(_) => {}
            Event::Done(done) => {
                *self.in_flow.borrow_mut() = false;
                let (title, text) = match *self.kind.borrow() {
                    Kind::Grant => (
                        "Device linked",
                        if done.device_id.is_empty() {
                            format!("The new device is signed in as {}.", done.user_id)
                        } else {
                            format!("The new device {} is signed in as {}.", done.device_id, done.user_id)
                        },
                    ),
                    Kind::Login => ("This computer is signed in", format!("Signed in as {}.", done.user_id)),
                };
                p.done.set_title(title);
                p.done.set_description(Some(&text));
                self.show("done");
                self.send(Cmd::Refresh);
            }
            Event::Failed(e) if e.short == "Cancelled" && self.cancelled_here.replace(false) => {
                self.home();
                self.toast("Cancelled");
            }
            Event::Failed(e) => self.error(&e),
            Event::ActionFailed(e) => {
                let (title, _) = errors::describe(&e.short);
                self.toast(&format!("{title}: {}", e.message));
            }
            Event::Delegations(list) => delegations::listed(self, list),
            Event::Revoked { device_id, result } => delegations::revoked(self, &device_id, result),
            Event::Answers(apps) => permissions::listed(self, apps),
            Event::AnswersReset { app_id, result } => permissions::reset_done(self, &app_id, result),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_code;

    #[test]
    fn check_codes() {
        assert_eq!(parse_code("07"), Some(7));
        assert_eq!(parse_code(" 42 "), Some(42));
        assert_eq!(parse_code("9"), Some(9));
        assert_eq!(parse_code("100"), None);
        assert_eq!(parse_code("4a"), None);
        assert_eq!(parse_code(""), None);
    }
}
