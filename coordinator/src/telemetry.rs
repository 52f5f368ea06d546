//! Logs and traces.
//!
//! Logs go to stderr, filtered by `DTX_LOG`; lines inside a transaction's span carry its
//! gid. Traces are exported over OTLP (HTTP, JSON) when an endpoint is configured
//! (`otlp_endpoint`, `DTX_OTLP_ENDPOINT` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`):
//! a span per drive of a transaction and per branch call.
//!
//! W3C trace context: an initiator's `traceparent` is kept with the transaction (one is
//! made up when it sends none), every drive of the transaction continues that trace —
//! whichever coordinator does it, however late — and every participant call carries a
//! `traceparent` of its own span (or, with tracing off, the transaction's).

use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

tokio::task_local! {
    /// The `traceparent` of the API request being served (set by [`layer`]).
    static REQUEST_TRACEPARENT: Option<String>;
}

/// What must be flushed at exit.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("dtx-coordinator: flushing traces: {e}");
        }
    }
}

/// The OTLP endpoint to export to, if any: the configured one, else the standard variable.
pub fn endpoint(configured: Option<&str>) -> Option<String> {
    configured
        .map(str::to_owned)
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.trim().is_empty())
}

/// Installs the global subscriber: logs to stderr (`DTX_LOG`, default `info`) and, with an
/// endpoint (see [`endpoint`]), spans to OTLP/HTTP (JSON) at `{endpoint}/v1/traces`. Call
/// it outside the async runtime.
pub fn init(otlp_endpoint: Option<&str>) -> Result<Telemetry, String> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_env("DTX_LOG").unwrap_or_else(|_| "info".into()));
    let mut telemetry = Telemetry::default();
    let traces = match otlp_endpoint {
        None => None,
        Some(base) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
                .with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')))
                .build()
                .map_err(|e| format!("OTLP exporter for {base}: {e}"))?;
            use opentelemetry_otlp::WithExportConfig as _;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name("dtx-coordinator")
                        .build(),
                )
                .build();
            let tracer = provider.tracer("dtx-coordinator");
            telemetry.provider = Some(provider);
            // Spans of the coordinator only (branch calls are debug-level spans), whatever
            // DTX_LOG says; its debug events ride along as span events.
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(EnvFilter::new("dtx_coordinator=debug")),
            )
        }
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| format!("installing the log subscriber: {e}"))?;
    Ok(telemetry)
}

/// Parses a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); `None` if malformed or
/// all-zero ids.
pub fn parse_traceparent(s: &str) -> Option<SpanContext> {
    let mut parts = s.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !(hex(version) && hex(trace) && hex(span) && hex(flags)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let cx = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    );
    cx.is_valid().then_some(cx)
}

fn format(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

/// A new sampled `traceparent` with random ids, for a transaction whose initiator sent none.
pub fn new_traceparent() -> String {
    let trace = TraceId::from_bytes(fastrand::u128(1..).to_be_bytes());
    let span = SpanId::from_bytes(fastrand::u64(1..).to_be_bytes());
    format(&SpanContext::new(
        trace,
        span,
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    ))
}

/// The initiator's `traceparent` of the request being served, checked, if it sent one.
pub fn request_traceparent() -> Option<String> {
    REQUEST_TRACEPARENT
        .try_with(|t| t.clone())
        .ok()
        .flatten()
        .and_then(|t| parse_traceparent(&t).map(|cx| format(&cx)))
}

/// Runs `fut` with the request's `traceparent` (if any) visible to
/// [`request_traceparent`].
pub async fn with_request_traceparent<F: std::future::Future>(
    traceparent: Option<String>,
    fut: F,
) -> F::Output {
    REQUEST_TRACEPARENT.scope(traceparent, fut).await
}

/// Makes `span` a child of the stored `traceparent` (no-op without tracing).
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(parse_traceparent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(cx));
    }
}

/// The `traceparent` to send to a participant from inside `span`: its own span when
/// tracing is on, else the transaction's.
pub fn outgoing_traceparent(span: &tracing::Span, stored: Option<&str>) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        Some(format(&sc))
    } else {
        stored.map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip_and_bad_ones_are_refused() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parse_traceparent(tp).unwrap();
        assert_eq!(format(&cx), tp);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        let fresh = new_traceparent();
        assert!(parse_traceparent(&fresh).is_some(), "{fresh}");
        assert_ne!(fresh, new_traceparent());
    }
}
