//! Templates in runner settings: `{{ target }}`, `{{ action }}`, `{{ job_id }}`,
//! `{{ requested_by }}`, `{{ parameters.KEY }}` (dots for nested keys). No logic, by design:
//! a catalog is configuration, not a program. Parsed once at start-up (an unknown name is an
//! error there); rendered per run, with each value escaped for where it lands.

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// One value a template may name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    Target,
    Action,
    JobId,
    RequestedBy,
    /// A parameter, by its path of keys.
    Parameter(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// A parsed template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a run's templates are rendered with.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub target: &'a str,
    pub action: &'a str,
    pub job_id: &'a str,
    pub requested_by: &'a str,
    /// The job's parameters (an object).
    pub parameters: &'a Value,
}

/// How a rendered value is escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// As is (headers, form fields, argv elements: each is one value already).
    None,
    /// Percent-encoded for a URL: everything but `A-Z a-z 0-9 - . _ ~ : @`, so a target
    /// `host:8080` stays a host and port while `a/b` cannot add a path segment.
    Url,
}

impl Template {
    /// Parses `text`; an unknown name or an unclosed `{{` is an error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| format!("unclosed '{{{{' in '{text}'"))?;
            parts.push(Part::Var(var(after[..end].trim())?));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The parameter paths the template names (`a.b`), so a job without them is refused at POST.
    pub fn parameters(&self) -> impl Iterator<Item = &[String]> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(Var::Parameter(path)) => Some(path.as_slice()),
            _ => None,
        })
    }

    /// The text with every value put in, escaped.
    pub fn render(&self, vars: &Vars<'_>, escape: Escape) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => {
                    let value = text_of(vars, v)?;
                    match escape {
                        Escape::None => out.push_str(&value),
                        Escape::Url => url_escape(&value, &mut out),
                    }
                }
            }
        }
        Ok(out)
    }

    /// As a JSON value: a template that is exactly one placeholder gives the value itself, with
    /// its JSON type (a number stays a number); anything else is the rendered text.
    pub fn render_json(&self, vars: &Vars<'_>) -> Result<Value, String> {
        if let [Part::Var(v)] = self.parts.as_slice() {
            return match v {
                Var::Parameter(path) => lookup(vars.parameters, path).cloned().ok_or_else(|| missing(path)),
                _ => Ok(Value::String(text_of(vars, v)?)),
            };
        }
        self.render(vars, Escape::None).map(Value::String)
    }
}

fn var(name: &str) -> Result<Var, String> {
    Ok(match name {
        "target" => Var::Target,
        "action" => Var::Action,
        "job_id" => Var::JobId,
        "requested_by" => Var::RequestedBy,
        _ => match name.strip_prefix("parameters.") {
            Some(path) if !path.is_empty() && path.split('.').all(|k| !k.is_empty()) => {
                Var::Parameter(path.split('.').map(str::to_owned).collect())
            }
            _ => {
                return Err(format!(
                    "unknown template name '{{{{ {name} }}}}' (known: target, action, job_id, requested_by, parameters.KEY)"
                ));
            }
        },
    })
}

fn lookup<'v>(parameters: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(parameters, |v, key| v.get(key))
}

fn missing(path: &[String]) -> String {
    format!("parameter '{}' is missing", path.join("."))
}

fn text_of(vars: &Vars<'_>, v: &Var) -> Result<String, String> {
    Ok(match v {
        Var::Target => vars.target.to_owned(),
        Var::Action => vars.action.to_owned(),
        Var::JobId => vars.job_id.to_owned(),
        Var::RequestedBy => vars.requested_by.to_owned(),
        Var::Parameter(path) => match lookup(vars.parameters, path).ok_or_else(|| missing(path))? {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        },
    })
}

fn url_escape(value: &str, out: &mut String) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// A JSON document (from the catalog's YAML) whose strings are templates.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonTemplate {
    Text(Template),
    Array(Vec<JsonTemplate>),
    Object(Vec<(String, JsonTemplate)>),
    /// Numbers, booleans, null: as they are.
    Plain(Value),
}

impl JsonTemplate {
    /// Parses every string of `value`.
    pub fn parse(value: &Value) -> Result<Self, String> {
        Ok(match value {
            Value::String(s) => Self::Text(Template::parse(s)?),
            Value::Array(a) => Self::Array(a.iter().map(Self::parse).collect::<Result<_, _>>()?),
            Value::Object(o) => {
                Self::Object(o.iter().map(|(k, v)| Ok((k.clone(), Self::parse(v)?))).collect::<Result<_, String>>()?)
            }
            other => Self::Plain(other.clone()),
        })
    }

    /// Every parameter path named anywhere inside.
    pub fn parameters(&self) -> Vec<&[String]> {
        match self {
            Self::Text(t) => t.parameters().collect(),
            Self::Array(a) => a.iter().flat_map(Self::parameters).collect(),
            Self::Object(o) => o.iter().flat_map(|(_, v)| v.parameters()).collect(),
            Self::Plain(_) => Vec::new(),
        }
    }

    /// The document with every template rendered as JSON.
    pub fn render(&self, vars: &Vars<'_>) -> Result<Value, String> {
        Ok(match self {
            Self::Text(t) => t.render_json(vars)?,
            Self::Array(a) => Value::Array(a.iter().map(|v| v.render(vars)).collect::<Result<_, _>>()?),
            Self::Object(o) => {
                let mut m = Map::new();
                for (k, v) in o {
                    m.insert(k.clone(), v.render(vars)?);
                }
                Value::Object(m)
            }
            Self::Plain(v) => v.clone(),
        })
    }
}

/// Whether `parameters` holds a value at `path`.
pub fn has_parameter(parameters: &Value, path: &[String]) -> bool {
    lookup(parameters, path).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(p: &Value) -> Vars<'_> {
        Vars { target: "web/1:80", action: "a", job_id: "j", requested_by: "me", parameters: p }
    }

    #[test]
    fn names_are_checked_when_parsed() {
        assert!(Template::parse("x {{ nope }}").is_err());
        assert!(Template::parse("x {{ target").is_err());
        assert!(Template::parse("{{ parameters. }}").is_err());
        let t = Template::parse("{{target}}-{{ parameters.a.b }}").unwrap();
        assert_eq!(t.parameters().collect::<Vec<_>>(), [["a".to_owned(), "b".to_owned()]]);
    }

    #[test]
    fn values_are_escaped_for_urls_only() {
        let p = json!({"q": "x y&z"});
        let t = Template::parse("https://h/{{ target }}?q={{ parameters.q }}").unwrap();
        assert_eq!(t.render(&vars(&p), Escape::Url).unwrap(), "https://h/web%2F1:80?q=x%20y%26z");
        assert_eq!(t.render(&vars(&p), Escape::None).unwrap(), "https://h/web/1:80?q=x y&z");
    }

    #[test]
    fn a_lone_placeholder_keeps_its_json_type() {
        let p = json!({"n": 3, "s": "t"});
        let doc =
            JsonTemplate::parse(&json!({"n": "{{ parameters.n }}", "m": "n={{ parameters.n }}", "k": [true]})).unwrap();
        assert_eq!(doc.render(&vars(&p)).unwrap(), json!({"n": 3, "m": "n=3", "k": [true]}));
        assert!(doc.render(&vars(&json!({}))).unwrap_err().contains("'n'"));
    }
}
