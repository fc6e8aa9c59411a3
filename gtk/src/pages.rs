//! The pages of the window, built once and kept in a `GtkStack`; `window.rs` fills and switches
//! them as the flow goes.

use adw::prelude::*;

use crate::listpage::ListPage;

/// Text of the warning shown next to every QR code and scanning choice (as Element words it).
pub const NEVER_SCAN: &str = "Never scan a code that someone sent you, and never show this code to anyone: whoever scans it can get into your account.";

pub struct Pages {
    pub stack: gtk::Stack,
    pub status: adw::StatusPage,
    pub grant_btn: gtk::Button,
    pub login_btn: gtk::Button,
    pub signout_btn: gtk::Button,
    pub refresh_btn: gtk::Button,
    /// To the devices of programs (signed in).
    pub delegations_btn: gtk::Button,
    /// To sandboxed apps' remembered answers.
    pub answers_btn: gtk::Button,

    pub choose: adw::StatusPage,
    pub homeserver: adw::EntryRow,
    pub homeserver_group: adw::PreferencesGroup,
    pub show_btn: gtk::Button,
    pub screen_btn: gtk::Button,
    pub file_btn: gtk::Button,
    pub clipboard_btn: gtk::Button,
    pub back_btn: gtk::Button,

    pub progress: adw::StatusPage,
    pub qr_title: gtk::Label,
    pub qr_picture: gtk::Picture,
    pub qr_note: gtk::Label,

    pub code_entry: gtk::Entry,
    pub code_btn: gtk::Button,

    pub show_code_label: gtk::Label,

    pub consent_device: adw::ActionRow,
    pub consent_host: adw::ActionRow,
    pub consent_code: adw::ActionRow,
    pub approve_btn: gtk::Button,
    pub deny_btn: gtk::Button,

    pub done: adw::StatusPage,
    pub done_btn: gtk::Button,
    pub error: adw::StatusPage,
    pub error_btn: gtk::Button,

    pub delegations: ListPage,
    pub answers: ListPage,
}

/// The pages that show the Cancel button (below the pages, outside the toasts' area).
pub const WITH_CANCEL: [&str; 4] = ["progress", "qr", "enter-code", "show-code"];

fn status_page(name: &str, icon: &str, title: &str) -> adw::StatusPage {
    let page = adw::StatusPage::builder().icon_name(icon).title(title).vexpand(true).build();
    page.set_widget_name(name);
    page
}

pub fn button(label: &str, css: Option<&str>) -> gtk::Button {
    let b = gtk::Button::with_label(label);
    b.add_css_class("pill");
    if let Some(c) = css {
        b.add_css_class(c);
    }
    b.set_halign(gtk::Align::Center);
    b
}

fn column(children: &[&gtk::Widget]) -> gtk::Box {
    let col = gtk::Box::new(gtk::Orientation::Vertical, 12);
    col.set_halign(gtk::Align::Center);
    for c in children {
        col.append(*c);
    }
    col
}

fn wrapped(text: &str) -> gtk::Label {
    let l = gtk::Label::new(Some(text));
    l.set_wrap(true);
    l.set_justify(gtk::Justification::Center);
    l.set_max_width_chars(48);
    l
}

impl Pages {
    pub fn build() -> Self {
        let stack = gtk::Stack::new();
        stack.set_transition_type(gtk::StackTransitionType::Crossfade);
        stack.set_transition_duration(150);
        // Status.
        let status = status_page("status", "network-workgroup-symbolic", "Link a Device");
        let grant_btn = button("Link a new device", Some("suggested-action"));
        let login_btn = button("Sign this computer in", Some("suggested-action"));
        let signout_btn = button("Sign out", Some("destructive-action"));
        let refresh_btn = button("Refresh", None);
        let delegations_btn = button("Devices of programs", None);
        let answers_btn = button("Answers to sandboxed apps", None);
        status.set_child(Some(&column(&[
            grant_btn.upcast_ref(),
            login_btn.upcast_ref(),
            delegations_btn.upcast_ref(),
            answers_btn.upcast_ref(),
            signout_btn.upcast_ref(),
            refresh_btn.upcast_ref(),
        ])));
        stack.add_named(&status, Some("status"));

        // Choice of direction.
        let choose = status_page("choose", "camera-photo-symbolic", "Link a new device");
        choose.set_icon_name(None);
        let homeserver = adw::EntryRow::builder().title("Homeserver (optional)").build();
        let homeserver_group = adw::PreferencesGroup::new();
        homeserver_group.add(&homeserver);
        let show_btn = button("Show a QR code", Some("suggested-action"));
        let screen_btn = button("Scan a QR code on the screen", None);
        let file_btn = button("Open an image of a QR code…", None);
        let clipboard_btn = button("Paste a QR code from the clipboard", None);
        let back_btn = button("Back", None);
        let choose_note = wrapped(NEVER_SCAN);
        choose_note.add_css_class("dim-label");
        choose.set_child(Some(&column(&[
            homeserver_group.upcast_ref(),
            show_btn.upcast_ref(),
            screen_btn.upcast_ref(),
            file_btn.upcast_ref(),
            clipboard_btn.upcast_ref(),
            choose_note.upcast_ref(),
            back_btn.upcast_ref(),
        ])));
        stack.add_named(&choose, Some("choose"));

        // Progress.
        let progress = status_page("progress", "content-loading-symbolic", "Starting…");
        let spinner = gtk::Spinner::new();
        spinner.set_size_request(32, 32);
        spinner.start();
        progress.set_child(Some(&column(&[spinner.upcast_ref()])));
        stack.add_named(&progress, Some("progress"));

        // The QR code we show.
        let qr_title = gtk::Label::new(Some("Scan this QR code with the other device"));
        qr_title.add_css_class("title-2");
        qr_title.set_wrap(true);
        let qr_picture = gtk::Picture::new();
        qr_picture.set_size_request(320, 320);
        qr_picture.set_can_shrink(true);
        qr_picture.set_alternative_text(Some("QR code"));
        qr_picture.update_property(&[gtk::accessible::Property::Label("QR code")]);
        let qr_warning = wrapped(NEVER_SCAN);
        qr_warning.add_css_class("warning");
        let qr_note = wrapped("");
        qr_note.add_css_class("dim-label");
        let qr_box = column(&[
            qr_title.upcast_ref(),
            qr_picture.upcast_ref(),
            qr_warning.upcast_ref(),
            qr_note.upcast_ref(),
        ]);
        qr_box.set_margin_top(18);
        qr_box.set_margin_bottom(18);
        qr_box.set_valign(gtk::Align::Center);
        stack.add_named(&qr_box, Some("qr"));

        // Check code: we enter it.
        let enter_code = status_page("enter-code", "dialog-password-symbolic", "Enter the check code");
        enter_code.set_description(Some("Type the two-digit code shown on the other device."));
        let code_entry = gtk::Entry::new();
        code_entry.set_max_length(2);
        code_entry.set_width_chars(4);
        code_entry.set_input_purpose(gtk::InputPurpose::Digits);
        code_entry.set_halign(gtk::Align::Center);
        code_entry.add_css_class("title-1");
        code_entry.update_property(&[gtk::accessible::Property::Label("Check code")]);
        let code_btn = button("Continue", Some("suggested-action"));
        code_btn.set_sensitive(false);
        enter_code.set_child(Some(&column(&[code_entry.upcast_ref(), code_btn.upcast_ref()])));
        stack.add_named(&enter_code, Some("enter-code"));

        // Check code: we show it.
        let show_code =
            status_page("show-code", "dialog-password-symbolic", "Enter this code on the other device");
        show_code.set_description(Some("The other device asks for this two-digit code."));
        let show_code_label = gtk::Label::new(Some("--"));
        show_code_label.add_css_class("title-1");
        show_code.set_child(Some(&column(&[show_code_label.upcast_ref()])));
        stack.add_named(&show_code, Some("show-code"));

        // Consent.
        let consent = status_page("consent", "dialog-question-symbolic", "Allow the new device?");
        consent.set_description(Some(
            "Only approve if you are signing in a device of your own, right now. Your browser opens the consent page next.",
        ));
        let consent_device = adw::ActionRow::builder().title("New device").build();
        let consent_host = adw::ActionRow::builder().title("Consent page").build();
        let consent_code = adw::ActionRow::builder().title("Code").build();
        let group = adw::PreferencesGroup::new();
        group.add(&consent_device);
        group.add(&consent_host);
        group.add(&consent_code);
        let approve_btn = button("Approve", Some("suggested-action"));
        let deny_btn = button("Deny", Some("destructive-action"));
        let row = gtk::Box::new(gtk::Orientation::Horizontal, 12);
        row.set_halign(gtk::Align::Center);
        row.append(&deny_btn);
        row.append(&approve_btn);
        consent.set_child(Some(&column(&[group.upcast_ref(), row.upcast_ref()])));
        stack.add_named(&consent, Some("consent"));

        // The end.
        let done = status_page("done", "emblem-ok-symbolic", "Done");
        let done_btn = button("Done", Some("suggested-action"));
        done.set_child(Some(&column(&[done_btn.upcast_ref()])));
        stack.add_named(&done, Some("done"));
        let error = status_page("error", "dialog-error-symbolic", "Something went wrong");
        let error_btn = button("Back", None);
        error.set_child(Some(&column(&[error_btn.upcast_ref()])));
        stack.add_named(&error, Some("error"));

        let delegations = ListPage::build(
            "delegations",
            "Devices of programs",
            "Programs on this computer that got a Matrix device of their own from matrix-linkd. Revoke one to sign its device out of your account.",
        );
        stack.add_named(&delegations.root, Some("delegations"));
        let answers = ListPage::build(
            "answers",
            "Answers to sandboxed apps",
            "What you answered when a sandboxed app (Flatpak) asked to use matrix-linkd. Reset an app to be asked again next time.",
        );
        stack.add_named(&answers.root, Some("answers"));

        Pages {
            stack,
            status,
            grant_btn,
            login_btn,
            signout_btn,
            refresh_btn,
            delegations_btn,
            answers_btn,
            choose,
            homeserver,
            homeserver_group,
            show_btn,
            screen_btn,
            file_btn,
            clipboard_btn,
            back_btn,
            progress,
            qr_title,
            qr_picture,
            qr_note,
            code_entry,
            code_btn,
            show_code_label,
            consent_device,
            consent_host,
            consent_code,
            approve_btn,
            deny_btn,
            done,
            done_btn,
            error,
            error_btn,
            delegations,
            answers,
        }
    }
}
