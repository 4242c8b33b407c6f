//! HTTP request-duration middleware, labelled by route template (never the raw path, which
//! would carry job ids into label values).

use std::sync::Arc;
use std::time::Instant;

use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};

use super::Metrics;

/// Records every request's duration into `http_server_request_duration_seconds`, labelled by
/// the template of the route it matched.
pub struct HttpMetrics {
    /// Where to record.
    pub metrics: Arc<Metrics>,
    /// The service's route templates.
    pub routes: Arc<RouteTemplates>,
}

impl<E: Endpoint> Middleware<E> for HttpMetrics {
    type Output = HttpMetricsEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        HttpMetricsEndpoint { inner: ep, metrics: self.metrics.clone(), routes: self.routes.clone() }
    }
}

/// The wrapped endpoint.
pub struct HttpMetricsEndpoint<E> {
    inner: E,
    metrics: Arc<Metrics>,
    routes: Arc<RouteTemplates>,
}

impl<E: Endpoint> Endpoint for HttpMetricsEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        let start = Instant::now();
        crate::memory::note_activity();
        let method = method_label(req.method());
        let route = self.routes.label(req.uri().path());
        // One span per request (exported when OTLP tracing is on): method and route template only.
        let span = tracing::debug_span!("http.request", http.method = %method, http.route = route);
        // A caller's trace continues here (and, through the job, on whichever replica runs it).
        if let Some(tp) = req.headers().get("traceparent").and_then(|v| v.to_str().ok()) {
            super::trace::set_parent(&span, Some(tp));
        }
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

/// The route templates a path can match, each as its segments (`{name}` matches any one
/// non-empty segment). Built once from the OpenAPI document's paths and the few routes outside
/// it, so a new operation gets its own label without an edit here. Labels are `'static`: they
/// are made once at start-up, from the service's own routes, never from a request.
pub struct RouteTemplates {
    templates: Vec<(&'static str, Vec<Segment>)>,
    /// Prefixes that label everything below them (Swagger UI's assets).
    prefixes: Vec<&'static str>,
}

enum Segment {
    Literal(String),
    Param,
}

impl RouteTemplates {
    /// From exact templates (`/v1/jobs/{job_id}`) and prefixes (`/docs`).
    pub fn new<'a>(templates: impl IntoIterator<Item = &'a str>, prefixes: &[&'static str]) -> Self {
        let templates = templates
            .into_iter()
            .map(|t| {
                let label: &'static str = Box::leak(t.to_owned().into_boxed_str());
                let segments = t
                    .split('/')
                    .skip(1)
                    .map(|s| {
                        if s.starts_with('{') && s.ends_with('}') {
                            Segment::Param
                        } else {
                            Segment::Literal(s.to_owned())
                        }
                    })
                    .collect();
                (label, segments)
            })
            .collect();
        Self { templates, prefixes: prefixes.to_vec() }
    }

    /// The template `path` matches, or `other`.
    pub fn label(&self, path: &str) -> &'static str {
        if let Some(p) =
            self.prefixes.iter().find(|p| path == **p || path.strip_prefix(**p).is_some_and(|r| r.starts_with('/')))
        {
            return p;
        }
        let Some(rest) = path.strip_prefix('/') else { return "other" };
        'templates: for (label, segments) in &self.templates {
            let mut parts = rest.split('/');
            for seg in segments {
                match (seg, parts.next()) {
                    (Segment::Literal(l), Some(p)) if l == p => {}
                    (Segment::Param, Some(p)) if !p.is_empty() => {}
                    _ => continue 'templates,
                }
            }
            if parts.next().is_none() {
                return label;
            }
        }
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::RouteTemplates;

    #[test]
    fn job_ids_never_become_labels() {
        let t = RouteTemplates::new(
            ["/healthz", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/events"],
            &["/docs"],
        );
        assert_eq!(t.label("/v1/jobs/0192f0a0-0000-7000-8000-000000000000"), "/v1/jobs/{job_id}");
        assert_eq!(t.label("/v1/jobs/abc/cancel"), "/v1/jobs/{job_id}/cancel");
        assert_eq!(t.label("/v1/jobs/abc/events"), "/v1/jobs/{job_id}/events");
        assert_eq!(t.label("/v1/jobs"), "/v1/jobs");
        assert_eq!(t.label("/v1/jobs/"), "other");
        assert_eq!(t.label("/v1/jobs/a/b/c"), "other");
        assert_eq!(t.label("/docs/swagger.js"), "/docs");
        assert_eq!(t.label("/docsx"), "other");
        assert_eq!(t.label("/random"), "other");
    }

    #[test]
    fn only_standard_methods_become_labels() {
        let custom = poem::http::Method::from_bytes(b"BREW").expect("a valid extension method");
        assert_eq!(super::method_label(&poem::http::Method::GET), "GET");
        assert_eq!(super::method_label(&custom), "other");
    }
}
