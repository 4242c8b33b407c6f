//! `JsonOut<T>`: a JSON answer serialized straight from `T` with serde. poem-openapi's `Json<T>`
//! first builds a `serde_json::Value` tree (a map node and a string per field, and a clone of
//! every nested value) and then serializes that; for the hottest answers (`GET /v1/jobs/{id}`,
//! the job list) the tree was a tenth of the request's CPU. The OpenAPI description is the same
//! as `Json<T>`'s: same content type, same schema; a unit test checks both write equal JSON.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use serde::Serialize;

/// A JSON response body, described by `T`'s schema and written by `T`'s `Serialize`.
pub struct JsonOut<T>(pub T);

/// `application/json` or any `application/*+json`, parameters ignored (as `Json<T>` accepts).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// As `Json<T>` declares it.
const CONTENT_TYPE: &str = "application/json; charset=utf-8";

impl<T: Type> Payload for JsonOut<T> {
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        is_json(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Serialize + Send> IntoResponse for JsonOut<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => Response::builder().content_type(CONTENT_TYPE).body(body),
            Err(e) => {
                // Only a bug can get here (the types hold nothing serde cannot write).
                tracing::error!(error = %e, "serializing a response failed");
                super::problem::response(&super::problem::Problem::internal())
            }
        }
    }
}

impl<T: Type + Serialize + Send> ApiResponse for JsonOut<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(StatusCode::OK.as_u16()),
                status_range: None,
                content: vec![MetaMediaType { content_type: CONTENT_TYPE, schema: T::schema_ref() }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}
