//! The daemon's log: its own lines at the configured level, libraries at `info` at most, and no
//! `ERROR` for answers that are expected. matrix-sdk 0.18 logs every non-2xx answer at `ERROR`,
//! including the `404`s that only mean "not there (yet)": a device ID before the new device
//! exists, account data (`m.secret_storage.default_key`, `m.key_backup`) an account never set.
//! Those lines would make every good flow look broken; they are dropped. Every failure that matters
//! is reported by the daemon's own code, with its error name.

use tracing::{Event, Level, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter,
    layer::{Context, Layer, SubscriberExt as _},
    util::SubscriberInitExt as _,
};

use crate::config::LogLevel;

/// Installs the log for `level` on standard error.
pub fn init(level: LogLevel) {
    let dep = match level {
        LogLevel::Debug | LogLevel::Trace => "info",
        other => other.as_str(),
    };
    let filter = format!(
        "warn,matrix_linkd={lvl},matrix_sdk={dep},matrix_sdk_base={dep},matrix_sdk_crypto={dep}",
        lvl = level.as_str()
    );
    tracing_subscriber::registry()
        .with(ExpectedNotFound)
        .with(EnvFilter::new(filter))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false))
        .init();
}

/// Drops matrix-sdk's `ERROR` lines about a `404`.
struct ExpectedNotFound;

impl<S: Subscriber> Layer<S> for ExpectedNotFound {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() != Level::ERROR || !meta.target().starts_with("matrix_sdk") {
            return true;
        }
        let mut seen = NotFound(false);
        event.record(&mut seen);
        !seen.0
    }
}

/// Whether an event's fields speak of a `404` (the status field, or the error's debug form).
struct NotFound(bool);

impl tracing::field::Visit for NotFound {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0 |= field.name() == "status" && value == 404;
    }
    fn record_debug(&mut self, _: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        self.0 |= text.contains("status_code: 404") || text.contains("M_NOT_FOUND");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn expected_not_found_answers_are_not_errors() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(ExpectedNotFound)
            .with(tracing_subscriber::fmt::layer().with_writer(move || writer.clone()).with_ansi(false));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "matrix_sdk::http_client", status = 404u64, "Error while sending request");
            let e = "Api(Server(MatrixError(Error { status_code: 404, body: NotJson { .. } })))";
            tracing::error!(target: "matrix_sdk::encryption::recovery", error = ?e, "Couldn't update the recovery state");
            tracing::error!(target: "matrix_sdk::http_client", status = 500u64, "Error while sending request");
            tracing::error!(target: "matrix_linkd", status = 404u64, "ours stays");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("recovery state"), "{text}");
        assert!(text.contains("status=500"), "{text}");
        assert!(text.contains("ours stays"), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
    }
}
