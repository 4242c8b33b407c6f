//! W3C trace context across the job's life: a caller's `traceparent` becomes the parent of the
//! request's span, the job stores the context of its enqueue span, each attempt (on whichever
//! replica claims it) continues that trace, and outgoing runner and webhook requests carry it on.
//! With OTLP export off there are no span contexts: a caller's `traceparent` is still stored with
//! the job, so a replica that exports continues that trace.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A `traceparent` value of the form the W3C spec defines (version 00), else `None`.
pub fn valid(traceparent: &str) -> Option<&str> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let ok = parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2);
    ok.then(|| traceparent.trim())
}

fn context_of(traceparent: &str) -> opentelemetry::Context {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` a child of `traceparent` (no-op when spans are not exported).
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(tp) = traceparent.and_then(valid) {
        let _ = span.set_parent(context_of(tp));
    }
}

/// The `traceparent` of the current span, when spans are exported and one is active.
pub fn current() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Adds `traceparent` to an outgoing request, from the current span.
pub fn traced(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match current() {
        Some(tp) => request.header("traceparent", tp),
        None => request,
    }
}

/// The current span's trace and span ids, for log lines.
pub fn ids() -> Option<(String, String)> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// The JSON log format with `trace_id` and `span_id` added to lines written inside an exported
/// span, when `on` (OTLP export is on; otherwise there are no ids to look up).
pub struct WithTraceIds<F> {
    pub on: bool,
    pub format: F,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if !self.on {
            return self.format.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.format.format_event(ctx, tracing_subscriber::fmt::format::Writer::new(&mut line), event)?;
        if let (Some((trace, span)), Some(end)) = (ids(), line.rfind('}')) {
            line.insert_str(end, &format!(",\"trace_id\":\"{trace}\",\"span_id\":\"{span}\""));
        }
        writer.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::valid;

    #[test]
    fn traceparent_form() {
        assert!(valid("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert!(valid(bad).is_none(), "{bad}");
        }
    }
}
