//! The journald layer: tracing-journald's native-protocol layer, with MESSAGE rewritten to
//! carry the event's fields as text (`line.rs`). tracing-journald has no hook for MESSAGE, so
//! each event is rebuilt with the new message and the other values already rendered, and
//! handed to it; fields stay separate journal fields (CAUSE=, GROUP=, ...) as before. The
//! cost is one small allocation per field of an *enabled* event: nothing on the per-message
//! path at the default level.

use super::line::Captured;
use tracing::field::Value;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// tracing-journald's layer with the fields written into MESSAGE as well.
pub struct Journal {
    inner: tracing_journald::Layer,
}

impl Journal {
    /// Wraps a configured tracing-journald layer.
    pub fn new(inner: tracing_journald::Layer) -> Journal {
        Journal { inner }
    }
}

impl<S> Layer<S> for Journal
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        self.inner.on_record(id, values, ctx);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let fields = meta.fields();
        let Some(message) = fields.field("message") else {
            // No message to extend (`info!(a = 1)` without text): as tracing-journald sends it.
            self.inner.on_event(event, ctx);
            return;
        };
        let mut captured = Captured::default();
        event.record(&mut captured);
        let text = captured.line();
        // One value per field of the callsite, in its order: what `value_set_all` requires.
        // It is the constructor tracing's own event macros expand to.
        let values: Vec<Option<&dyn Value>> = fields
            .iter()
            .map(|f| {
                if f == message {
                    Some(&text as &dyn Value)
                } else {
                    captured.get(&f).map(|v| v as &dyn Value)
                }
            })
            .collect();
        let values = fields.value_set_all(&values);
        let rebuilt = if event.is_root() {
            Event::new_child_of(None, meta, &values)
        } else if let Some(parent) = event.parent() {
            Event::new_child_of(parent.clone(), meta, &values)
        } else {
            Event::new(meta, &values)
        };
        self.inner.on_event(&rebuilt, ctx);
    }
}
