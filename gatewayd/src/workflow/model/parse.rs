//! Deserializing the parts of a workflow file serde cannot derive: an `after` entry written as an
//! id or as a `{ node, when }` table, and TOML values kept as JSON (TOML datetimes as their text).

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::Edge;

impl<'de> Deserialize<'de> for Edge {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EdgeVisitor;

        impl<'de> Visitor<'de> for EdgeVisitor {
            type Value = Edge;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node id, or a table `{ node = \"id\", when = true|false }`")
            }

            fn visit_str<E: de::Error>(self, id: &str) -> Result<Edge, E> {
                Ok(Edge {
                    node: id.to_owned(),
                    when: None,
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Edge, A::Error> {
                let mut node = None;
                let mut when = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "node" => node = Some(map.next_value::<String>()?),
                        "when" => when = Some(map.next_value::<bool>()?),
                        other => return Err(de::Error::unknown_field(other, &["node", "when"])),
                    }
                }
                let node = node.ok_or_else(|| de::Error::missing_field("node"))?;
                Ok(Edge { node, when })
            }
        }

        d.deserialize_any(EdgeVisitor)
    }
}

/// TOML datetimes arrive as a private marker table; keep them as their text.
fn toml_to_json(value: Value) -> Value {
    const DATETIME: &str = "$__toml_private_datetime";
    match value {
        Value::Object(map) => {
            if map.len() == 1
                && let Some(Value::String(text)) = map.get(DATETIME)
            {
                return Value::String(text.clone());
            }
            Value::Object(map.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(toml_to_json).collect()),
        other => other,
    }
}

pub(super) fn optional_json<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(|v| Some(toml_to_json(v)))
}

pub(super) fn json_object<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<serde_json::Map<String, Value>, D::Error> {
    match toml_to_json(Value::deserialize(d)?) {
        Value::Object(map) => Ok(map),
        _ => Err(de::Error::custom("`args` must be a table")),
    }
}
