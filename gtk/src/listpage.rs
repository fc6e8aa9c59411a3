//! A page that lists things with one button each (the devices of programs, sandboxed apps'
//! answers): a title and what it is about, the outcome of the last action, the list or a sentence
//! saying why there is none, and Back and Refresh.

use std::cell::RefCell;

use adw::prelude::*;

use crate::pages::button;

pub struct ListPage {
    pub root: gtk::ScrolledWindow,
    list: gtk::ListBox,
    rows: RefCell<Vec<adw::ActionRow>>,
    /// Why nothing is listed (empty, not available), in plain words.
    note: gtk::Label,
    /// What the last action did.
    outcome: gtk::Label,
    pub back_btn: gtk::Button,
    pub refresh_btn: gtk::Button,
}

fn label(text: &str, css: &[&str]) -> gtk::Label {
    let l = gtk::Label::new(Some(text));
    l.set_wrap(true);
    l.set_xalign(0.0);
    for c in css {
        l.add_css_class(c);
    }
    l
}

impl ListPage {
    /// `name`: the widget name (the stack page's name too).
    pub fn build(name: &str, title: &str, description: &str) -> Self {
        let col = gtk::Box::new(gtk::Orientation::Vertical, 18);
        col.set_margin_top(24);
        col.set_margin_bottom(24);
        col.set_margin_start(12);
        col.set_margin_end(12);
        let heading = label(title, &["title-2"]);
        col.append(&heading);
        col.append(&label(description, &["dim-label"]));
        let outcome = label("", &["accent"]);
        outcome.set_visible(false);
        col.append(&outcome);
        let list = gtk::ListBox::new();
        list.set_selection_mode(gtk::SelectionMode::None);
        list.add_css_class("boxed-list");
        list.set_visible(false);
        col.append(&list);
        let note = label("Loading…", &[]);
        col.append(&note);
        let back_btn = button("Back", None);
        let refresh_btn = button("Refresh", None);
        let buttons = gtk::Box::new(gtk::Orientation::Horizontal, 12);
        buttons.set_halign(gtk::Align::Center);
        buttons.append(&back_btn);
        buttons.append(&refresh_btn);
        col.append(&buttons);
        let clamp = adw::Clamp::builder().maximum_size(600).child(&col).build();
        let root = gtk::ScrolledWindow::builder()
            .hscrollbar_policy(gtk::PolicyType::Never)
            .vexpand(true)
            .child(&clamp)
            .build();
        root.set_widget_name(name);
        ListPage { root, list, rows: RefCell::new(Vec::new()), note, outcome, back_btn, refresh_btn }
    }

    /// Empties the list and says why in `note` (still loading, nothing there, not available).
    pub fn clear(&self, note: &str) {
        for row in self.rows.take() {
            self.list.remove(&row);
        }
        self.list.set_visible(false);
        self.note.set_text(note);
        self.note.set_visible(true);
    }

    /// Shows these rows, or `empty` when there are none. Each row: a title, a subtitle (several
    /// lines) and a button whose accessible name is `button_name`.
    pub fn fill(&self, rows: Vec<Row>, empty: &str) {
        self.clear(empty);
        if rows.is_empty() {
            return;
        }
        self.note.set_visible(false);
        self.list.set_visible(true);
        let mut kept = self.rows.borrow_mut();
        for r in rows {
            let row = adw::ActionRow::new();
            // Names and IDs are the program's or the app's: shown as text, never as markup (set
            // before the texts, which are parsed as they are set).
            row.set_use_markup(false);
            row.set_title(&r.title);
            row.set_subtitle(&r.subtitle);
            row.set_subtitle_lines(0);
            let btn = gtk::Button::with_label(r.button_label);
            btn.set_valign(gtk::Align::Center);
            if let Some(css) = r.button_css {
                btn.add_css_class(css);
            }
            btn.update_property(&[gtk::accessible::Property::Label(&r.button_name)]);
            let on_click = r.on_click;
            btn.connect_clicked(move |b| on_click(b));
            row.add_suffix(&btn);
            self.list.append(&row);
            kept.push(row);
        }
    }

    /// Says what the last action did; an empty text hides it.
    pub fn set_outcome(&self, text: &str) {
        self.outcome.set_text(text);
        self.outcome.set_visible(!text.is_empty());
    }
}

/// One row of a [`ListPage`].
pub struct Row {
    pub title: String,
    pub subtitle: String,
    pub button_label: &'static str,
    /// The button's accessible name: its label and what it acts on (`Revoke ABCDEF`).
    pub button_name: String,
    pub button_css: Option<&'static str>,
    pub on_click: Box<dyn Fn(&gtk::Button)>,
}
