//! HTTP request-duration middleware, labelled by route template (never the raw path, which
//! would carry job ids into label values).

use std::sync::Arc;
use std::time::Instant;

use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};

use super::Metrics;

/// Records every request's duration into `http_server_request_duration_seconds`.
pub struct HttpMetrics(pub Arc<Metrics>);

impl<E: Endpoint> Middleware<E> for HttpMetrics {
    type Output = HttpMetricsEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        HttpMetricsEndpoint { inner: ep, metrics: self.0.clone() }
    }
}

/// The wrapped endpoint.
pub struct HttpMetricsEndpoint<E> {
    inner: E,
    metrics: Arc<Metrics>,
}

impl<E: Endpoint> Endpoint for HttpMetricsEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        let start = Instant::now();
        let method = method_label(req.method());
        let route = route_template(req.uri().path());
        // One span per request (exported when OTLP tracing is on): method and route template only.
        let span = tracing::debug_span!("http.request", http.method = %method, http.route = route);
        let res = tracing::Instrument::instrument(self.inner.call(req), span).await;
        let status = match &res {
            Ok(_) => None,
            Err(e) => Some(e.status().as_u16()),
        };
        let resp = res.map(IntoResponse::into_response);
        let status = status.unwrap_or_else(|| resp.as_ref().map(|r| r.status().as_u16()).unwrap_or(500));
        self.metrics.http_request(method, route, status, start.elapsed());
        resp
    }
}

/// The method as a label: the standard ones by name, anything else as `other` (a client must
/// not be able to mint label values).
fn method_label(method: &poem::http::Method) -> &'static str {
    use poem::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Maps a path to the route template it matches, or `other`.
pub fn route_template(path: &str) -> &'static str {
    match path {
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/openapi.json" => "/openapi.json",
        "/v1/jobs" => "/v1/jobs",
        p if p == "/docs" || p.starts_with("/docs/") => "/docs",
        p => match p.strip_prefix("/v1/jobs/") {
            Some(rest) if !rest.contains('/') => "/v1/jobs/{job_id}",
            Some(rest) if rest.ends_with("/cancel") && rest.matches('/').count() == 1 => "/v1/jobs/{job_id}/cancel",
            _ => "other",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::route_template;

    #[test]
    fn job_ids_never_become_labels() {
        assert_eq!(route_template("/v1/jobs/0192f0a0-0000-7000-8000-000000000000"), "/v1/jobs/{job_id}");
        assert_eq!(route_template("/v1/jobs/abc/cancel"), "/v1/jobs/{job_id}/cancel");
        assert_eq!(route_template("/v1/jobs/a/b/c"), "other");
        assert_eq!(route_template("/random"), "other");
    }

    #[test]
    fn only_standard_methods_become_labels() {
        let custom = poem::http::Method::from_bytes(b"BREW").expect("a valid extension method");
        assert_eq!(super::method_label(&poem::http::Method::GET), "GET");
        assert_eq!(super::method_label(&custom), "other");
    }
}
