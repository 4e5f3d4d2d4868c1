//! The bytes Meta puts on the wire: JSON with every non-ASCII character escaped as `\uXXXX`
//! (UTF-16, so characters outside the BMP become surrogate pairs), and the
//! `X-Hub-Signature-256` HMAC over exactly those bytes. The webhook envelopes the fake builds
//! are here too.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// `value` as Meta serializes it: compact JSON, ASCII only.
pub fn ascii_json(value: &Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    let mut units = [0u16; 2];
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            // Non-ASCII only occurs inside strings, where an escape means the same character.
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// `sha256=<lowercase hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The envelope of one `messages` change with `value`'s fields for `phone_number_id`.
pub fn envelope(phone_number_id: &str, mut value: Value) -> Value {
    value["messaging_product"] = json!("whatsapp");
    value["metadata"] = json!({
        "display_phone_number": "15550783881",
        "phone_number_id": phone_number_id,
    });
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_is_escaped_with_surrogate_pairs() {
        let v = json!({"body": "äöå 😀 \"q\" \n ok"});
        let text = ascii_json(&v);
        assert!(text.is_ascii(), "{text}");
        assert!(text.contains(r"\u00e4\u00f6\u00e5"), "{text}");
        assert!(text.contains(r"\ud83d\ude00"), "{text}");
        assert!(text.contains(r#"\"q\""#) && text.contains(r"\n"), "{text}");
        let back: Value = serde_json::from_str(&text).expect("still JSON");
        assert_eq!(back, v, "the same value");
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_bytes() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let escaped = ascii_json(&json!({"t": "ä"}));
        let raw = json!({"t": "ä"}).to_string();
        assert_ne!(
            signature("s", escaped.as_bytes()),
            signature("s", raw.as_bytes()),
            "the escaped bytes are what is signed"
        );
    }
}
