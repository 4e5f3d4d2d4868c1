//! One person across the channels, through the real `gatewayd` with the echo agent: WebChat,
//! Telegram (long polling on `FakeTelegram`), Discord (the gateway and REST of `FakeDiscord`),
//! Slack (the Events API from `FakeSlack`), WhatsApp (the Cloud API webhook from
//! `FakeWhatsApp`), Signal (the event stream of `FakeSignal`) and iMessage (the webhook of
//! `FakeBlueBubbles`). Before linking, each address is a user of its own; `/link` on WebChat and
//! `/link CODE` on each of the others join them into one user, whose `/whoami` on any channel
//! lists every address and names the same direct conversation; each reply goes back to the
//! channel and chat the command came from, and `gatewayctl channels list` shows all seven.

use gateway_tests::fake_bluebubbles::{self, FakeBlueBubbles};
use gateway_tests::fake_discord::FakeDiscord;
use gateway_tests::fake_signal::{self, FakeSignal};
use gateway_tests::fake_slack::{FakeSlack, Post, Signing as SlackSigning};
use gateway_tests::fake_telegram::{ChatSpec, FakeTelegram};
use gateway_tests::fake_whatsapp::{FakeWhatsApp, SentMessage, Signing as WaSigning};
use gateway_tests::replies::{link_code, whoami_addresses, whoami_conversation, whoami_user};
use gateway_tests::{Gateway, GatewayOptions, TIMEOUT, WebChatClient};

const TG_TOKEN: &str = "4242:telegram-test-token";
const DC_TOKEN: &str = "discord-test-token";
const SLACK_BOT: &str = "xoxb-slack-test-token";
const SLACK_APP: &str = "xapp-slack-test-token";
const SLACK_SECRET: &str = "slack-signing-secret-42";
const WA_TOKEN: &str = "EAAG-whatsapp-test-token";
const WA_SECRET: &str = "wa-app-secret-42";
const WA_VERIFY: &str = "wa-verify-token";
const WA_NUMBER: &str = "106540352242922";
const SIGNAL_ACCOUNT: &str = "+15550009999";
const BB_PASSWORD: &str = "bb-cross-channel-password";

struct Channels {
    gw: Gateway,
    tg: FakeTelegram,
    dc: FakeDiscord,
    slack: FakeSlack,
    wa: FakeWhatsApp,
    sig: FakeSignal,
    bb: FakeBlueBubbles,
}

async fn start() -> Channels {
    let tg = FakeTelegram::start(TG_TOKEN).await;
    let dc = FakeDiscord::start(DC_TOKEN).await;
    let slack = FakeSlack::start(SLACK_BOT, SLACK_APP, SLACK_SECRET).await;
    let wa = FakeWhatsApp::start(WA_TOKEN, WA_NUMBER, WA_SECRET).await;
    let sig = FakeSignal::start(SIGNAL_ACCOUNT).await;
    let bb = FakeBlueBubbles::start(BB_PASSWORD).await;
    let mut opts = GatewayOptions::with_config(format!(
        "[channels.telegram]\nenabled = true\ntoken_env = \"TG_TOKEN\"\napi_url = \"{}\"\npoll_timeout = \"1s\"\n\n\
         [channels.discord]\nenabled = true\ntoken_env = \"DC_TOKEN\"\napi_url = \"{}\"\n\n\
         [channels.slack]\nenabled = true\nmode = \"events\"\nbot_token_env = \"SLACK_BOT_TOKEN\"\n\
         signing_secret_env = \"SLACK_SIGNING_SECRET\"\napi_url = \"{}\"\n\n\
         [channels.whatsapp]\nenabled = true\naccess_token_env = \"WA_TOKEN\"\napp_secret_env = \"WA_APP_SECRET\"\n\
         verify_token_env = \"WA_VERIFY_TOKEN\"\nphone_number_id = \"{WA_NUMBER}\"\napi_url = \"{}\"\n\n\
         [channels.signal]\nenabled = true\naccount = \"{SIGNAL_ACCOUNT}\"\nrpc_url = \"{}\"\n\n\
         [channels.imessage]\nenabled = true\nserver_url = \"{}\"\npassword_env = \"BB_PASSWORD\"\nsend_method = \"private-api\"\n",
        tg.api_url(),
        dc.url(),
        slack.api_url(),
        wa.api_url(),
        sig.rpc_url(),
        bb.server_url()
    ));
    for (k, v) in [
        ("TG_TOKEN", TG_TOKEN),
        ("DC_TOKEN", DC_TOKEN),
        ("SLACK_BOT_TOKEN", SLACK_BOT),
        ("SLACK_SIGNING_SECRET", SLACK_SECRET),
        ("WA_TOKEN", WA_TOKEN),
        ("WA_APP_SECRET", WA_SECRET),
        ("WA_VERIFY_TOKEN", WA_VERIFY),
        ("BB_PASSWORD", BB_PASSWORD),
    ] {
        opts.env.push((k.to_owned(), v.to_owned()));
    }
    let gw = Gateway::start(opts).await.expect("start gatewayd");
    dc.wait_identified(TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.stderr_tail(40)));
    Channels {
        gw,
        tg,
        dc,
        slack,
        wa,
        sig,
        bb,
    }
}

const TG_USER: i64 = 4242;
const DC_USER: u64 = 80_001;
const DC_DM: u64 = 80_101;
const SLACK_USER: &str = "U0ADA";
const SLACK_DM: &str = "D0ADA";
const WA_USER: &str = "15550001111";
/// The Signal user's UUID is `fake_signal::uuid(SIGNAL_USER)`.
const SIGNAL_USER: u32 = 42;
const IM_USER: &str = "ada@example.com";

impl Channels {
    /// `text` from the Telegram user in their private chat; the reply's text.
    async fn telegram(&self, text: &str) -> String {
        let chat = TG_USER.to_string();
        let before = self
            .tg
            .sent_ok()
            .iter()
            .filter(|m| m.chat_id == chat)
            .count();
        self.tg.push_text(ChatSpec::private(TG_USER), TG_USER, text);
        let sent = self
            .tg
            .wait_sent(
                |s| s.iter().filter(|m| m.chat_id == chat).count() > before,
                TIMEOUT,
            )
            .await
            .unwrap_or_else(|e| panic!("Telegram reply to {text:?}: {e:#}"));
        let replies: Vec<_> = sent.iter().filter(|m| m.chat_id == chat).collect();
        replies[before].text.clone()
    }

    /// `text` from the Discord user in their DM with the bot; the reply's text.
    async fn discord(&self, text: &str) -> String {
        let id = self.dc.push_dm(DC_DM, DC_USER, text);
        let is_reply = |m: &gateway_tests::fake_discord::SentMessage| {
            m.channel_id == DC_DM && m.reference_message_id == Some(id)
        };
        let sent = self
            .dc
            .wait_sent(|s| s.iter().any(is_reply), TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("Discord reply to {text:?}: {e:#}"));
        sent.iter()
            .find(|m| is_reply(m))
            .map(|m| m.content.clone())
            .expect("found by the wait")
    }

    /// `text` from the Slack user in their DM with the bot; the reply's text.
    async fn slack(&self, text: &str) -> String {
        let of = |p: &[Post]| -> Vec<Post> {
            p.iter()
                .filter(|p| p.channel == SLACK_DM && p.is_success())
                .cloned()
                .collect()
        };
        let before = of(&self.slack.posts()).len();
        let (body, _) = self
            .slack
            .message_event(SLACK_DM, "im", SLACK_USER, text, None);
        let url = format!("{}/channels/slack/events", self.gw.http_base());
        let (status, answer) = self
            .slack
            .deliver(&url, &body, SlackSigning::Correct, None)
            .await
            .expect("POST the event");
        assert_eq!(status, 200, "{answer}");
        let posts = self
            .slack
            .wait_posts(|p| of(p).len() > before, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("Slack reply to {text:?}: {e:#}"));
        of(&posts)[before].text.clone()
    }

    /// `text` from the WhatsApp user; the reply's text.
    async fn whatsapp(&self, text: &str) -> String {
        let (wamid, envelope) = self.wa.text_message(WA_USER, "Ada L", text, None);
        let url = format!("{}/channels/whatsapp/webhook", self.gw.http_base());
        assert_eq!(self.wa.deliver(&url, &envelope, WaSigning::Good).await, 200);
        let is_reply = |m: &SentMessage| {
            m.to == WA_USER && m.is_success() && m.context_message_id.as_deref() == Some(&wamid)
        };
        let sent = self
            .wa
            .wait_sent(|s| s.iter().any(is_reply), TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("WhatsApp reply to {text:?}: {e:#}"));
        sent.iter()
            .find(|m| is_reply(m))
            .map(|m| m.text.clone())
            .expect("found by the wait")
    }
}

impl Channels {
    /// `text` from the Signal user in their direct chat; the reply's text.
    async fn signal(&self, text: &str) -> String {
        let user = fake_signal::uuid(SIGNAL_USER);
        let id = self.sig.write(&user, "Ada", None, text, None);
        let is_reply = |m: &fake_signal::SignalSend| {
            m.ok && m
                .quote_author
                .as_ref()
                .zip(m.quote_timestamp)
                .map(|(a, t)| format!("{a}:{t}"))
                == Some(id.clone())
        };
        let sent = self
            .sig
            .wait_sends(|s| s.iter().any(is_reply), TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("Signal reply to {text:?}: {e:#}"));
        sent.iter()
            .find(|m| is_reply(m))
            .map(|m| m.message.clone())
            .expect("found by the wait")
    }

    /// `text` from the iMessage user in their direct chat; the reply's text.
    async fn imessage(&self, text: &str) -> String {
        let chat = fake_bluebubbles::direct_chat(IM_USER);
        let url = format!("{}/channels/imessage/webhook", self.gw.http_base());
        let (guid, status) = self
            .bb
            .receive(&url, self.bb.incoming(IM_USER, &chat, text))
            .await;
        assert_eq!(status, 200);
        let is_reply = |m: &fake_bluebubbles::SentText| {
            m.is_success() && m.selected_message_guid.as_deref() == Some(guid.as_str())
        };
        let sent = self
            .bb
            .wait_sent(|s| s.iter().any(is_reply), TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("iMessage reply to {text:?}: {e:#}"));
        sent.iter()
            .find(|m| is_reply(m))
            .map(|m| m.message.clone())
            .expect("found by the wait")
    }
}

/// Sends `text` on a WebChat socket; the text of its reply.
async fn web(client: &mut WebChatClient, id: &str, text: &str) -> String {
    client.send_message(id, text).await.expect("send");
    let frames = client
        .recv_until(|f| f["type"] == "message" && f["reply_to"] == id, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("WebChat reply to {text:?}: {e:#}"));
    frames
        .last()
        .and_then(|f| f["text"].as_str())
        .expect("reply frame has text")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_person_is_linked_across_all_seven_channels() {
    let ch = start().await;
    let mut ada = WebChatClient::connect(&ch.gw.ws_url("ada-web"))
        .await
        .expect("connect");

    // One user per address.
    let web_user = whoami_user(&web(&mut ada, "w1", "/whoami").await);
    let others = [
        whoami_user(&ch.telegram("/whoami").await),
        whoami_user(&ch.discord("/whoami").await),
        whoami_user(&ch.slack("/whoami").await),
        whoami_user(&ch.whatsapp("/whoami").await),
        whoami_user(&ch.signal("/whoami").await),
        whoami_user(&ch.imessage("/whoami").await),
    ];
    for other in others {
        assert_ne!(other, web_user, "unknown addresses are isolated users");
    }

    // One code per link, each asked for on WebChat and used on another channel.
    let linked = |address: &str| {
        format!(
            "Linked. {address} now belongs to user {web_user}, and your conversations are merged."
        )
    };
    let c = link_code(&web(&mut ada, "w2", "/link").await);
    assert_eq!(
        ch.telegram(&format!("/link {c}")).await,
        linked(&format!("telegram:{TG_USER}"))
    );
    let c = link_code(&web(&mut ada, "w3d", "/link").await);
    assert_eq!(
        ch.discord(&format!("/link {c}")).await,
        linked(&format!("discord:{DC_USER}"))
    );
    let c = link_code(&web(&mut ada, "w3", "/link").await);
    assert_eq!(
        ch.slack(&format!("/link {c}")).await,
        linked(&format!("slack:{SLACK_USER}"))
    );
    let c = link_code(&web(&mut ada, "w4", "/link").await);
    assert_eq!(
        ch.whatsapp(&format!("/link {c}")).await,
        linked(&format!("whatsapp:{WA_USER}"))
    );
    let c = link_code(&web(&mut ada, "w4s", "/link").await);
    let signal_user = fake_signal::uuid(SIGNAL_USER);
    assert_eq!(
        ch.signal(&format!("/link {c}")).await,
        linked(&format!("signal:{signal_user}"))
    );
    let c = link_code(&web(&mut ada, "w4i", "/link").await);
    assert_eq!(
        ch.imessage(&format!("/link {c}")).await,
        linked(&format!("imessage:{IM_USER}"))
    );

    // Whichever channel asks, it is one user with every address and one direct conversation.
    let all = {
        let mut a = vec![
            "webchat:ada-web".to_owned(),
            format!("telegram:{TG_USER}"),
            format!("discord:{DC_USER}"),
            format!("slack:{SLACK_USER}"),
            format!("whatsapp:{WA_USER}"),
            format!("signal:{signal_user}"),
            format!("imessage:{IM_USER}"),
        ];
        a.sort();
        a
    };
    let answers = [
        web(&mut ada, "w5", "/whoami").await,
        ch.telegram("/whoami").await,
        ch.discord("/whoami").await,
        ch.slack("/whoami").await,
        ch.whatsapp("/whoami").await,
        ch.signal("/whoami").await,
        ch.imessage("/whoami").await,
    ];
    for whoami in &answers {
        assert_eq!(whoami_user(whoami), web_user, "{whoami}");
        assert_eq!(whoami_addresses(whoami), all, "{whoami}");
        assert_eq!(
            whoami_conversation(whoami),
            format!("user:{web_user}"),
            "{whoami}"
        );
    }

    // A message on one channel is in the history the others see.
    assert_eq!(ch.slack("said on slack").await, "said on slack");
    let history = ch.whatsapp("/history").await;
    assert!(history.contains("[slack] you: said on slack"), "{history}");
    let history = ch.signal("/history").await;
    assert!(history.contains("[slack] you: said on slack"), "{history}");
    let history = ch.imessage("/history").await;
    assert!(history.contains("[slack] you: said on slack"), "{history}");

    // `gatewayctl channels list` shows every channel.
    let listed = ch.gw.gatewayctl_json(&["channels", "list"]).await;
    let mut names: Vec<&str> = listed["channels"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["channel"].as_str()).collect())
        .unwrap_or_default();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "discord", "imessage", "signal", "slack", "telegram", "webchat", "whatsapp"
        ],
        "{listed}"
    );
}
