//! The JSON Schema subset tool arguments are checked against: [`validate`] checks a value,
//! [`check_schema`] refuses a schema that uses a keyword outside the subset (so nothing a schema
//! says goes silently unenforced). Errors name the first field that does not match.

use serde_json::{Map, Value};

const TYPES: [&str; 7] = [
    "object", "array", "string", "number", "integer", "boolean", "null",
];

const KEYWORDS: [&str; 13] = [
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "items",
    "description",
    "title",
    "default",
];

/// Checks `value` against `schema`, a JSON Schema using only: `type` (one name or a list of
/// `object`, `array`, `string`, `number`, `integer`, `boolean`, `null`), `properties`,
/// `required`, `additionalProperties` (`false` or a schema), `enum`, `minimum`, `maximum`,
/// `minLength`, `maxLength` (in Unicode scalar values), `items`, and the annotations
/// `description`, `title`, `default`. The error names the first field that does not match.
pub fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    validate_at(schema, value, "")
}

/// How an error names the place: the whole arguments object, or one field by its path.
fn place(path: &str) -> String {
    if path.is_empty() {
        "the arguments".to_owned()
    } else {
        format!("field `{path}`")
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn has_type(value: &Value, ty: &str) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64()
                || value.is_u64()
                || value
                    .as_f64()
                    .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
        }
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => false,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `value` as JSON, cut to a readable length.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

fn validate_at(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        return Ok(());
    };
    if let Some(ty) = schema.get("type") {
        let types: Vec<&str> = match ty {
            Value::String(s) => vec![s.as_str()],
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.iter().any(|t| has_type(value, t)) {
            return Err(format!(
                "{}: expected {}, got {}",
                place(path),
                types.join(" or "),
                type_name(value)
            ));
        }
    }
    if let Some(Value::Array(options)) = schema.get("enum")
        && !options.contains(value)
    {
        let options: Vec<String> = options.iter().map(Value::to_string).collect();
        return Err(format!(
            "{}: must be one of {}, got {}",
            place(path),
            options.join(", "),
            short(value)
        ));
    }
    match value {
        Value::Number(n) => {
            // `as_f64` is `Some` for every number (no `arbitrary_precision`).
            let x = n.as_f64().unwrap_or_default();
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && x < min
            {
                return Err(format!("{}: must be at least {min}, got {n}", place(path)));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && x > max
            {
                return Err(format!("{}: must be at most {max}, got {n}", place(path)));
            }
        }
        Value::String(s) => {
            let len = u64::try_from(s.chars().count()).unwrap_or(u64::MAX);
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                return Err(format!(
                    "{}: must be at least {min} characters long, got {len}",
                    place(path)
                ));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                return Err(format!(
                    "{}: must be at most {max} characters long, got {len}",
                    place(path)
                ));
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_at(item_schema, item, &format!("{path}[{i}]"))?;
                }
            }
        }
        Value::Object(map) => validate_object(schema, map, path)?,
        Value::Null | Value::Bool(_) => {}
    }
    Ok(())
}

fn validate_object(
    schema: &Map<String, Value>,
    map: &Map<String, Value>,
    path: &str,
) -> Result<(), String> {
    let props = schema.get("properties").and_then(Value::as_object);
    if let Some(Value::Array(required)) = schema.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(name) {
                return Err(format!("{} is required", place(&child(path, name))));
            }
        }
    }
    for (key, v) in map {
        let at = child(path, key);
        if let Some(s) = props.and_then(|p| p.get(key)) {
            validate_at(s, v, &at)?;
            continue;
        }
        match schema.get("additionalProperties") {
            Some(Value::Bool(false)) => {
                let allowed: Vec<String> = props
                    .map(|p| p.keys().map(|k| format!("`{k}`")).collect())
                    .unwrap_or_default();
                return Err(if allowed.is_empty() {
                    format!(
                        "{} is not allowed (this tool takes no arguments)",
                        place(&at)
                    )
                } else {
                    format!(
                        "{} is not allowed (allowed: {})",
                        place(&at),
                        allowed.join(", ")
                    )
                });
            }
            Some(extra @ Value::Object(_)) => validate_at(extra, v, &at)?,
            _ => {}
        }
    }
    Ok(())
}

/// Every problem with a tool's argument schema: it must be an object schema (`"type":
/// "object"`) that uses only the subset [`validate`] understands.
pub fn check_schema(schema: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        errors.push("`parameters`: the arguments schema must have \"type\": \"object\"".to_owned());
    }
    check_at(schema, "parameters", &mut errors);
    errors
}

fn check_at(schema: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        errors.push(format!("`{path}`: a schema must be an object"));
        return;
    };
    for (key, v) in obj {
        let at = format!("{path}.{key}");
        let ok = match key.as_str() {
            "type" => match v {
                Value::String(s) => TYPES.contains(&s.as_str()),
                Value::Array(list) => {
                    !list.is_empty()
                        && list
                            .iter()
                            .all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t)))
                }
                _ => false,
            },
            "properties" => match v.as_object() {
                Some(props) => {
                    for (name, s) in props {
                        check_at(s, &format!("{at}.{name}"), errors);
                    }
                    true
                }
                None => false,
            },
            "required" => match v.as_array() {
                Some(list) => {
                    let props = obj.get("properties").and_then(Value::as_object);
                    for name in list {
                        match name.as_str() {
                            Some(n) if props.is_none_or(|p| p.contains_key(n)) => {}
                            Some(n) => errors.push(format!(
                                "`{at}`: required field `{n}` is not in `properties`"
                            )),
                            None => errors.push(format!("`{at}`: entries must be strings")),
                        }
                    }
                    true
                }
                None => false,
            },
            "additionalProperties" => match v {
                Value::Bool(_) => true,
                Value::Object(_) => {
                    check_at(v, &at, errors);
                    true
                }
                _ => false,
            },
            "items" => {
                check_at(v, &at, errors);
                true
            }
            "enum" => v.as_array().is_some_and(|a| !a.is_empty()),
            "minimum" | "maximum" => v.is_number(),
            "minLength" | "maxLength" => v.is_u64(),
            "description" | "title" => v.is_string(),
            "default" => true,
            _ => {
                errors.push(format!(
                    "`{at}`: keyword not supported (supported: {})",
                    KEYWORDS.join(", ")
                ));
                continue;
            }
        };
        if !ok {
            errors.push(format!("`{at}`: invalid value {}", short(v)));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{CurrentTime, Tool};
    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "url": {"type": "string", "maxLength": 10},
                "name": {"type": "string", "minLength": 2},
                "count": {"type": "integer", "minimum": 1, "maximum": 5},
                "ratio": {"type": "number", "minimum": 0.0, "maximum": 1.0},
                "flag": {"type": "boolean"},
                "mode": {"type": "string", "enum": ["fast", "slow"]},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}},
                "inner": {
                    "type": "object",
                    "properties": {"x": {"type": "integer"}},
                    "required": ["x"],
                    "additionalProperties": false
                },
                "maybe": {"type": ["string", "null"]},
                "free": {"type": "object"}
            },
            "required": ["url"],
            "additionalProperties": false
        })
    }

    /// `Ok(())` or the error text must contain `expected`.
    fn check(args: Value, expected: Result<(), &str>) {
        let got = validate(&schema(), &args);
        match (&got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(want)) if e.contains(want) => {}
            _ => panic!("validate({args}) = {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn validator_accepts_and_refuses_by_the_schema() {
        check(json!({"url": "a"}), Ok(()));
        check(
            json!({"url": "a", "count": 3, "ratio": 0.5, "flag": true, "mode": "slow",
                   "tags": ["ab"], "inner": {"x": 1}, "maybe": null, "free": {"any": [1]}}),
            Ok(()),
        );
        check(json!({"url": "a", "count": 2.0}), Ok(()));
        check(json!({"url": "a", "maybe": "s"}), Ok(()));
        check(json!({"url": "ü".repeat(10)}), Ok(()));
        check(
            json!("x"),
            Err("the arguments: expected object, got a string"),
        );
        check(json!({}), Err("field `url` is required"));
        check(
            json!({"url": 1}),
            Err("field `url`: expected string, got an integer"),
        );
        check(
            json!({"url": "a".repeat(11)}),
            Err("field `url`: must be at most 10 characters long, got 11"),
        );
        check(
            json!({"url": "a", "name": "n"}),
            Err("field `name`: must be at least 2 characters long"),
        );
        check(
            json!({"url": "a", "count": 1.5}),
            Err("field `count`: expected integer, got a number"),
        );
        check(
            json!({"url": "a", "count": 0}),
            Err("field `count`: must be at least 1"),
        );
        check(
            json!({"url": "a", "count": 6}),
            Err("field `count`: must be at most 5"),
        );
        check(
            json!({"url": "a", "ratio": 1.5}),
            Err("field `ratio`: must be at most 1"),
        );
        check(
            json!({"url": "a", "flag": "yes"}),
            Err("field `flag`: expected boolean, got a string"),
        );
        check(
            json!({"url": "a", "mode": "medium"}),
            Err("field `mode`: must be one of \"fast\", \"slow\", got \"medium\""),
        );
        check(
            json!({"url": "a", "tags": ["ok", "long"]}),
            Err("field `tags[1]`: must be at most 3 characters long"),
        );
        check(
            json!({"url": "a", "tags": "ok"}),
            Err("field `tags`: expected array, got a string"),
        );
        check(
            json!({"url": "a", "inner": {}}),
            Err("field `inner.x` is required"),
        );
        check(
            json!({"url": "a", "inner": {"x": 1, "y": 2}}),
            Err("field `inner.y` is not allowed (allowed: `x`)"),
        );
        check(
            json!({"url": "a", "maybe": 1}),
            Err("field `maybe`: expected string or null, got an integer"),
        );
        check(
            json!({"url": "a", "extra": 1}),
            Err("field `extra` is not allowed (allowed: "),
        );
        check(
            json!({"url": null}),
            Err("field `url`: expected string, got null"),
        );
    }

    #[test]
    fn schemas_outside_the_subset_are_refused() {
        fn errors(schema: Value) -> String {
            check_schema(&schema).join("\n")
        }
        assert_eq!(errors(schema()), "");
        assert_eq!(errors(CurrentTime::new().spec().parameters.clone()), "");
        assert!(errors(json!({"type": "string"})).contains("must have \"type\": \"object\""));
        assert!(
            errors(
                json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}})
            )
            .contains("`parameters.properties.a.pattern`: keyword not supported")
        );
        assert!(
            errors(json!({"type": "object", "properties": {"a": {"type": "text"}}}))
                .contains("`parameters.properties.a.type`: invalid value \"text\"")
        );
        assert!(
            errors(json!({"type": "object", "properties": {}, "required": ["a"]}))
                .contains("required field `a` is not in `properties`")
        );
        assert!(
            errors(json!({"type": "object", "properties": {"a": {"maxLength": -1}}}))
                .contains("`parameters.properties.a.maxLength`: invalid value -1")
        );
    }
}
