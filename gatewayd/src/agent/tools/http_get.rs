//! `http_get`: fetches a URL, only from hosts on the allowlist (an empty list denies every host),
//! with a capped body and no redirect to another host.

use std::error::Error as StdError;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Tool, ToolCallContext, ToolError, ToolSpec};

/// Default cap of an `http_get` response body.
pub const DEFAULT_HTTP_MAX_BYTES: usize = 256 * 1024;

/// Redirects `http_get` follows, all to the same host.
const MAX_REDIRECTS: usize = 5;

/// One entry of the `http_get` allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Exactly this host.
    Exact(String),
    /// `*.example.com`: any subdomain of `example.com` (not `example.com` itself).
    Subdomains(String),
}

/// `http_get`: fetches a URL on an allowlisted host. Only `http` and `https`; hosts not on the
/// allowlist are refused, and an empty allowlist refuses every host. The body is read in chunks
/// and reading stops at the cap. A redirect is followed only to the same host.
pub struct HttpGet {
    spec: ToolSpec,
    client: reqwest::Client,
    allowlist: Vec<HostPattern>,
    max_bytes: usize,
    timeout: Duration,
}

impl HttpGet {
    /// The tool, allowed to reach the hosts of `allowlist` (`example.com` or `*.example.com`;
    /// the `[tools] http_allowlist` key), returning at most `max_bytes` of a body, each request
    /// taking at most `timeout`. A malformed entry is an error naming it (the caller adds the
    /// key).
    pub fn new(allowlist: &[String], max_bytes: usize, timeout: Duration) -> Result<Self, String> {
        let mut patterns = Vec::with_capacity(allowlist.len());
        let mut bad = Vec::new();
        for entry in allowlist {
            let e = entry.trim().trim_end_matches('.').to_ascii_lowercase();
            let host_like = !e.is_empty()
                && !e.contains("://")
                && !e.contains('/')
                && !e.contains(char::is_whitespace)
                && (!e.contains(':') || e.starts_with('['));
            match e.strip_prefix("*.") {
                _ if !host_like => bad.push(format!("`{entry}`")),
                Some(rest) if !rest.is_empty() && !rest.contains('*') => {
                    patterns.push(HostPattern::Subdomains(rest.to_owned()));
                }
                Some(_) => bad.push(format!("`{entry}`")),
                None if e.contains('*') => bad.push(format!("`{entry}`")),
                None => patterns.push(HostPattern::Exact(e)),
            }
        }
        if !bad.is_empty() {
            return Err(format!(
                "{} not a host name; write `example.com` or `*.example.com`, without scheme, port or path",
                if bad.len() == 1 {
                    format!("{} is", bad.join(", "))
                } else {
                    format!("{} are", bad.join(", "))
                }
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::custom(same_host_redirects))
            .user_agent(concat!(
                "gatewayd/",
                env!("CARGO_PKG_VERSION"),
                " (http_get tool)"
            ))
            .build()
            .map_err(|e| format!("cannot build the http_get client: {e}"))?;
        Ok(Self {
            spec: ToolSpec {
                name: "http_get".to_owned(),
                description: format!(
                    "Fetches a web page or API response with HTTP GET and returns its status and body \
                     (at most {max_bytes} bytes; longer bodies are cut and marked truncated). Only \
                     hosts on the operator's allowlist can be reached."
                ),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "url": {
                            "type": "string",
                            "description": "The http:// or https:// URL to fetch.",
                            "minLength": 1,
                            "maxLength": 2048
                        }
                    },
                    "required": ["url"],
                    "additionalProperties": false
                }),
            },
            client,
            allowlist: patterns,
            max_bytes,
            timeout,
        })
    }

    /// Whether `host` (as in a URL) is on the allowlist.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowlist.iter().any(|p| match p {
            HostPattern::Exact(h) => *h == host,
            HostPattern::Subdomains(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        })
    }
}

/// The redirect policy of `http_get`: follow only to the same host over http(s), a few times.
fn same_host_redirects(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let from = attempt
        .previous()
        .first()
        .and_then(|u| u.host_str())
        .map(str::to_ascii_lowercase);
    let to = attempt.url().host_str().map(str::to_ascii_lowercase);
    let scheme_ok = matches!(attempt.url().scheme(), "http" | "https");
    if attempt.previous().len() > MAX_REDIRECTS {
        attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
    } else if !scheme_ok {
        let scheme = attempt.url().scheme().to_owned();
        attempt.error(format!("redirect to a `{scheme}` URL refused"))
    } else if to != from {
        attempt.error(format!(
            "redirect to another host `{}` refused",
            to.unwrap_or_default()
        ))
    } else {
        attempt.follow()
    }
}

/// An error and its sources, without any URL.
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Bytes as text; a multi-byte character cut by truncation is dropped, other invalid bytes are
/// replaced.
fn body_text(mut bytes: Vec<u8>, truncated: bool) -> String {
    if truncated
        && let Err(e) = std::str::from_utf8(&bytes)
        && e.error_len().is_none()
    {
        bytes.truncate(e.valid_up_to());
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[async_trait]
impl Tool for HttpGet {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value, _ctx: &ToolCallContext) -> Result<Value, ToolError> {
        let text = args
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| ToolError::InvalidArguments("field `url` is required".to_owned()))?;
        let url = reqwest::Url::parse(text)
            .map_err(|e| ToolError::InvalidArguments(format!("field `url`: not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ToolError::NotAllowed(format!(
                "only http and https URLs can be fetched, not `{}`",
                url.scheme()
            )));
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        if self.allowlist.is_empty() {
            return Err(ToolError::NotAllowed(format!(
                "http_get is disabled: the allowlist `[tools] http_allowlist` is empty, so host `{host}` cannot be reached"
            )));
        }
        if !self.allows(&host) {
            return Err(ToolError::NotAllowed(format!(
                "host `{host}` is not on the allowlist `[tools] http_allowlist`"
            )));
        }
        let mut resp = self.client.get(url).send().await.map_err(|e| {
            if e.is_redirect() {
                ToolError::NotAllowed(error_chain(e))
            } else if e.is_timeout() {
                ToolError::Failed(format!("`{host}` did not answer within {:?}", self.timeout))
            } else {
                ToolError::Failed(error_chain(e))
            }
        })?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        let mut truncated = false;
        loop {
            let chunk = resp.chunk().await.map_err(|e| {
                if e.is_timeout() {
                    ToolError::Failed(format!(
                        "`{host}` did not send the whole body within {:?}",
                        self.timeout
                    ))
                } else {
                    ToolError::Failed(error_chain(e))
                }
            })?;
            let Some(chunk) = chunk else { break };
            let room = self.max_bytes.saturating_sub(body.len());
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(json!({
            "status": status,
            "content_type": content_type,
            "body": body_text(body, truncated),
            "truncated": truncated,
        }))
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::get;

    use super::*;

    /// A local server: `/small`, `/big` (1 MiB of `a`), `/same` (redirect to `/small`), and
    /// `/away` (redirect to `localhost`).
    async fn web() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new()
            .route("/small", get(|| async { "hello" }))
            .route("/big", get(|| async { "a".repeat(1 << 20) }))
            .route("/utf8", get(|| async { "éé" }))
            .route("/same", get(|| async { Redirect::temporary("/small") }))
            .route(
                "/away",
                get(move || async move {
                    Redirect::temporary(&format!("http://localhost:{}/small", addr.port()))
                        .into_response()
                }),
            );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (addr, task)
    }

    async fn get_url(tool: &HttpGet, url: &str) -> Result<Value, ToolError> {
        tool.call(json!({"url": url}), &ToolCallContext::default())
            .await
    }

    #[tokio::test]
    async fn http_get_refuses_hosts_off_the_allowlist_and_denies_by_default() {
        let (addr, _server) = web().await;
        let url = format!("http://{addr}/small");
        let none = HttpGet::new(&[], DEFAULT_HTTP_MAX_BYTES, Duration::from_secs(5)).expect("tool");
        let err = get_url(&none, &url).await.expect_err("empty list denies");
        assert!(
            matches!(&err, ToolError::NotAllowed(m) if m.contains("`127.0.0.1`") && m.contains("`[tools] http_allowlist` is empty")),
            "{err}"
        );
        let other = HttpGet::new(
            &["example.com".to_owned(), "*.example.org".to_owned()],
            DEFAULT_HTTP_MAX_BYTES,
            Duration::from_secs(5),
        )
        .expect("tool");
        let err = get_url(&other, &url).await.expect_err("not listed");
        assert_eq!(
            err,
            ToolError::NotAllowed(
                "host `127.0.0.1` is not on the allowlist `[tools] http_allowlist`".to_owned()
            )
        );
        assert!(other.allows("EXAMPLE.com."));
        assert!(other.allows("api.example.org"));
        assert!(!other.allows("example.org"));
        assert!(!other.allows("badexample.org"));
        assert!(!other.allows("example.com.evil.net"));
        let err = get_url(&other, "file:///etc/passwd")
            .await
            .expect_err("scheme");
        assert!(
            matches!(&err, ToolError::NotAllowed(m) if m.contains("`file`")),
            "{err}"
        );
        let err = get_url(&other, "not a url").await.expect_err("url");
        assert!(
            matches!(&err, ToolError::InvalidArguments(m) if m.contains("field `url`")),
            "{err}"
        );

        let err = HttpGet::new(
            &[
                "https://example.com/".to_owned(),
                "ok.com".to_owned(),
                "*".to_owned(),
            ],
            1,
            Duration::from_secs(1),
        )
        .err()
        .expect("malformed entries are refused");
        assert!(
            err.starts_with("`https://example.com/`, `*` are not a host name"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn http_get_caps_the_body_and_marks_it_truncated() {
        let (addr, _server) = web().await;
        let tool =
            HttpGet::new(&["127.0.0.1".to_owned()], 1000, Duration::from_secs(5)).expect("tool");
        let small = get_url(&tool, &format!("http://{addr}/small"))
            .await
            .expect("small");
        assert_eq!(small["status"], 200);
        assert_eq!(small["body"], "hello");
        assert_eq!(small["truncated"], false);
        assert!(
            small["content_type"]
                .as_str()
                .is_some_and(|c| c.starts_with("text/plain"))
        );

        let big = get_url(&tool, &format!("http://{addr}/big"))
            .await
            .expect("big");
        assert_eq!(big["status"], 200);
        assert_eq!(big["truncated"], true);
        assert_eq!(big["body"], "a".repeat(1000));

        let exact =
            HttpGet::new(&["127.0.0.1".to_owned()], 5, Duration::from_secs(5)).expect("tool");
        let at_cap = get_url(&exact, &format!("http://{addr}/small"))
            .await
            .expect("at cap");
        assert_eq!(
            (at_cap["body"].clone(), at_cap["truncated"].clone()),
            (json!("hello"), json!(false))
        );

        let cut = HttpGet::new(&["127.0.0.1".to_owned()], 3, Duration::from_secs(5)).expect("tool");
        let utf8 = get_url(&cut, &format!("http://{addr}/utf8"))
            .await
            .expect("utf8");
        assert_eq!(utf8["body"], "é", "a character cut in half is dropped");
        assert_eq!(utf8["truncated"], true);
    }

    #[tokio::test]
    async fn http_get_follows_redirects_only_to_the_same_host() {
        let (addr, _server) = web().await;
        let tool = HttpGet::new(
            &["127.0.0.1".to_owned(), "localhost".to_owned()],
            DEFAULT_HTTP_MAX_BYTES,
            Duration::from_secs(5),
        )
        .expect("tool");
        let same = get_url(&tool, &format!("http://{addr}/same"))
            .await
            .expect("same host");
        assert_eq!(same["body"], "hello");
        let err = get_url(&tool, &format!("http://{addr}/away"))
            .await
            .expect_err("another host");
        assert!(
            matches!(&err, ToolError::NotAllowed(m) if m.contains("redirect to another host `localhost` refused")),
            "{err}"
        );
    }
}
