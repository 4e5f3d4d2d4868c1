//! Identities through the real `gatewayd` binary (echo agent, WebChat and the HTTP channel):
//! unknown addresses are isolated users; `/link` joins a WebChat and an HTTP address into one
//! user with one shared, time-ordered history; link codes work once and wrong guesses lock an
//! address out; `/unlink` splits an address off again; group chats have their own session that
//! never merges with a direct chat.

use std::sync::atomic::{AtomicUsize, Ordering};

use gateway_tests::replies::{link_code, whoami_addresses, whoami_conversation, whoami_user};
use gateway_tests::{FakeCallback, Gateway, GatewayOptions, TIMEOUT, WebChatClient};
use serde_json::json;

/// Unique message ids across this test binary, so `reply_to` identifies one message.
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

fn next_id(prefix: &str) -> String {
    format!("{prefix}-{}", NEXT_ID.fetch_add(1, Ordering::SeqCst))
}

async fn start(callback: &FakeCallback) -> Gateway {
    Gateway::start(GatewayOptions::with_config(format!(
        "[channels.http]\nenabled = true\ncallback_url = \"{}\"\n",
        callback.url()
    )))
    .await
    .expect("start gatewayd")
}

/// One person (or group) on the HTTP channel.
#[derive(Clone, Copy)]
struct HttpChat<'a> {
    chat_id: &'a str,
    sender_id: &'a str,
    chat_type: &'a str,
}

impl<'a> HttpChat<'a> {
    /// A direct chat whose chat id is the sender id.
    fn direct(sender_id: &'a str) -> Self {
        HttpChat {
            chat_id: sender_id,
            sender_id,
            chat_type: "direct",
        }
    }

    fn group(chat_id: &'a str, sender_id: &'a str) -> Self {
        HttpChat {
            chat_id,
            sender_id,
            chat_type: "group",
        }
    }

    /// Posts `text` and returns the text of its reply at the callback.
    async fn ask(&self, gw: &Gateway, callback: &FakeCallback, text: &str) -> String {
        let id = next_id("h");
        let resp = gw
            .post_http_message(&json!({
                "message_id": id,
                "chat_id": self.chat_id,
                "sender_id": self.sender_id,
                "chat_type": self.chat_type,
                "text": text,
            }))
            .await
            .expect("post message");
        assert_eq!(resp.status, 202, "POST {text:?}: {}", resp.text);
        assert_eq!(resp.json, json!({"accepted": true, "duplicate": false}));
        let delivered = callback
            .wait_delivered(
                |d| d.iter().any(|x| x.reply_to.as_deref() == Some(id.as_str())),
                TIMEOUT,
            )
            .await
            .unwrap_or_else(|e| panic!("reply to {text:?} from {}: {e}", self.sender_id));
        let replies: Vec<_> = delivered
            .iter()
            .filter(|x| x.reply_to.as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(replies.len(), 1, "one reply to {text:?}: {replies:?}");
        assert_eq!(
            replies[0].chat_id, self.chat_id,
            "the reply goes back to the chat it came from"
        );
        replies[0].text.clone()
    }
}

/// Sends `text` on a WebChat socket and returns the text of its reply.
async fn ask_web(web: &mut WebChatClient, text: &str) -> String {
    let id = next_id("w");
    web.send_message(&id, text).await.expect("send websocket");
    let frames = web
        .recv_until(
            |f| f["type"] == "message" && f["reply_to"] == id.as_str(),
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("WebChat reply to {text:?}: {e:#}"));
    assert!(
        frames.iter().all(|f| f["type"] != "error"),
        "no error frames: {frames:?}"
    );
    frames
        .last()
        .and_then(|f| f["text"].as_str())
        .expect("reply frame has text")
        .to_owned()
}

fn history(lines: &[&str]) -> String {
    format!("History (oldest first):\n{}", lines.join("\n"))
}

const NO_HISTORY: &str = "No history in this conversation yet.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_addresses_are_isolated_users() {
    let callback = FakeCallback::start().await;
    let gw = start(&callback).await;
    let alice = HttpChat::direct("alice");
    let bob = HttpChat::direct("bob");

    assert_eq!(
        alice.ask(&gw, &callback, "alice's secret").await,
        "alice's secret"
    );
    assert_eq!(
        bob.ask(&gw, &callback, "bob's secret").await,
        "bob's secret"
    );

    let who_a = alice.ask(&gw, &callback, "/whoami").await;
    let who_b = bob.ask(&gw, &callback, "/whoami").await;
    assert_ne!(
        whoami_user(&who_a),
        whoami_user(&who_b),
        "two unknown addresses are two users: {who_a:?} / {who_b:?}"
    );
    assert_eq!(whoami_addresses(&who_a), ["http:alice"]);
    assert_eq!(whoami_addresses(&who_b), ["http:bob"]);
    assert_eq!(
        whoami_conversation(&who_a),
        format!("user:{}", whoami_user(&who_a))
    );
    assert_eq!(
        whoami_conversation(&who_b),
        format!("user:{}", whoami_user(&who_b))
    );

    assert_eq!(
        alice.ask(&gw, &callback, "/history").await,
        history(&["[http] you: alice's secret", "[http] agent: alice's secret"])
    );
    assert_eq!(
        bob.ask(&gw, &callback, "/history").await,
        history(&["[http] you: bob's secret", "[http] agent: bob's secret"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linking_webchat_and_http_makes_one_user_with_one_history() {
    let callback = FakeCallback::start().await;
    let gw = start(&callback).await;
    let mut web = WebChatClient::connect(&gw.ws_url("web-carol"))
        .await
        .expect("connect");
    let http = HttpChat::direct("carol-h");

    // Both addresses talk before they are linked: two separate users.
    assert_eq!(
        ask_web(&mut web, "written on the web").await,
        "written on the web"
    );
    assert_eq!(
        http.ask(&gw, &callback, "written over http").await,
        "written over http"
    );
    let web_user = whoami_user(&ask_web(&mut web, "/whoami").await);
    let http_user = whoami_user(&http.ask(&gw, &callback, "/whoami").await);
    assert_ne!(web_user, http_user, "not linked yet");

    let code = link_code(&ask_web(&mut web, "/link").await);
    let linked = http.ask(&gw, &callback, &format!("/link {code}")).await;
    assert_eq!(
        linked,
        format!(
            "Linked. http:carol-h now belongs to user {web_user}, and your conversations are merged."
        )
    );

    // Both sides are now the same user, with both addresses.
    let who_web = ask_web(&mut web, "/whoami").await;
    let who_http = http.ask(&gw, &callback, "/whoami").await;
    assert_eq!(whoami_user(&who_web), web_user, "{who_web:?}");
    assert_eq!(whoami_user(&who_http), web_user, "{who_http:?}");
    for who in [&who_web, &who_http] {
        assert_eq!(
            whoami_addresses(who),
            ["http:carol-h", "webchat:web-carol"],
            "{who:?}"
        );
        assert_eq!(
            whoami_conversation(who),
            format!("user:{web_user}"),
            "{who:?}"
        );
    }

    // The HTTP side sees both earlier conversations, merged in time order.
    let merged = [
        "[webchat] you: written on the web",
        "[webchat] agent: written on the web",
        "[http] you: written over http",
        "[http] agent: written over http",
    ];
    assert_eq!(http.ask(&gw, &callback, "/history").await, history(&merged));

    // One shared history from now on: what HTTP writes, WebChat sees.
    assert_eq!(
        http.ask(&gw, &callback, "after the link").await,
        "after the link"
    );
    let mut expected = merged.to_vec();
    expected.extend(["[http] you: after the link", "[http] agent: after the link"]);
    assert_eq!(ask_web(&mut web, "/history").await, history(&expected));

    // And what WebChat writes, HTTP sees.
    assert_eq!(ask_web(&mut web, "web again").await, "web again");
    expected.extend(["[webchat] you: web again", "[webchat] agent: web again"]);
    assert_eq!(
        http.ask(&gw, &callback, "/history").await,
        history(&expected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_codes_work_once_and_wrong_guesses_lock_out() {
    let callback = FakeCallback::start().await;
    let gw = start(&callback).await;
    let mut web = WebChatClient::connect(&gw.ws_url("web-dora"))
        .await
        .expect("connect");
    let dora = HttpChat::direct("dora-h");
    let eve = HttpChat::direct("eve");
    let mallory = HttpChat::direct("mallory");

    let web_user = whoami_user(&ask_web(&mut web, "/whoami").await);
    let code = link_code(&ask_web(&mut web, "/link").await);
    let linked = dora.ask(&gw, &callback, &format!("/link {code}")).await;
    assert!(linked.starts_with("Linked. http:dora-h"), "{linked:?}");

    // The same code from a third address: already used.
    let reused = eve.ask(&gw, &callback, &format!("/link {code}")).await;
    assert!(
        reused.starts_with("Not linked: that code is not valid"),
        "a code works once: {reused:?}"
    );
    let who_eve = eve.ask(&gw, &callback, "/whoami").await;
    assert_ne!(whoami_user(&who_eve), web_user, "eve was not linked");
    assert_eq!(whoami_addresses(&who_eve), ["http:eve"]);

    // Five wrong codes lock mallory out, even for a code that is valid afterwards.
    // ('0' is not in the code alphabet, so these can never be real codes.)
    for i in 0..5 {
        let wrong = mallory
            .ask(&gw, &callback, &format!("/link ZZZZ000{i}"))
            .await;
        assert!(
            wrong.starts_with("Not linked: that code is not valid"),
            "wrong code {i}: {wrong:?}"
        );
    }
    let fresh = link_code(&ask_web(&mut web, "/link").await);
    let locked = mallory.ask(&gw, &callback, &format!("/link {fresh}")).await;
    assert!(
        locked.starts_with("Not linked: too many wrong codes; try again in ")
            && locked.ends_with(" minute(s)."),
        "locked out after 5 wrong codes: {locked:?}"
    );
    let who_mallory = mallory.ask(&gw, &callback, "/whoami").await;
    assert_ne!(
        whoami_user(&who_mallory),
        web_user,
        "mallory was not linked"
    );
    assert_eq!(whoami_addresses(&who_mallory), ["http:mallory"]);

    // The linked pair is unaffected.
    let who_web = ask_web(&mut web, "/whoami").await;
    assert_eq!(
        whoami_addresses(&who_web),
        ["http:dora-h", "webchat:web-dora"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_gives_the_address_a_new_user_and_the_history_stays() {
    let callback = FakeCallback::start().await;
    let gw = start(&callback).await;
    let mut web = WebChatClient::connect(&gw.ws_url("web-finn"))
        .await
        .expect("connect");
    let http = HttpChat::direct("finn-h");

    assert_eq!(ask_web(&mut web, "web one").await, "web one");
    assert_eq!(http.ask(&gw, &callback, "http one").await, "http one");
    let code = link_code(&ask_web(&mut web, "/link").await);
    let linked = http.ask(&gw, &callback, &format!("/link {code}")).await;
    assert!(linked.starts_with("Linked. "), "{linked:?}");
    assert_eq!(http.ask(&gw, &callback, "http two").await, "http two");
    let shared_user = whoami_user(&http.ask(&gw, &callback, "/whoami").await);
    let shared = history(&[
        "[webchat] you: web one",
        "[webchat] agent: web one",
        "[http] you: http one",
        "[http] agent: http one",
        "[http] you: http two",
        "[http] agent: http two",
    ]);
    assert_eq!(ask_web(&mut web, "/history").await, shared);

    let unlinked = http.ask(&gw, &callback, "/unlink").await;
    let new_user: u64 = unlinked
        .strip_prefix("Unlinked. http:finn-h is now user ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected /unlink reply: {unlinked:?}"));
    assert_ne!(new_user, shared_user);
    assert_eq!(
        unlinked,
        format!(
            "Unlinked. http:finn-h is now user {new_user} on its own; the shared history stays with user {shared_user}."
        )
    );

    let who_http = http.ask(&gw, &callback, "/whoami").await;
    assert_eq!(whoami_user(&who_http), new_user, "{who_http:?}");
    assert_eq!(whoami_addresses(&who_http), ["http:finn-h"]);
    assert_eq!(whoami_conversation(&who_http), format!("user:{new_user}"));
    assert_eq!(
        http.ask(&gw, &callback, "/history").await,
        NO_HISTORY,
        "the split-off address starts with no history"
    );

    let who_web = ask_web(&mut web, "/whoami").await;
    assert_eq!(whoami_user(&who_web), shared_user, "{who_web:?}");
    assert_eq!(whoami_addresses(&who_web), ["webchat:web-finn"]);
    assert_eq!(
        ask_web(&mut web, "/history").await,
        shared,
        "the shared history stays with the remaining user"
    );

    // The last remaining address cannot be unlinked.
    let only = ask_web(&mut web, "/unlink").await;
    assert!(only.starts_with("Not unlinked: "), "{only:?}");
    assert!(only.contains("only address"), "{only:?}");

    // From now on the two are separate again.
    assert_eq!(http.ask(&gw, &callback, "http alone").await, "http alone");
    assert_eq!(
        http.ask(&gw, &callback, "/history").await,
        history(&["[http] you: http alone", "[http] agent: http alone"])
    );
    assert_eq!(ask_web(&mut web, "/history").await, shared);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_chats_have_their_own_session_and_never_merge_with_direct_chats() {
    let callback = FakeCallback::start().await;
    let gw = start(&callback).await;
    let alice_dm = HttpChat::direct("alice");
    let alice_group = HttpChat::group("team-1", "alice");
    let bob_group = HttpChat::group("team-1", "bob");

    assert_eq!(
        alice_dm.ask(&gw, &callback, "private note").await,
        "private note"
    );
    assert_eq!(
        alice_group.ask(&gw, &callback, "hello team").await,
        "hello team"
    );
    assert_eq!(bob_group.ask(&gw, &callback, "hi alice").await, "hi alice");

    // Both senders share one group session.
    let group_history = history(&[
        "[http] you: hello team",
        "[http] agent: hello team",
        "[http] you: hi alice",
        "[http] agent: hi alice",
    ]);
    assert_eq!(
        alice_group.ask(&gw, &callback, "/history").await,
        group_history
    );
    assert_eq!(
        bob_group.ask(&gw, &callback, "/history").await,
        group_history
    );

    let who_group = alice_group.ask(&gw, &callback, "/whoami").await;
    let who_dm = alice_dm.ask(&gw, &callback, "/whoami").await;
    assert_eq!(
        whoami_conversation(&who_group),
        "group:http:team-1 (a group chat has its own session)"
    );
    assert_eq!(
        whoami_user(&who_group),
        whoami_user(&who_dm),
        "the sender is the same user in the group and in the direct chat"
    );
    assert_eq!(
        whoami_conversation(&who_dm),
        format!("user:{}", whoami_user(&who_dm))
    );
    let who_bob = bob_group.ask(&gw, &callback, "/whoami").await;
    assert_eq!(
        whoami_conversation(&who_bob),
        whoami_conversation(&who_group)
    );
    assert_ne!(whoami_user(&who_bob), whoami_user(&who_group));

    // The direct chat has only its own messages, and the group never sees them.
    assert_eq!(
        alice_dm.ask(&gw, &callback, "/history").await,
        history(&["[http] you: private note", "[http] agent: private note"])
    );
    assert_eq!(
        alice_dm.ask(&gw, &callback, "another private one").await,
        "another private one"
    );
    assert_eq!(
        bob_group.ask(&gw, &callback, "/history").await,
        group_history
    );

    // Linking is refused in a group, whether asking for or redeeming a code.
    for cmd in ["/link", "/link ABCDEFGH"] {
        let refused = alice_group.ask(&gw, &callback, cmd).await;
        assert!(
            refused.starts_with("Linking works in a direct chat only"),
            "{cmd} in a group: {refused:?}"
        );
    }
    assert_eq!(
        whoami_addresses(&alice_dm.ask(&gw, &callback, "/whoami").await),
        ["http:alice"]
    );
}
