//! `--param key=value`: the value is JSON when it parses as JSON, a string otherwise, and dotted
//! keys nest, so `--param simulate.duration_ms=100` sends `{"simulate": {"duration_ms": 100}}`.

use serde_json::{Map, Value};

/// The parameters object of `key=value` pairs.
pub fn parse_params(pairs: &[String]) -> Result<Value, String> {
    let mut root = Map::new();
    for pair in pairs {
        let (key, raw) = pair.split_once('=').ok_or_else(|| format!("--param '{pair}': expected KEY=VALUE"))?;
        let path: Vec<&str> = key.split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(format!("--param '{pair}': empty key segment"));
        }
        let value = serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
        let (last, parents) = path.split_last().ok_or_else(|| format!("--param '{pair}': empty key"))?;
        let mut map = &mut root;
        for (depth, segment) in parents.iter().enumerate() {
            let slot = map.entry((*segment).to_owned()).or_insert_with(|| Value::Object(Map::new()));
            map = match slot {
                Value::Object(m) => m,
                _ => {
                    return Err(format!(
                        "--param '{pair}': '{}' is already a value, not an object",
                        path[..=depth].join(".")
                    ));
                }
            };
        }
        if map.insert((*last).to_owned(), value).is_some() {
            return Err(format!("--param '{pair}': '{key}' is given twice"));
        }
    }
    Ok(Value::Object(root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(args: &[&str]) -> Result<Value, String> {
        parse_params(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn json_values_strings_and_nesting() {
        assert_eq!(
            p(&["simulate.duration_ms=100", "simulate.fail=true", "reason=disk full", "obj={\"a\":1}", "n=07"])
                .unwrap(),
            json!({"simulate": {"duration_ms": 100, "fail": true}, "reason": "disk full", "obj": {"a": 1}, "n": "07"})
        );
        assert_eq!(p(&["s=\"quoted\""]).unwrap(), json!({"s": "quoted"}));
        assert_eq!(p(&["empty="]).unwrap(), json!({"empty": ""}));
    }

    #[test]
    fn mistakes_are_named() {
        assert!(p(&["novalue"]).unwrap_err().contains("KEY=VALUE"));
        assert!(p(&["a=1", "a.b=2"]).unwrap_err().contains("already a value"));
        assert!(p(&["a=1", "a=2"]).unwrap_err().contains("twice"));
        assert!(p(&["a..b=1"]).unwrap_err().contains("empty key"));
    }
}
