//! Sandboxed apps' remembered answers: what the user answered when a Flatpak app asked to use
//! matrix-linkd, as the daemon keeps it in the xdg-desktop-portal permission store (table
//! [`permissions::TABLE`], one entry per permission, each mapping an app ID to `["yes"]` or
//! `["no"]`). Read with `Lookup`; an app is reset with `DeletePermission` (version 2 of the
//! interface) in every entry, so that it is asked again.

use std::collections::{BTreeMap, HashMap};

use matrix_linkd_client::api::permissions;
use zbus::{Connection, zvariant::OwnedValue};

/// One remembered answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Allowed,
    Denied,
    /// Neither `yes` nor `no` (written by something else): shown, and reset like the others.
    Unknown,
}

impl Answer {
    /// The store's value (`["yes"]`, `["no"]`) as an answer.
    pub fn of(values: &[String]) -> Self {
        match values {
            [v] if v == permissions::YES => Answer::Allowed,
            [v] if v == permissions::NO => Answer::Denied,
            _ => Answer::Unknown,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            Answer::Allowed => "Allowed",
            Answer::Denied => "Denied",
            Answer::Unknown => "Not known",
        }
    }
}

/// What a permission (an entry ID of the table) lets an app do, in words.
pub fn permission_title(id: &str) -> &'static str {
    match id {
        permissions::DELEGATE => "Get a Matrix device of its own",
        permissions::SHARE_SECRETS => "Receive the encryption keys",
        permissions::GRANT => "Link new devices",
        permissions::LOGIN => "Sign this computer in",
        _ => "Another permission",
    }
}

/// One app's answers, in the order of [`permissions::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppAnswers {
    pub app_id: String,
    pub answers: Vec<(&'static str, Answer)>,
}

impl AppAnswers {
    /// One line per permission: `Get a Matrix device of its own: Allowed`.
    pub fn summary(&self) -> String {
        self.answers
            .iter()
            .map(|(id, answer)| format!("{}: {}", permission_title(id), answer.text()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The entries of the table (permission ID, the entry's app → values) as one list per app,
/// sorted by app ID.
pub fn by_app(entries: &[(&'static str, HashMap<String, Vec<String>>)]) -> Vec<AppAnswers> {
    let mut apps: BTreeMap<&str, Vec<(&'static str, Answer)>> = BTreeMap::new();
    for id in permissions::ALL {
        for (_, entry) in entries.iter().filter(|(e, _)| *e == id) {
            for (app, values) in entry {
                apps.entry(app).or_default().push((id, Answer::of(values)));
            }
        }
    }
    apps.into_iter().map(|(app, answers)| AppAnswers { app_id: app.to_owned(), answers }).collect()
}

/// Why the answers could not be read or reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The permission store is not on the bus (and cannot be started).
    NotRunning,
    /// It answered with another error (its message).
    Failed(String),
}

impl StoreError {
    fn of(e: zbus::Error) -> Self {
        match store_error_name(&e).as_deref() {
            Some(name) if crate::errors::service_missing(name) => StoreError::NotRunning,
            _ => StoreError::Failed(e.to_string()),
        }
    }
}

fn store_error_name(e: &zbus::Error) -> Option<String> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.to_string()),
        zbus::Error::FDO(fdo) => Some(zbus::DBusError::name(&**fdo).to_string()),
        _ => None,
    }
}

#[zbus::proxy(
    interface = "org.freedesktop.impl.portal.PermissionStore",
    default_service = "org.freedesktop.impl.portal.PermissionStore",
    default_path = "/org/freedesktop/impl/portal/PermissionStore",
    gen_blocking = false
)]
trait PermissionStore {
    fn lookup(&self, table: &str, id: &str) -> zbus::Result<(HashMap<String, Vec<String>>, OwnedValue)>;

    fn delete_permission(&self, table: &str, id: &str, app: &str) -> zbus::Result<()>;
}

async fn store(conn: &Connection) -> Result<PermissionStoreProxy<'static>, StoreError> {
    PermissionStoreProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(StoreError::of)
}

/// Whether an error is the store's "no such entry" (nothing remembered yet).
fn not_found(e: &zbus::Error) -> bool {
    store_error_name(e).as_deref() == Some(permissions::STORE_NOT_FOUND)
}

/// Every app's remembered answers.
pub async fn read(conn: &Connection) -> Result<Vec<AppAnswers>, StoreError> {
    let store = store(conn).await?;
    let mut entries = Vec::new();
    for id in permissions::ALL {
        match store.lookup(permissions::TABLE, id).await {
            Ok((entry, _data)) => entries.push((id, entry)),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(StoreError::of(e)),
        }
    }
    Ok(by_app(&entries))
}

/// Forgets every answer of `app`: it is asked again next time.
pub async fn reset(conn: &Connection, app: &str) -> Result<(), StoreError> {
    let store = store(conn).await?;
    for id in permissions::ALL {
        match store.delete_permission(permissions::TABLE, id, app).await {
            Ok(()) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(StoreError::of(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pairs: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
        pairs.iter().map(|(app, v)| (app.to_string(), vec![v.to_string()])).collect()
    }

    #[test]
    fn answers_per_app_in_permission_order() {
        let entries = [
            (permissions::LOGIN, entry(&[("org.example.B", "yes")])),
            (permissions::DELEGATE, entry(&[("org.example.B", "no"), ("org.example.A", "yes")])),
            (permissions::SHARE_SECRETS, entry(&[("org.example.A", "maybe")])),
        ];
        let apps = by_app(&entries);
        assert_eq!(
            apps,
            [
                AppAnswers {
                    app_id: "org.example.A".into(),
                    answers: vec![
                        (permissions::DELEGATE, Answer::Allowed),
                        (permissions::SHARE_SECRETS, Answer::Unknown)
                    ],
                },
                AppAnswers {
                    app_id: "org.example.B".into(),
                    answers: vec![
                        (permissions::DELEGATE, Answer::Denied),
                        (permissions::LOGIN, Answer::Allowed)
                    ],
                },
            ]
        );
        assert_eq!(
            apps[1].summary(),
            "Get a Matrix device of its own: Denied\nSign this computer in: Allowed"
        );
        assert!(by_app(&[]).is_empty());
    }

    #[test]
    fn every_permission_has_words() {
        for id in permissions::ALL {
            assert_ne!(permission_title(id), permission_title("other"), "{id}");
        }
        assert_eq!(Answer::of(&["yes".into()]), Answer::Allowed);
        assert_eq!(Answer::of(&["no".into()]), Answer::Denied);
        assert_eq!(Answer::of(&[]), Answer::Unknown);
    }
}
