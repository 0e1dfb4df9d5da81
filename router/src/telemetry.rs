//! OpenTelemetry: W3C trace context in and out of the router, and OTLP export of the router's
//! spans when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set (HTTP/protobuf;
//! the standard `OTEL_*` variables apply). Without it no exporter runs and the router still
//! forwards a `traceparent` of its own making.

use axum::http::HeaderMap;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP export: {0}")]
pub struct TelemetryError(String);

/// The tracer provider (to flush at exit) and the tracer for the `tracing` layer, when OTLP
/// export is configured.
pub fn init(
    service: &'static str,
) -> Result<Option<(SdkTracerProvider, opentelemetry_sdk::trace::Tracer)>, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    if !configured {
        return Ok(None);
    }
    let exporter = SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer(service);
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(Some((provider, tracer)))
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes the caller's trace (its `traceparent`) the parent of `span`.
pub fn adopt_parent(span: &tracing::Span, headers: &HeaderMap) {
    if span.is_disabled() || headers.get("traceparent").is_none() {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    let _ = span.set_parent(cx);
}

/// The `traceparent` that makes the cell's spans children of `span`, when `span` is
/// exported (an OpenTelemetry layer is installed); `None` otherwise.
pub fn traceparent_of(span: &tracing::Span) -> Option<(String, String)> {
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    if !sc.is_valid() {
        return None;
    }
    let trace = sc.trace_id().to_string();
    let header = format!(
        "00-{trace}-{}-{:02x}",
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    Some((header, trace))
}
