//! The text of one log line: the event's message, then each field as `key=value`. The journal's
//! MESSAGE and the stderr text are both built here, so `journalctl -u dingtalk-streamd` shows
//! `group member joined group=bot pid=4242` while GROUP= and PID= stay filterable fields.
//! Values that would be ambiguous (spaces, quotes, `=`, control characters, empty) are quoted
//! with Rust string escapes; an error recorded as an error carries its chain of causes.

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Causes followed when an error is recorded (a bound, in case a source chain loops).
const MAX_CAUSES: usize = 8;

/// One event's (or span's) fields, each rendered once: the message, and every other field in
/// the order it was recorded, as the journal field value and the text shows it.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    /// The `message` field (the format string), empty when there is none.
    pub(crate) message: String,
    /// Every other field with its rendered value.
    pub(crate) fields: Vec<(Field, String)>,
}

impl Captured {
    /// The rendered value of `field`, when it was recorded.
    pub(crate) fn get(&self, field: &Field) -> Option<&String> {
        self.fields
            .iter()
            .find_map(|(f, v)| (f == field).then_some(v))
    }

    /// `message key=value key="a value"`. Fields that `tracing-log` adds to records bridged
    /// from the `log` crate (`log.target`, `log.file`, ...) stay out of the text.
    pub(crate) fn line(&self) -> String {
        let mut out = String::with_capacity(self.message.len() + 24 * self.fields.len());
        out.push_str(&self.message);
        for (field, value) in &self.fields {
            let name = field.name();
            if name.starts_with("log.") {
                continue;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(name);
            out.push('=');
            push_value(&mut out, value);
        }
        out
    }

    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.push((field.clone(), value));
        }
    }
}

impl Visit for Captured {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, with_causes(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

/// Appends `value`, quoted and escaped when it would not read back as one plain token.
fn push_value(out: &mut String, value: &str) {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=');
    if plain {
        out.push_str(value);
    } else {
        let _ = write!(out, "{value:?}");
    }
}

/// `error: cause: its cause`, skipping a cause whose text the message already contains (many
/// of our errors print their source themselves).
pub(crate) fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    for _ in 0..MAX_CAUSES {
        let Some(e) = cause else { break };
        let t = e.to_string();
        if !t.is_empty() && !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = e.source();
    }
    text
}

/// The stderr formatter's field format: the same text as the journal's MESSAGE.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LineFields;

impl<'writer> FormatFields<'writer> for LineFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut captured = Captured::default();
        fields.record(&mut captured);
        writer.write_str(&captured.line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::subscriber::with_default;
    use tracing_subscriber::layer::{Context, SubscriberExt};

    /// Captures the text of every event.
    struct Lines(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Lines {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut c = Captured::default();
            event.record(&mut c);
            self.0.lock().unwrap().push(c.line());
        }
    }

    fn lines(f: impl FnOnce()) -> Vec<String> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sub = tracing_subscriber::registry().with(Lines(out.clone()));
        with_default(sub, f);
        out.lock().unwrap().clone()
    }

    #[derive(Debug, thiserror::Error)]
    #[error("spool write failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn fields_follow_the_message_as_key_value() {
        let got = lines(|| {
            let group = "bot";
            tracing::info!(group, pid = 4242, "group member joined");
            tracing::warn!(connection = %"c1", cause = "pong_timeout", up_for_ms = 1500u64, "connection lost");
            tracing::info!(flag = true, "no message fields quoted");
        });
        assert_eq!(
            got,
            [
                "group member joined group=bot pid=4242",
                "connection lost connection=c1 cause=pong_timeout up_for_ms=1500",
                "no message fields quoted flag=true",
            ]
        );
    }

    #[test]
    fn ambiguous_values_are_quoted_and_escaped() {
        let got = lines(|| {
            tracing::info!(
                error = %"ticket endpoint answered HTTP 503",
                empty = "",
                eq = "a=b",
                quote = "say \"hi\"",
                newline = "two\nlines",
                unicode = "钉钉",
                "x"
            );
        });
        assert_eq!(
            got,
            [
                r#"x error="ticket endpoint answered HTTP 503" empty="" eq="a=b" quote="say \"hi\"" newline="two\nlines" unicode=钉钉"#
            ]
        );
    }

    #[test]
    fn an_error_carries_its_causes_once() {
        let e = Outer(std::io::Error::other("No space left on device"));
        assert_eq!(
            with_causes(&e),
            "spool write failed: No space left on device"
        );
        let got = lines(|| {
            tracing::error!(
                error = &e as &(dyn std::error::Error + 'static),
                "cannot commit"
            );
        });
        assert_eq!(
            got,
            [r#"cannot commit error="spool write failed: No space left on device""#]
        );
        #[derive(Debug, thiserror::Error)]
        #[error("ticket request failed: {0}")]
        struct Repeats(#[source] std::io::Error);
        let e = Repeats(std::io::Error::other("connection refused"));
        assert_eq!(with_causes(&e), "ticket request failed: connection refused");
    }

    #[test]
    fn bridged_log_fields_stay_out_of_the_text() {
        let got = lines(|| {
            tracing::info!(log.target = "reqwest::connect", group = "bot", "hello");
        });
        assert_eq!(got, ["hello group=bot"]);
    }
}
