//! Unit tests of the webhook payload: signatures, the handshake, each message type's
//! normalization, envelopes with statuses, and generated input that must never panic.

use serde_json::json;

use super::*;

fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn signatures_are_checked_over_the_raw_body() {
    let body = br#"{"object":"whatsapp_business_account","x":"\u00e4"}"#;
    let good = sign(b"app-secret", body);
    assert_eq!(
        verify_signature(b"app-secret", Some(good.as_bytes()), body),
        Ok(())
    );
    let check = |header: Option<&str>, expected: SignatureError| {
        assert_eq!(
            verify_signature(b"app-secret", header.map(str::as_bytes), body),
            Err(expected),
            "{header:?}"
        );
    };
    check(None, SignatureError::Missing);
    check(Some(&sign(b"other-secret", body)), SignatureError::Mismatch);
    check(Some("sha256=zz"), SignatureError::Malformed);
    check(
        Some(&good.replace("sha256=", "sha1=")),
        SignatureError::Malformed,
    );
    check(Some(&good[..good.len() - 2]), SignatureError::Malformed);
    check(Some("sha256="), SignatureError::Malformed);
    // The same text with the escape decoded is another body: its HMAC differs.
    let decoded = r#"{"object":"whatsapp_business_account","x":"ä"}"#;
    assert_eq!(
        verify_signature(b"app-secret", Some(good.as_bytes()), decoded.as_bytes()),
        Err(SignatureError::Mismatch)
    );
    // Upper-case hex is the same bytes.
    let upper = format!("sha256={}", good["sha256=".len()..].to_ascii_uppercase());
    assert_eq!(
        verify_signature(b"app-secret", Some(upper.as_bytes()), body),
        Ok(())
    );
}

#[test]
fn the_handshake_answers_only_subscribe_with_the_token() {
    let check = |mode, token, expected: Option<&str>| {
        assert_eq!(
            verify_challenge(mode, token, Some("1158201444"), "verify-me"),
            expected,
            "{mode:?} {token:?}"
        );
    };
    check(Some("subscribe"), Some("verify-me"), Some("1158201444"));
    check(Some("subscribe"), Some("verify-mE"), None);
    check(Some("subscribe"), Some(""), None);
    check(Some("subscribe"), None, None);
    check(Some("unsubscribe"), Some("verify-me"), None);
    check(None, Some("verify-me"), None);
}

fn message(extra: serde_json::Value) -> Message {
    let mut m = json!({"from": "15551234567", "id": "wamid.A1", "timestamp": "1603059201"});
    if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
        m.extend(extra.clone());
    }
    serde_json::from_value(m).expect("a message")
}

/// Normalizes `extra` over a base message: `(text, attachments as kind:id:name)`, or `None`.
fn check(extra: serde_json::Value, expected: Option<(&str, &[&str])>) {
    let got = normalize(&message(extra.clone())).map(|m| {
        let atts: Vec<String> = m
            .attachments
            .iter()
            .map(|a| {
                format!(
                    "{}:{}:{}",
                    a.kind,
                    a.file_id,
                    a.name.clone().unwrap_or_default()
                )
            })
            .collect();
        (m.text, atts)
    });
    let expected = expected.map(|(t, a)| {
        (
            t.to_owned(),
            a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        )
    });
    assert_eq!(got, expected, "{extra}");
}

#[test]
fn every_message_type_normalizes() {
    check(
        json!({"type": "text", "text": {"body": "Hello"}}),
        Some(("Hello", &[])),
    );
    check(json!({"type": "text", "text": {"body": "  "}}), None);
    check(
        json!({"type": "image", "image": {"id": "img-1", "caption": "look", "mime_type": "image/jpeg"}}),
        Some(("look", &["image:img-1:"])),
    );
    check(
        json!({"type": "document", "document": {"id": "doc-1", "filename": "cv.pdf"}}),
        Some(("", &["document:doc-1:cv.pdf"])),
    );
    check(
        json!({"type": "audio", "audio": {"id": "aud-1", "voice": true}}),
        Some(("", &["audio:aud-1:"])),
    );
    check(
        json!({"type": "video", "video": {"id": "vid-1"}}),
        Some(("", &["video:vid-1:"])),
    );
    check(
        json!({"type": "sticker", "sticker": {"id": "st-1", "animated": false}}),
        Some(("", &["sticker:st-1:"])),
    );
    check(json!({"type": "image", "image": {}}), None);
    check(
        json!({"type": "location", "location": {"latitude": 52.52, "longitude": 13.405, "name": "Mitte", "address": "Berlin"}}),
        Some(("[location: 52.52, 13.405 (Mitte, Berlin)]", &[])),
    );
    check(
        json!({"type": "contacts", "contacts": [{"name": {"formatted_name": "Ada L"}, "phones": [{"phone": "+1 555"}]}]}),
        Some(("[contact: Ada L +1 555]", &[])),
    );
    check(
        json!({"type": "interactive", "interactive": {"type": "button_reply", "button_reply": {"id": "b1", "title": "Yes"}}}),
        Some(("Yes", &[])),
    );
    check(
        json!({"type": "interactive", "interactive": {"type": "list_reply", "list_reply": {"id": "r1", "title": "Tuesday", "description": "x"}}}),
        Some(("Tuesday", &[])),
    );
    check(
        json!({"type": "button", "button": {"text": "Stop", "payload": "STOP"}}),
        Some(("Stop", &[])),
    );
    check(
        json!({"type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": "👍"}}),
        None,
    );
    check(
        json!({"type": "unsupported", "errors": [{"code": 131051}]}),
        None,
    );
    check(
        json!({"type": "system", "system": {"body": "changed number"}}),
        None,
    );
    check(json!({"type": "order", "order": {}}), None);
    check(
        json!({"type": "from-the-future", "text": {"body": "x"}}),
        None,
    );
}

#[test]
fn a_message_is_a_direct_chat_of_its_sender_with_its_reply_context() {
    let m = normalize(&message(json!({
        "type": "text", "text": {"body": "yes"},
        "context": {"from": "15550783881", "id": "wamid.Q"}
    })))
    .expect("a reply");
    assert_eq!(
        (
            m.chat_id.as_str(),
            m.sender_id.as_str(),
            m.chat_type,
            m.channel_message_id.as_str(),
            m.reply_to.as_deref()
        ),
        (
            "15551234567",
            "15551234567",
            ChatType::Direct,
            "wamid.A1",
            Some("wamid.Q")
        )
    );
    assert_eq!(m.channel, KIND);
    let mut no_from = message(json!({"type": "text", "text": {"body": "x"}}));
    no_from.from.clear();
    assert!(normalize(&no_from).is_none());
}

#[test]
fn envelopes_carry_contacts_messages_and_statuses() {
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{
        "field": "messages",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "Muath A"}, "wa_id": "15551234567"}],
            "messages": [{"from": "15551234567", "id": "wamid.M", "timestamp": "1", "type": "text", "text": {"body": "hi"}}],
            "statuses": [
                {"id": "wamid.S1", "status": "delivered", "timestamp": "2", "recipient_id": "15551234567"},
                {"id": "wamid.S2", "status": "failed", "timestamp": "3", "recipient_id": "15551234567",
                 "errors": [{"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable",
                             "error_data": {"details": "the recipient cannot receive it"}}]},
                {"id": "wamid.S3", "status": "deleted"}
            ]
        }
    }]}]});
    let env: Envelope = serde_json::from_value(body).expect("an envelope");
    let value = &env.entry[0].changes[0].value;
    assert_eq!(value.metadata.phone_number_id, "106540352242922");
    assert_eq!(display_name(value, "15551234567"), Some("Muath A"));
    let receipts: Vec<Receipt> = value.statuses.iter().filter_map(receipt).collect();
    assert_eq!(
        receipts,
        [
            Receipt {
                platform_id: "wamid.S1".into(),
                status: "delivered".into(),
                error: None
            },
            Receipt {
                platform_id: "wamid.S2".into(),
                status: "failed".into(),
                error: Some(
                    "131026 Message undeliverable (the recipient cannot receive it)".into()
                )
            },
        ]
    );
}

mod props {
    //! Whatever a forger of the webhook sends: parsing and normalizing never panic.
    use proptest::prelude::*;

    use super::super::*;

    fn walk(env: &Envelope) {
        for entry in &env.entry {
            for change in &entry.changes {
                for m in &change.value.messages {
                    let _ = normalize(m);
                    let _ = display_name(&change.value, &m.from);
                }
                for s in &change.value.statuses {
                    let _ = receipt(s);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn prop_whatsapp_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = verify_signature(b"secret", Some(&body), &body);
            if let Ok(env) = serde_json::from_slice::<Envelope>(&body) {
                walk(&env);
            }
        }

        #[test]
        fn prop_whatsapp_messages_of_any_shape_never_panic(
            kind in prop::sample::select(vec!["text", "image", "audio", "video", "document", "sticker",
                "location", "contacts", "interactive", "button", "reaction", "unsupported", "x"]),
            field in "[a-z_]{1,12}",
            text in "\\PC{0,20}",
            number in any::<f64>(),
        ) {
            let raw = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {
                "messages": [{"from": "1", "id": "wamid.1", "type": kind,
                    kind: {"id": text, "body": text, "caption": text, field.clone(): number,
                           "latitude": number, "button_reply": {"title": text}},
                    "context": {"id": text}}],
                "statuses": [{"id": text, "status": "failed", "errors": [{"code": 1, "title": text}]}]
            }}]}]});
            if let Ok(env) = serde_json::from_value::<Envelope>(raw) {
                walk(&env);
            }
        }
    }
}
