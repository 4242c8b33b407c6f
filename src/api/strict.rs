//! `StrictJson<T>`: a JSON request body read more strictly than poem-openapi's `Json<T>`, which
//! turns a number or a boolean into a string where a string is expected, keeps the last of two
//! equal keys, and rounds integers beyond 64 bits to the nearest float. Here each of those is a
//! 400 problem naming the field. The OpenAPI description is `Json<T>`'s: same content type, same
//! schema, same validators (they still run, through `T::parse_from_json`).

use std::collections::HashSet;

use poem::{FromRequest, Request, RequestBody};
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromJSON, Type};
use serde_json::Value;

use super::problem::{Problem, response};

/// The JSON kind a top-level field must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    String,
    /// An object.
    Object,
}

impl Kind {
    fn matches(self, v: &Value) -> bool {
        match self {
            Kind::String => v.is_string(),
            Kind::Object => v.is_object(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::String => "a string",
            Kind::Object => "an object",
        }
    }
}

/// The top-level fields of a request body and the JSON kind each must have when present and
/// not null (missing and null fields are the schema validators' business).
pub trait Fields {
    /// Field name and kind.
    const FIELDS: &'static [(&'static str, Kind)];
}

/// A strictly parsed JSON body.
pub struct StrictJson<T>(pub T);

impl<T: Type> Payload for StrictJson<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn check_content_type(content_type: &str) -> bool {
        super::json::is_json(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + ParseFromJSON + Fields> ParsePayload for StrictJson<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = Vec::<u8>::from_request(request, body).await?;
        let refuse =
            |field: &str, message: String| poem::Error::from_response(response(&Problem::bad_request(field, message)));
        if data.is_empty() {
            return Err(refuse("body", "a JSON object is required".into()));
        }
        let value: Value = serde_json::from_slice(&data)
            .map_err(|e| refuse("body", format!("could not parse the body as JSON: {e}")))?;
        check_text(&data).map_err(|(field, message)| refuse(&field, message))?;
        let Value::Object(map) = &value else {
            return Err(refuse("body", "must be a JSON object".into()));
        };
        for (name, kind) in T::FIELDS {
            if let Some(v) = map.get(*name).filter(|v| !v.is_null())
                && !kind.matches(v)
            {
                return Err(refuse(name, format!("must be {}, not {}", kind.name(), describe(v))));
            }
        }
        let parsed = T::parse_from_json(Some(value)).map_err(|e| refuse("body", e.into_message()))?;
        Ok(Self(parsed))
    }
}

poem_openapi::impl_apirequest_for_payload!(StrictJson<T>, T: Type + ParseFromJSON + Fields);

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks what a parsed `Value` no longer shows, on the text of a document already known to be
/// valid JSON: no object repeats a key, no integer lies outside the 64-bit range (it would have
/// been rounded to a float), no string holds U+0000 (PostgreSQL cannot store it in text). The
/// error names the top-level field it was found under (or `body`).
pub fn check_text(data: &[u8]) -> Result<(), (String, String)> {
    // One frame per open object (the keys seen so far) or array.
    enum Frame {
        Object { keys: HashSet<String>, expect_key: bool },
        Array,
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut field = String::from("body");
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        match b {
            b'{' => {
                stack.push(Frame::Object { keys: HashSet::new(), expect_key: true });
                i += 1;
            }
            b'[' => {
                stack.push(Frame::Array);
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                i += 1;
            }
            b',' => {
                if let Some(Frame::Object { expect_key, .. }) = stack.last_mut() {
                    *expect_key = true;
                }
                i += 1;
            }
            b'"' => {
                let end = string_end(data, i).ok_or_else(|| (field.clone(), "unterminated string".to_owned()))?;
                let raw = &data[i..=end];
                let text: String = if raw.contains(&b'\\') {
                    serde_json::from_slice(raw).map_err(|e| (field.clone(), e.to_string()))?
                } else {
                    String::from_utf8_lossy(&raw[1..raw.len() - 1]).into_owned()
                };
                let depth = stack.len();
                match stack.last_mut() {
                    Some(Frame::Object { keys, expect_key }) if *expect_key => {
                        *expect_key = false;
                        if depth == 1 {
                            field = text.clone();
                        }
                        if text.contains('\0') {
                            return Err((field.clone(), "keys must not contain U+0000".into()));
                        }
                        if !keys.insert(text) {
                            let at = if depth == 1 { "the body" } else { "an object" };
                            return Err((field.clone(), format!("a key appears twice in {at}")));
                        }
                    }
                    _ => {
                        if text.contains('\0') {
                            return Err((field.clone(), "must not contain U+0000 (NUL)".into()));
                        }
                    }
                }
                i = end + 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < data.len() && matches!(data[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                let n = std::str::from_utf8(&data[start..i]).unwrap_or_default();
                let integer = !n.contains(['.', 'e', 'E']);
                if integer && n.parse::<i64>().is_err() && n.parse::<u64>().is_err() {
                    return Err((
                        field.clone(),
                        format!(
                            "integer {n} is outside the 64-bit range and would lose precision; send it as a string"
                        ),
                    ));
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Index of the closing quote of the string opening at `start`.
fn string_end(data: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < data.len() {
        match data[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(json: &str) -> Option<String> {
        serde_json::from_str::<Value>(json).expect("valid JSON in the test");
        check_text(json.as_bytes()).err().map(|(f, _)| f)
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth_and_after_escapes() {
        assert_eq!(field_of(r#"{"action":"a","action":"b"}"#).as_deref(), Some("action"));
        assert_eq!(field_of(r#"{"parameters":{"k":1,"k":2}}"#).as_deref(), Some("parameters"));
        assert_eq!(field_of(r#"{"parameters":{"k":1,"\u006b":2}}"#).as_deref(), Some("parameters"));
        assert_eq!(field_of(r#"{"parameters":[{"k":1},{"k":2}]}"#), None, "equal keys in sibling objects are fine");
        assert_eq!(field_of(r#"{"a":{"x":1},"b":{"x":1}}"#), None);
    }

    #[test]
    fn integers_keep_their_value_or_are_refused() {
        for ok in ["18446744073709551615", "-9223372036854775808", "1.5e300", "0", "-0", "12.0"] {
            assert_eq!(field_of(&format!(r#"{{"parameters":{{"n":{ok}}}}}"#)), None, "{ok}");
        }
        for bad in ["18446744073709551616", "-9223372036854775809", "123456789012345678901234567890"] {
            assert_eq!(
                field_of(&format!(r#"{{"parameters":{{"n":[{bad}]}}}}"#)).as_deref(),
                Some("parameters"),
                "{bad}"
            );
        }
    }

    #[test]
    fn nul_is_refused_in_strings_but_digits_in_strings_are_not_numbers() {
        assert_eq!(field_of(r#"{"target":"a\u0000b"}"#).as_deref(), Some("target"));
        assert_eq!(field_of(r#"{"target":"99999999999999999999999"}"#), None);
        assert_eq!(field_of(r#"{"t":"say \"{\" and [","u":1}"#), None, "brackets inside strings are text");
    }
}
