//! The job console at `/ui`: a static page, its script and its style, embedded in the binary at
//! build time (no CDN, nothing fetched at run time). The page calls the public API with the
//! token a person types in; it holds no secret of its own.

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Endpoint, Request, Response};

/// Only the gateway's own files, no inline script or style, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                       object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// Serves `/ui`, `/ui/`, `/ui/app.js` and `/ui/app.css` (nested under `/ui`).
pub struct Console;

impl Endpoint for Console {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let (body, content_type) = match req.uri().path().trim_start_matches('/') {
            "" | "index.html" => (INDEX, "text/html; charset=utf-8"),
            "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
            "app.css" => (STYLE, "text/css; charset=utf-8"),
            _ => return Ok(Response::builder().status(StatusCode::NOT_FOUND).finish()),
        };
        let mut resp = Response::builder().content_type(content_type).body(body);
        let headers = resp.headers_mut();
        headers.insert("content-security-policy", HeaderValue::from_static(CSP));
        headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
        headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(resp)
    }
}
