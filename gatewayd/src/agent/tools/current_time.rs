//! `current_time`: the current UTC time, as RFC 3339 with milliseconds and as Unix milliseconds.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Tool, ToolCallContext, ToolError, ToolSpec};
use crate::message::{now_ms, rfc3339_ms};

/// `current_time`: the current UTC time.
pub struct CurrentTime {
    spec: ToolSpec,
}

impl CurrentTime {
    /// The tool.
    pub fn new() -> Self {
        Self {
            spec: ToolSpec {
                name: "current_time".to_owned(),
                description:
                    "The current date and time in UTC (RFC 3339) and as Unix milliseconds."
                        .to_owned(),
                parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
            },
        }
    }
}

impl Default for CurrentTime {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Tool for CurrentTime {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, _args: Value, _ctx: &ToolCallContext) -> Result<Value, ToolError> {
        let ms = now_ms();
        Ok(json!({"utc": rfc3339_ms(ms), "unix_ms": ms}))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::ToolRegistry;
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        fn check(ms: i64, expected: &str) {
            assert_eq!(rfc3339_ms(ms), expected, "{ms}");
        }
        check(0, "1970-01-01T00:00:00.000Z");
        check(951_782_400_000, "2000-02-29T00:00:00.000Z");
        check(1_709_251_199_999, "2024-02-29T23:59:59.999Z");
        check(4_102_444_800_000, "2100-01-01T00:00:00.000Z");
        check(-1, "1969-12-31T23:59:59.999Z");
    }

    #[tokio::test]
    async fn current_time_returns_utc_and_unix_ms() {
        let before = now_ms();
        let reg = ToolRegistry::new();
        reg.register(Arc::new(CurrentTime::new()), Duration::from_secs(1))
            .expect("register");
        let out = reg
            .call("current_time", json!({}), &ToolCallContext::default())
            .await
            .expect("call");
        let ms = out["unix_ms"].as_i64().expect("unix_ms is an integer");
        assert!(ms >= before && ms <= now_ms(), "{out}");
        assert_eq!(out["utc"], json!(rfc3339_ms(ms)));
        let utc = out["utc"].as_str().expect("utc is a string");
        assert_eq!(utc.len(), "2024-02-29T23:59:59.999Z".len(), "{utc}");
        assert!(utc.ends_with('Z') && utc.as_bytes()[10] == b'T', "{utc}");
        assert_eq!(
            reg.call(
                "current_time",
                json!({"tz": "UTC"}),
                &ToolCallContext::default()
            )
            .await,
            Err(ToolError::InvalidArguments(
                "field `tz` is not allowed (this tool takes no arguments)".to_owned()
            ))
        );
    }
}
