//! Delivery of replies through the real `gatewayd` binary to the fake HTTP callback: splitting
//! long replies into ordered chunks, per-chat rate limits, `429 Retry-After` pauses that hold one
//! chat only, retries of retryable errors up to `max_attempts` and then a dead letter, permanent
//! errors dead-lettered at once, credentials errors holding the whole channel, one hanging chat
//! never blocking the others, and pending replies surviving a SIGKILL.
//!
//! The outbox and the delivery errors are read through the admin API (`ListOutbox` with each
//! row's error history), never from the database file. The outbox and the log file have no
//! change notification, so those two are polled; everything the callback sees is waited for
//! with the fake's Notify-based waits.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gateway_tests::{
    CallbackFault, Delivery, FakeCallback, Gateway, GatewayOptions, TIMEOUT, inspect, poll_until,
    poll_until_async, strip_ansi,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Gateway options: the HTTP channel pointing at `callback` (plus `http_extra` lines in
/// `[channels.http]`), the echo agent, `[delivery] retry_backoff = "20ms"` (plus
/// `delivery_extra` lines) and any further tables in `extra`.
fn options(
    callback: &FakeCallback,
    http_extra: &str,
    delivery_extra: &str,
    extra: &str,
) -> GatewayOptions {
    GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"echo\"\n\n\
         [channels.http]\nenabled = true\ncallback_url = \"{}\"\n{http_extra}\n\n\
         [delivery]\nretry_backoff = \"20ms\"\n{delivery_extra}\n\n{extra}\n",
        callback.url()
    ))
}

async fn start(opts: GatewayOptions) -> Gateway {
    Gateway::start(opts).await.expect("start gatewayd")
}

/// Posts one inbound message (sender `u-<chat>`, a direct chat) and expects 202.
async fn post(gw: &Gateway, message_id: &str, chat: &str, text: &str) {
    let body = json!({
        "message_id": message_id,
        "chat_id": chat,
        "sender_id": format!("u-{chat}"),
        "text": text,
        "chat_type": "direct",
    });
    let reply = gw.post_http_message(&body).await.expect("post message");
    assert_eq!(
        reply.status, 202,
        "posting {message_id} to {chat}: {}",
        reply.text
    );
    assert_eq!(reply.json["accepted"], true, "{}", reply.text);
}

fn of_chat<'a>(all: &'a [Delivery], chat: &str) -> Vec<&'a Delivery> {
    all.iter().filter(|d| d.chat_id == chat).collect()
}

fn replying_to<'a>(all: &'a [Delivery], inbound_id: &str) -> Vec<&'a Delivery> {
    all.iter()
        .filter(|d| d.reply_to.as_deref() == Some(inbound_id))
        .collect()
}

/// One outbox row as the admin API shows it, with its failed attempts.
#[derive(Debug, Clone)]
struct OutboxRow {
    id: i64,
    status: String,
    attempts: i64,
    last_error: Option<String>,
    error_class: Option<String>,
    text: String,
    errors: Vec<AttemptRow>,
}

/// One failed attempt as stored.
#[derive(Debug, Clone)]
struct AttemptRow {
    attempt: i64,
    class: String,
    error: String,
}

/// The HTTP outbox rows of `chat`, oldest first, through `ListOutbox`.
async fn try_outbox_rows(gw: &Gateway, chat: &str) -> anyhow::Result<Vec<OutboxRow>> {
    let rows = inspect::outbox(gw, "http", chat).await?;
    Ok(rows
        .into_iter()
        .map(|r| OutboxRow {
            id: r.id,
            status: inspect::status_name(r.status).to_owned(),
            attempts: i64::from(r.attempts),
            last_error: (!r.last_error.is_empty()).then_some(r.last_error),
            error_class: inspect::class_name(r.error_class).map(str::to_owned),
            text: r.text,
            errors: r
                .errors
                .into_iter()
                .map(|e| AttemptRow {
                    attempt: i64::from(e.attempt),
                    class: inspect::class_name(e.error_class)
                        .unwrap_or("unspecified")
                        .to_owned(),
                    error: e.error,
                })
                .collect(),
        })
        .collect())
}

/// The HTTP outbox rows of `chat`, oldest first; empty while the admin API does not answer.
async fn outbox_rows(gw: &Gateway, chat: &str) -> Vec<OutboxRow> {
    try_outbox_rows(gw, chat).await.unwrap_or_default()
}

/// Polls the outbox (it has no change notification) until the rows of `chat` satisfy `pred`,
/// and returns them.
async fn wait_outbox(
    gw: &Gateway,
    chat: &str,
    what: &str,
    pred: impl Fn(&[OutboxRow]) -> bool,
) -> Vec<OutboxRow> {
    let pred = &pred;
    if let Err(e) = poll_until_async(TIMEOUT, what, || async move {
        pred(&outbox_rows(gw, chat).await)
    })
    .await
    {
        panic!(
            "{e}\noutbox rows of {chat}: {:?}\n--- stderr.log (tail) ---\n{}",
            try_outbox_rows(gw, chat).await,
            gw.stderr_tail(40)
        );
    }
    outbox_rows(gw, chat).await
}

/// Formats a Unix time (whole seconds) as an RFC 7231 IMF-fixdate,
/// e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let weekday = DAYS[usize::try_from(days % 7).expect("small")];
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm, unsigned since >= 1970).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        MONTHS[usize::try_from(month - 1).expect("small")],
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60
    )
}

#[test]
fn http_date_formats_rfc7231() {
    assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    assert_eq!(http_date(1_445_412_480), "Wed, 21 Oct 2015 07:28:00 GMT");
}

/// Lines of a chunk that are code-fence lines.
fn fence_lines(text: &str) -> usize {
    text.lines()
        .filter(|l| l.trim_start().starts_with("```"))
        .count()
}

/// Checks the chunk envelope of one split reply and returns the chunk texts in order.
fn check_chunk_envelopes(chunks: &[&Delivery], max_chars: usize) -> Vec<String> {
    let n = chunks.len();
    assert!(n >= 2, "a long reply is split: {chunks:#?}");
    let first_id = &chunks[0].message_id;
    let outbox_id = first_id
        .strip_suffix("-1")
        .unwrap_or_else(|| panic!("the first chunk id ends in -1: {first_id:?}"));
    assert!(
        outbox_id.parse::<i64>().is_ok(),
        "chunk ids are <outbox id>-<k>: {first_id:?}"
    );
    for (k, c) in chunks.iter().enumerate() {
        let index = k + 1;
        assert_eq!(
            c.message_id,
            format!("{outbox_id}-{index}"),
            "chunk {index} of {n}: ids in order"
        );
        assert_eq!(
            c.body["part"],
            json!({"index": index, "count": n}),
            "chunk {index} of {n}: part field; body {}",
            c.body
        );
        let len = c.text.chars().count();
        assert!(
            len <= max_chars,
            "chunk {index} has {len} chars > {max_chars}: {:?}",
            c.text
        );
        assert!(!c.text.is_empty(), "chunk {index} is empty");
    }
    chunks.iter().map(|c| c.text.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunking_splits_long_replies_within_the_limit() {
    const MAX: usize = 100;
    let callback = FakeCallback::start().await;
    let gw = start(options(
        &callback,
        &format!("max_reply_chars = {MAX}"),
        "",
        "",
    ))
    .await;

    // --- Plain text: paragraphs, one 150-char word, CJK and a ZWJ family emoji. -------------
    let family = "👨\u{200d}👩\u{200d}👧";
    let para1 = "Long replies are split into chunks, and a paragraph break is the best place.";
    let word = "x".repeat(150);
    // 97 CJK characters with no space, then the family: a plain cut at 100 characters would
    // fall inside the emoji (after its third character).
    let cjk: String = "你好世界再见朋友".chars().cycle().take(97).collect();
    let para4 = "The closing paragraph has ordinary words separated by spaces, so a split here falls \
                 between two words and never inside one of them.";
    let text = format!("{para1}\n\n{word}\n\n{cjk}{family}再见。\n\n{para4}");
    let total = text.chars().count();
    assert!(total >= 430, "the test text is long enough: {total}");
    post(&gw, "long-1", "chunky", &text).await;

    let delivered = callback
        .wait_delivered(
            |d| {
                let of_reply = replying_to(d, "long-1");
                of_reply
                    .first()
                    .and_then(|c| c.body["part"]["count"].as_u64())
                    .is_some_and(|n| of_reply.len() as u64 >= n)
            },
            TIMEOUT,
        )
        .await
        .expect("every chunk of the long reply");
    let chunks = replying_to(&delivered, "long-1");
    let texts = check_chunk_envelopes(&chunks, MAX);
    assert!(
        texts.len() >= 5,
        "{total} chars at {MAX} per chunk: at least 5 chunks, got {}: {texts:#?}",
        texts.len()
    );
    assert!(
        chunks.windows(2).all(|w| w[0].at <= w[1].at),
        "chunks arrive in order"
    );
    assert_eq!(
        texts.concat(),
        text,
        "the chunks concatenate back to the reply"
    );
    assert_eq!(
        texts[0],
        format!("{para1}\n\n"),
        "a paragraph break is preferred"
    );
    let with_family = texts.iter().filter(|t| t.contains(family)).count();
    assert_eq!(
        with_family, 1,
        "the family emoji is whole in exactly one chunk: {texts:#?}"
    );
    for t in &texts {
        if t.contains('👨') || t.contains('👩') || t.contains('👧') {
            assert!(
                t.contains(family),
                "a chunk holds a piece of the family emoji: {t:?}"
            );
        }
    }
    assert!(
        chunks.iter().all(|c| c.chat_id == "chunky"),
        "every chunk goes to the chat"
    );

    // --- A code block cut by the split: closed and reopened with its language. -------------
    let code: String = (0..10)
        .map(|i| format!("    let value_{i} = compute({i});\n"))
        .collect();
    let fenced =
        format!("Here is the fix:\n\n```rust\nfn main() {{\n{code}}}\n```\n\nThat is all.");
    assert!(fenced.chars().count() > 3 * MAX, "the code reply is long");
    post(&gw, "code-1", "chunky", &fenced).await;
    let delivered = callback
        .wait_delivered(
            |d| {
                let of_reply = replying_to(d, "code-1");
                of_reply
                    .first()
                    .and_then(|c| c.body["part"]["count"].as_u64())
                    .is_some_and(|n| of_reply.len() as u64 >= n)
            },
            TIMEOUT,
        )
        .await
        .expect("every chunk of the code reply");
    let chunks = replying_to(&delivered, "code-1");
    let texts = check_chunk_envelopes(&chunks, MAX);
    assert_ne!(
        chunks[0].message_id.split('-').next(),
        replying_to(&delivered, "long-1")[0]
            .message_id
            .split('-')
            .next(),
        "each reply has its own outbox id"
    );
    for (k, t) in texts.iter().enumerate() {
        assert_eq!(
            fence_lines(t) % 2,
            0,
            "chunk {} has unbalanced fences: {t:?}\nall: {texts:#?}",
            k + 1
        );
    }
    assert!(texts[0].starts_with("Here is the fix:"), "{:?}", texts[0]);
    let reopened: Vec<usize> = (1..texts.len())
        .filter(|&k| texts[k].starts_with("```rust\n"))
        .collect();
    assert!(
        !reopened.is_empty(),
        "the chunk after the cut reopens the fence with its language: {texts:#?}"
    );
    for k in reopened {
        assert!(
            texts[k - 1].ends_with("```"),
            "the chunk before a reopened fence closes it: {:?}",
            texts[k - 1]
        );
    }
    // The first chunk opens the block and the split falls inside it.
    assert!(texts[0].contains("```rust\n"), "{:?}", texts[0]);
    assert!(
        texts[1].starts_with("```rust\n"),
        "the chunk right after the cut starts with the reopened fence: {texts:#?}"
    );
    assert!(
        texts.last().is_some_and(|t| t.ends_with("That is all.")),
        "{texts:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_spaces_one_chats_replies() {
    const BUSY: usize = 50;
    const OTHER: usize = 5;
    const PERIOD_MS: f64 = 200.0; // 5 per second
    let callback = FakeCallback::start().await;
    let gw = start(options(
        &callback,
        "",
        "",
        "[rate_limits.http]\nper_chat_per_second = 5\nper_chat_burst = 1",
    ))
    .await;

    for i in 0..BUSY {
        post(&gw, &format!("busy-{i}"), "busy", &format!("busy {i}")).await;
        if i == 9 {
            for j in 0..OTHER {
                post(&gw, &format!("other-{j}"), "other", &format!("other {j}")).await;
            }
        }
    }
    let delivered = callback
        .wait_delivered(|d| d.len() >= BUSY + OTHER, Duration::from_secs(60))
        .await
        .expect("all 55 replies");
    assert_eq!(delivered.len(), BUSY + OTHER, "each reply exactly once");

    let mut busy: Vec<Instant> = of_chat(&delivered, "busy").iter().map(|d| d.at).collect();
    busy.sort();
    assert_eq!(busy.len(), BUSY);
    let texts: Vec<String> = of_chat(&delivered, "busy")
        .iter()
        .map(|d| d.text.clone())
        .collect();
    let expected: Vec<String> = (0..BUSY).map(|i| format!("busy {i}")).collect();
    assert_eq!(texts, expected, "busy's replies in order");

    let span = busy[BUSY - 1].duration_since(busy[0]);
    let min_span_ms = (BUSY - 1) as f64 * PERIOD_MS * 0.9;
    let rate = (BUSY - 1) as f64 / span.as_secs_f64();
    eprintln!(
        "rate limit: {BUSY} replies to one chat over {span:?} = {rate:.2} msgs/s (limit 5/s, burst 1)"
    );
    assert!(
        span.as_secs_f64() * 1000.0 >= min_span_ms,
        "49 intervals of 200 ms: span {span:?} < {min_span_ms} ms"
    );
    for (i, start) in busy.iter().enumerate() {
        let in_window = busy[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= 6,
            "{in_window} sends within 1 s starting at send {i} (limit 5/s + burst)"
        );
    }

    let other = of_chat(&delivered, "other");
    assert_eq!(other.len(), OTHER);
    let last_busy = busy[BUSY - 1];
    for d in &other {
        assert!(
            d.at < last_busy,
            "chat other is not held behind busy: {:?} arrived {:?} after busy's last",
            d.text,
            d.at.duration_since(last_busy)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_pauses_that_chat_for_exactly_that_long() {
    let callback = FakeCallback::start().await;
    let gw = start(options(&callback, "", "", "")).await;

    // --- Retry-After in seconds. --------------------------------------------------------------
    callback.push_fault_for_chat(
        "slow",
        CallbackFault::Status429 {
            retry_after: "2".to_owned(),
        },
    );
    post(&gw, "slow-1", "slow", "slow reply").await;
    let received = callback
        .wait_received(
            |d| of_chat(d, "slow").iter().any(|x| x.status_returned != 0),
            TIMEOUT,
        )
        .await
        .expect("first attempt at slow");
    let first = of_chat(&received, "slow")[0].clone();
    assert_eq!(first.status_returned, 429);

    post(&gw, "fast-1", "fast", "fast reply").await;
    let delivered = callback
        .wait_delivered(|d| !of_chat(d, "slow").is_empty(), TIMEOUT)
        .await
        .expect("slow delivered after the pause");
    let fast = of_chat(&delivered, "fast");
    assert_eq!(fast.len(), 1, "fast delivered: {delivered:#?}");
    let slow_attempts = of_chat(&callback.received(), "slow")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(
        slow_attempts.len(),
        2,
        "one 429, one retry: {slow_attempts:#?}"
    );
    let waited = slow_attempts[1].at.duration_since(slow_attempts[0].at);
    assert!(
        waited >= Duration::from_millis(2000 - 50),
        "Retry-After: 2 honoured: retried after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(2000 + 1500),
        "retried promptly after the pause: {waited:?}"
    );
    assert!(
        fast[0].at < slow_attempts[1].at,
        "another chat is not paused: fast at +{:?}, slow retry at +{:?}",
        fast[0].at.duration_since(first.at),
        waited
    );

    // --- Retry-After as an HTTP date (whole seconds, so at least 2 s ahead). ------------------
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let target_unix = now_unix + 3;
    let target = UNIX_EPOCH + Duration::from_secs(target_unix);
    callback.push_fault_for_chat(
        "slow-date",
        CallbackFault::Status429 {
            retry_after: http_date(target_unix),
        },
    );
    let anchor = (Instant::now(), SystemTime::now());
    post(&gw, "slow-date-1", "slow-date", "slow date reply").await;
    let received = callback
        .wait_received(
            |d| {
                of_chat(d, "slow-date")
                    .iter()
                    .any(|x| x.status_returned != 0)
            },
            TIMEOUT,
        )
        .await
        .expect("first attempt at slow-date");
    assert_eq!(of_chat(&received, "slow-date")[0].status_returned, 429);
    post(&gw, "fast-2", "fast", "fast again").await;
    callback
        .wait_delivered(|d| !of_chat(d, "slow-date").is_empty(), TIMEOUT)
        .await
        .expect("slow-date delivered after the pause");
    let all = callback.received();
    let attempts = of_chat(&all, "slow-date");
    assert_eq!(attempts.len(), 2, "one 429, one retry: {attempts:#?}");
    let retry_wall = anchor.1 + attempts[1].at.duration_since(anchor.0);
    let slack = Duration::from_millis(50);
    assert!(
        retry_wall + slack >= target,
        "retried {:?} before the Retry-After date",
        target.duration_since(retry_wall).unwrap_or_default()
    );
    assert!(
        retry_wall < target + Duration::from_millis(1500),
        "retried {:?} after the Retry-After date",
        retry_wall.duration_since(target).unwrap_or_default()
    );
    let fast_again = replying_to(&all, "fast-2");
    assert_eq!(fast_again.len(), 1);
    assert!(
        fast_again[0].is_delivered() && fast_again[0].at < attempts[1].at,
        "fast is not held behind the dated pause"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_errors_are_retried_until_delivered() {
    let callback = FakeCallback::start().await;
    let gw = start(options(&callback, "", "", "")).await;
    callback.push_fault_for_chat("flaky", CallbackFault::Status(500));
    callback.push_fault_for_chat("flaky", CallbackFault::Status(500));
    post(&gw, "flaky-1", "flaky", "third time lucky").await;

    let delivered = callback
        .wait_delivered(|d| !of_chat(d, "flaky").is_empty(), TIMEOUT)
        .await
        .expect("delivered after two 500s");
    assert_eq!(of_chat(&delivered, "flaky")[0].text, "third time lucky");
    let received = callback.received();
    let statuses: Vec<u16> = of_chat(&received, "flaky")
        .iter()
        .map(|d| d.status_returned)
        .collect();
    assert_eq!(statuses, [500, 500, 200], "three requests for the reply");

    let rows = wait_outbox(&gw, "flaky", "the reply is marked delivered", |r| {
        r.len() == 1 && r[0].status == "delivered"
    })
    .await;
    let row = &rows[0];
    assert_eq!(row.attempts, 3, "{row:?}");
    assert_eq!(row.text, "third time lucky");
    let errors = &row.errors;
    assert_eq!(errors.len(), 2, "two failed attempts recorded: {errors:?}");
    for (i, e) in errors.iter().enumerate() {
        assert_eq!(e.class, "retryable", "{e:?}");
        assert_eq!(e.attempt, i as i64 + 1, "{e:?}");
        assert!(e.error.contains("500"), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_errors_exhaust_max_attempts_into_a_dead_letter() {
    let callback = FakeCallback::start().await;
    let gw = start(options(&callback, "", "max_attempts = 3", "")).await;
    callback.set_chat_mode("doomed", Some(CallbackFault::Status(503)));
    post(&gw, "doomed-1", "doomed", "never arrives").await;

    let rows = wait_outbox(&gw, "doomed", "the reply is a dead letter", |r| {
        r.len() == 1 && r[0].status == "dead"
    })
    .await;
    let row = &rows[0];
    let received = callback.received();
    let attempts = of_chat(&received, "doomed");
    assert_eq!(
        attempts.len(),
        3,
        "max_attempts = 3 requests, then no more: {attempts:#?}"
    );
    assert!(attempts.iter().all(|d| d.status_returned == 503));
    assert_eq!(row.attempts, 3, "{row:?}");
    assert_eq!(row.error_class.as_deref(), Some("retryable"), "{row:?}");
    assert!(
        row.last_error.as_deref().is_some_and(|e| e.contains("503")),
        "last_error names the status: {row:?}"
    );
    let errors = &row.errors;
    assert_eq!(errors.len(), 3, "every failed attempt recorded: {errors:?}");
    assert!(errors.iter().all(|e| e.class == "retryable"), "{errors:?}");

    // The channel keeps working for other chats.
    post(&gw, "alive-1", "alive", "still here").await;
    let delivered = callback
        .wait_delivered(|d| !of_chat(d, "alive").is_empty(), TIMEOUT)
        .await
        .expect("another chat is still delivered");
    assert_eq!(of_chat(&delivered, "alive")[0].text, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_dead_letter_at_once() {
    let callback = FakeCallback::start().await;
    let gw = start(options(&callback, "", "", "")).await;
    callback.push_fault_for_chat("refused", CallbackFault::Status(400));
    post(&gw, "refused-1", "refused", "bad request").await;

    let rows = wait_outbox(&gw, "refused", "the reply is a dead letter", |r| {
        r.len() == 1 && r[0].status == "dead"
    })
    .await;
    let row = &rows[0];
    assert_eq!(row.error_class.as_deref(), Some("permanent"), "{row:?}");
    assert_eq!(row.attempts, 1, "{row:?}");
    assert!(
        row.last_error.as_deref().is_some_and(|e| e.contains("400")),
        "{row:?}"
    );
    let received = callback.received();
    assert_eq!(
        replying_to(&received, "refused-1").len(),
        1,
        "a 400 is not retried: {received:#?}"
    );

    // The chat's lane goes on with the next reply; the dead one is not sent again.
    post(&gw, "refused-2", "refused", "good request").await;
    callback
        .wait_delivered(|d| !replying_to(d, "refused-2").is_empty(), TIMEOUT)
        .await
        .expect("the next reply in that chat is delivered");
    let received = callback.received();
    assert_eq!(
        replying_to(&received, "refused-1").len(),
        1,
        "{received:#?}"
    );
    assert_eq!(outbox_rows(&gw, "refused").await[0].status, "dead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_errors_hold_the_channel_instead_of_dead_lettering() {
    let callback = FakeCallback::start().await;
    let gw = start(options(&callback, "", "", "")).await;
    callback.set_chat_mode("locked", Some(CallbackFault::Status(401)));
    post(&gw, "locked-1", "locked", "needs credentials").await;

    let reauth_logged = |log: &str| {
        strip_ansi(log).lines().any(|l| {
            l.contains("Channel state changed.")
                && l.contains("to=\"reauth_needed\"")
                && l.contains("http")
        })
    };
    if let Err(e) = poll_until(TIMEOUT, "the channel is logged as reauth_needed", || {
        reauth_logged(&gw.stderr_log())
    })
    .await
    {
        panic!("{e}\n--- stderr.log (tail) ---\n{}", gw.stderr_tail(40));
    }

    let rows = wait_outbox(&gw, "locked", "the auth failure is recorded", |r| {
        r.len() == 1 && r[0].error_class.as_deref() == Some("auth")
    })
    .await;
    assert_eq!(rows[0].status, "pending", "held, not dead: {:?}", rows[0]);
    assert_eq!(rows[0].attempts, 1, "{:?}", rows[0]);
    let errors = &rows[0].errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].class, "auth");

    // A reply in another chat is committed but held too: nothing goes out on the channel.
    post(&gw, "bystander-1", "bystander", "held as well").await;
    let rows = wait_outbox(&gw, "bystander", "the bystander reply is committed", |r| {
        !r.is_empty()
    })
    .await;
    assert_eq!(rows[0].status, "pending", "{:?}", rows[0]);
    assert_eq!(rows[0].text, "held as well");
    // Give the (held) lane a bounded window in which an unheld channel would have sent it.
    let sent = callback
        .wait_received(
            |d| !of_chat(d, "bystander").is_empty(),
            Duration::from_secs(1),
        )
        .await;
    assert!(
        sent.is_err(),
        "no request for another chat while credentials are refused: {:#?}",
        callback.received()
    );
    let received = callback.received();
    assert!(of_chat(&received, "bystander").is_empty());
    assert_eq!(
        of_chat(&received, "locked").len(),
        1,
        "the refused reply is not retried in a loop: {received:#?}"
    );
    let rows = outbox_rows(&gw, "bystander").await;
    assert_eq!(rows[0].status, "pending", "{:?}", rows[0]);
    assert_eq!(rows[0].attempts, 0, "{:?}", rows[0]);
    assert_eq!(outbox_rows(&gw, "locked").await[0].status, "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hanging_chat_never_blocks_the_others() {
    const CHATS: usize = 10;
    const PER_CHAT: usize = 2;
    let callback = FakeCallback::start().await;
    let gw = start(options(&callback, "timeout = \"30s\"", "", "")).await;
    callback.set_chat_mode("stuck", Some(CallbackFault::Hang));
    post(&gw, "stuck-1", "stuck", "into the void").await;
    callback
        .wait_received(|d| !of_chat(d, "stuck").is_empty(), TIMEOUT)
        .await
        .expect("the stuck request is in flight");

    for i in 0..PER_CHAT {
        for c in 0..CHATS {
            post(
                &gw,
                &format!("c{c}-{i}"),
                &format!("chat-{c}"),
                &format!("{c}:{i}"),
            )
            .await;
        }
    }
    let delivered = callback
        .wait_delivered(
            |d| d.iter().filter(|x| x.chat_id != "stuck").count() >= CHATS * PER_CHAT,
            TIMEOUT,
        )
        .await
        .expect("every other chat's replies");
    let others: HashSet<&str> = delivered
        .iter()
        .filter(|d| d.chat_id != "stuck")
        .map(|d| d.text.as_str())
        .collect();
    assert_eq!(others.len(), CHATS * PER_CHAT, "all 20 distinct replies");
    let received = callback.received();
    assert_eq!(of_chat(&received, "stuck").len(), 1, "{received:#?}");
    assert!(of_chat(&delivered, "stuck").is_empty());
    assert_eq!(
        of_chat(&received, "stuck")[0].status_returned,
        0,
        "still hanging"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_survive_a_kill_during_retries() {
    let callback = FakeCallback::start().await;
    // Many attempts allowed, so the reply is still pending (not dead) when the daemon dies.
    let mut gw = start(options(&callback, "", "max_attempts = 50", "")).await;
    callback.set_chat_mode("durable", Some(CallbackFault::Status(500)));
    post(&gw, "durable-1", "durable", "survives SIGKILL").await;
    callback
        .wait_received(|d| of_chat(d, "durable").len() >= 2, TIMEOUT)
        .await
        .expect("two failing attempts");

    // Still failing, so still pending up to the kill (50 attempts are far off).
    let rows = outbox_rows(&gw, "durable").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, "pending", "{:?}", rows[0]);
    gw.kill().await;
    callback.set_chat_mode("durable", None);
    let before = of_chat(&callback.received(), "durable").len();
    assert!(
        callback.delivered().is_empty(),
        "nothing delivered before the kill"
    );

    gw.restart().await.expect("restart gatewayd");
    let delivered = callback
        .wait_delivered(|d| !of_chat(d, "durable").is_empty(), TIMEOUT)
        .await
        .expect("delivered after the restart");
    let rows = wait_outbox(&gw, "durable", "the reply is marked delivered", |r| {
        r.len() == 1 && r[0].status == "delivered"
    })
    .await;
    // The row is final now: no further sends can follow.
    let delivered_now = callback.delivered();
    let of_durable = of_chat(&delivered_now, "durable");
    assert_eq!(
        of_durable.len(),
        1,
        "delivered exactly once: {delivered_now:#?}"
    );
    assert_eq!(of_durable[0].text, "survives SIGKILL");
    assert_eq!(of_durable[0].reply_to.as_deref(), Some("durable-1"));
    assert_eq!(of_durable[0].message_id, rows[0].id.to_string());
    assert_eq!(
        of_chat(&delivered, "durable")[0].message_id,
        of_durable[0].message_id
    );
    let after = of_chat(&callback.received(), "durable").len();
    assert_eq!(
        after,
        before + 1,
        "the restarted daemon sent it once more, and that succeeded"
    );
    let v: Value = of_durable[0].body.clone();
    assert!(v.get("part").is_none(), "an unsplit reply has no part: {v}");
}
