//! Reading a call: the `/bot<TOKEN>/<method>` path, and parameters from a JSON, url-encoded or
//! `multipart/form-data` body or the query string (nested objects in multipart as JSON text,
//! uploads referenced as `attach://<part>`).

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Query};
use axum::http::{HeaderMap, Method, Request, Uri, header};
use serde_json::{Map, Value};

use super::UploadedFile;

/// Parameters of one call.
#[derive(Debug, Default)]
pub(super) struct Params {
    pub(super) fields: Map<String, Value>,
    pub(super) files: Vec<UploadedFile>,
}

/// Fields whose string values (multipart, form, query) hold JSON.
const JSON_FIELDS: &[&str] = &[
    "reply_parameters",
    "reply_markup",
    "entities",
    "caption_entities",
    "link_preview_options",
    "allowed_updates",
];

/// Splits `/bot<token>/<method>` into the percent-decoded token and method.
pub(super) fn parse_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix('/')?;
    let (first, method) = rest.split_once('/')?;
    let token = first.strip_prefix("bot")?;
    if method.is_empty() || method.contains('/') {
        return None;
    }
    Some((percent_decode(token), percent_decode(method)))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) async fn read_params(
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Params, String> {
    let mut params = Params::default();
    if let Ok(Query(pairs)) = Query::<Vec<(String, String)>>::try_from_uri(uri) {
        for (k, v) in pairs {
            params.fields.insert(k, Value::String(v));
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if body.is_empty() {
        // No body: query parameters only.
    } else if mime == "multipart/form-data" {
        let boundary = multipart_boundary(&content_type)
            .ok_or("Bad Request: multipart body without a boundary")?;
        let parts = parse_multipart(&body, &boundary)
            .ok_or("Bad Request: malformed multipart/form-data body")?;
        for part in parts {
            match part.file_name {
                Some(file_name) => params.files.push(UploadedFile {
                    field: part.name.clone(),
                    part_name: part.name,
                    file_name,
                    content_type: part.content_type,
                    data: part.data,
                }),
                None => {
                    let v = String::from_utf8_lossy(&part.data).into_owned();
                    params.fields.insert(part.name, Value::String(v));
                }
            }
        }
    } else if mime == "application/x-www-form-urlencoded" {
        let req = Request::builder()
            .method(Method::POST)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .map_err(|e| format!("Bad Request: {e}"))?;
        let axum::Form(pairs) = axum::Form::<Vec<(String, String)>>::from_request(req, &())
            .await
            .map_err(|_| "Bad Request: can't parse form parameters".to_owned())?;
        for (k, v) in pairs {
            params.fields.insert(k, Value::String(v));
        }
    } else {
        // JSON (teloxide sends `application/json`); anything else is tried as JSON too.
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => params.fields.extend(m),
            Ok(_) => return Err("Bad Request: parameters must be a JSON object".into()),
            Err(_) => return Err("Bad Request: can't parse JSON object".into()),
        }
    }
    // `attach://<part>` references name the parameter an upload fills.
    for file in &mut params.files {
        let reference = format!("attach://{}", file.part_name);
        if let Some((name, _)) = params
            .fields
            .iter()
            .find(|(_, v)| v.as_str() == Some(reference.as_str()))
        {
            file.field = name.clone();
        }
    }
    for key in JSON_FIELDS {
        if let Some(Value::String(s)) = params.fields.get(*key)
            && let Ok(v) = serde_json::from_str::<Value>(s)
        {
            params.fields.insert((*key).to_owned(), v);
        }
    }
    Ok(params)
}

fn multipart_boundary(content_type: &str) -> Option<String> {
    split_header_params(content_type)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v)
        .filter(|b| !b.is_empty())
}

/// Splits `a; k=v; k2="v;2"` into `(key, value)` pairs (the first segment,
/// having no `=`, is returned with an empty value), honouring quotes.
fn split_header_params(s: &str) -> Vec<(String, String)> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            current.push(c);
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if c == ';' && !in_quotes {
            segments.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    segments.push(current);
    segments
        .into_iter()
        .map(|seg| match seg.split_once('=') {
            Some((k, v)) => (k.trim().to_owned(), v.trim().to_owned()),
            None => (seg.trim().to_owned(), String::new()),
        })
        .collect()
}

#[derive(Debug)]
struct FormPart {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

pub(super) fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

fn parse_multipart(body: &[u8], boundary: &str) -> Option<Vec<FormPart>> {
    let delim = format!("--{boundary}").into_bytes();
    let next_delim = format!("\r\n--{boundary}").into_bytes();
    let mut pos = find(body, &delim, 0)? + delim.len();
    let mut parts = Vec::new();
    loop {
        let rest = body.get(pos..)?;
        if rest.starts_with(b"--") {
            return Some(parts);
        }
        if !rest.starts_with(b"\r\n") {
            return None;
        }
        pos += 2;
        let (head, data_start) = if body.get(pos..)?.starts_with(b"\r\n") {
            ("", pos + 2)
        } else {
            let end = find(body, b"\r\n\r\n", pos)?;
            (std::str::from_utf8(body.get(pos..end)?).ok()?, end + 4)
        };
        let data_end = find(body, &next_delim, data_start)?;
        let mut part = FormPart {
            name: String::new(),
            file_name: None,
            content_type: None,
            data: body.get(data_start..data_end)?.to_vec(),
        };
        for line in head.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("content-disposition") {
                for (k, v) in split_header_params(value) {
                    match k.to_ascii_lowercase().as_str() {
                        "name" => part.name = v,
                        "filename" => part.file_name = Some(v),
                        "filename*" => {
                            // RFC 5987: charset'language'percent-encoded
                            let encoded = v.splitn(3, '\'').nth(2).unwrap_or(&v);
                            part.file_name = Some(percent_decode(encoded));
                        }
                        _ => {}
                    }
                }
            } else if name.trim().eq_ignore_ascii_case("content-type") {
                part.content_type = Some(value.trim().to_owned());
            }
        }
        parts.push(part);
        pos = data_end + next_delim.len();
    }
}

pub(super) fn param_str(p: &Map<String, Value>, key: &str) -> Option<String> {
    match p.get(key)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

pub(super) fn param_i64(p: &Map<String, Value>, key: &str) -> Option<i64> {
    as_i64(p.get(key)?)
}

pub(super) fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(super) fn param_bool(p: &Map<String, Value>, key: &str) -> bool {
    match p.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true") || s == "1",
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        _ => false,
    }
}

/// `(message_id, allow_sending_without_reply)` of the reply target, from
/// `reply_parameters` or the legacy `reply_to_message_id`.
pub(super) fn reply_target(p: &Map<String, Value>) -> Option<(i64, bool)> {
    if let Some(rp) = p.get("reply_parameters").and_then(Value::as_object) {
        let id = rp.get("message_id").and_then(as_i64)?;
        let allow = match rp.get("allow_sending_without_reply") {
            Some(Value::Bool(b)) => *b,
            _ => param_bool(p, "allow_sending_without_reply"),
        };
        return Some((id, allow));
    }
    let id = param_i64(p, "reply_to_message_id")?;
    Some((id, param_bool(p, "allow_sending_without_reply")))
}

pub(super) fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}
