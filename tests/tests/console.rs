//! `gatewayctl console` end to end: the real console in a real terminal (tmux), against a
//! real gatewayd (HTTP channel to a fake callback, echo agent). A message creates a session,
//! the Sessions tab shows it, `e` `y` evicts it (the row turns `no` under RESIDENT, and
//! `sessions show` agrees), stopping gatewayd shows "disconnected, retrying in Ns", and `q`
//! quits with status 0.
//!
//! tmux is required: tests/run.sh installs it. Without it this test fails and says so.

use std::process::{Command, Stdio};

use gateway_tests::{FakeCallback, Gateway, GatewayOptions, TIMEOUT, gatewayctl_bin, poll_until};
use serde_json::{Value, json};

/// A tmux session running one command; killed on drop.
struct Tmux {
    name: String,
    /// Where the pane's shell writes the console's exit status when it ends; the file outlives
    /// the pane, so the status can be read however quickly tmux closes the session.
    status_file: tempfile::NamedTempFile,
}

impl Tmux {
    fn tmux(args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tmux runs")
    }

    fn start(command: &str) -> Tmux {
        let found = Command::new("tmux")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "tmux is not installed, and the console test drives the console in tmux; \
             run the tests with tests/run.sh (it installs tmux) or `apt-get install -y tmux`"
        );
        let name = format!("gwconsole-{}-{}", std::process::id(), rand_suffix());
        let status_file = tempfile::NamedTempFile::new().expect("status file");
        let command = format!("{command}; echo $? > '{}'", status_file.path().display());
        let command = command.as_str();
        let out = Self::tmux(&[
            "new-session",
            "-d",
            "-s",
            &name,
            "-x",
            "100",
            "-y",
            "30",
            command,
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
        // Keep the pane after the command exits, so a crash leaves its message to read.
        Self::tmux(&["set-option", "-t", &name, "remain-on-exit", "on"]);
        Tmux { name, status_file }
    }

    fn capture(&self) -> String {
        let out = Self::tmux(&["capture-pane", "-p", "-t", &self.name]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", self.name.as_str()];
        args.extend_from_slice(keys);
        let out = Self::tmux(&args);
        assert!(out.status.success(), "tmux send-keys {keys:?}: {out:?}");
    }

    /// Whether the console's process has exited (the pane is dead or gone).
    /// The console's exit status, once it has exited.
    fn exit_status(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.status_file.path()).ok()?;
        let status = text.trim();
        (!status.is_empty()).then(|| status.to_owned())
    }

    /// Polls the pane until `check` holds; the failure shows the last screen.
    async fn wait_for(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let ok = poll_until(TIMEOUT, what, || {
            last = self.capture();
            check(&last)
        })
        .await;
        assert!(ok.is_ok(), "{what}; the screen was:\n{last}");
        last
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        Self::tmux(&["kill-session", "-t", &self.name]);
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()))
}

/// The screen line of the session `key` in the Sessions table.
fn row<'a>(screen: &'a str, key: &str) -> Option<&'a str> {
    screen.lines().find(|l| {
        l.split_whitespace()
            .any(|w| w.trim_start_matches(['│', '>']) == key)
    })
}

/// The RESIDENT cell of a Sessions row: the fifth column.
fn resident(line: &str) -> Option<&str> {
    line.trim_matches(|c: char| c == '│' || c.is_whitespace())
        .trim_start_matches('>')
        .split_whitespace()
        .nth(4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_session_and_evicts_it_with_e_y() {
    let callback = FakeCallback::start().await;
    // A fixed admin port, so the restarted gatewayd is where the console keeps looking.
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut opts = GatewayOptions::with_config(format!(
        "[channels.http]\nenabled = true\ncallback_url = \"{}\"\n",
        callback.url()
    ));
    opts.admin_extra = format!("listen = \"127.0.0.1:{admin_port}\"");
    let mut gw = Gateway::start(opts).await.expect("start gatewayd");
    let reply = gw
        .post_http_message(
            &json!({"message_id": "c-1", "chat_id": "carol", "sender_id": "carol", "text": "hello console"}),
        )
        .await
        .expect("post");
    assert_eq!(reply.status, 202, "{}", reply.text);
    callback
        .wait_delivered(|d| !d.is_empty(), TIMEOUT)
        .await
        .expect("the echo was delivered");

    // The session's key, from the CLI.
    let ctl = gatewayctl_bin();
    let addr = gw.admin_url();
    let sessions = |args: &[&str]| -> Value {
        let out = Command::new(&ctl)
            .args(["--addr", &addr, "--output", "json", "sessions"])
            .args(args)
            .env_remove("GATEWAYCTL_ADDR")
            .env_remove("GATEWAYCTL_TOKEN")
            .output()
            .expect("gatewayctl runs");
        assert!(
            out.status.success(),
            "gatewayctl sessions {args:?}: {out:?}"
        );
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let list = sessions(&["list"]);
    let key = list["sessions"][0]["key"]
        .as_str()
        .unwrap_or_else(|| panic!("one session in {list}"))
        .to_owned();
    assert_eq!(list["sessions"][0]["resident"], true, "{list}");

    let console = Tmux::start(&format!(
        "env -u GATEWAYCTL_TOKEN TERM=xterm-256color '{}' console --addr '{addr}'",
        ctl.display()
    ));
    console
        .wait_for("the console connects", |s| s.contains("connected to"))
        .await;
    console.keys(&["2"]);
    let screen = console
        .wait_for("the Sessions tab lists the session as resident", |s| {
            row(s, &key).and_then(resident) == Some("yes")
        })
        .await;
    assert!(screen.contains("RESIDENT"), "{screen}");
    // The screen, for the README (visible with --nocapture).
    println!("--- Sessions tab ---\n{screen}");

    console.keys(&["e"]);
    console
        .wait_for("evict asks for confirmation", |s| {
            s.contains(&format!("Evict {key}? y/n"))
        })
        .await;
    console.keys(&["y"]);
    console
        .wait_for("the row shows resident=no after the eviction", |s| {
            row(s, &key).and_then(resident) == Some("no")
        })
        .await;
    let shown = sessions(&["show", &key]);
    assert_eq!(shown["session"]["resident"], false, "{shown}");

    // `?` shows the help, any key closes it; `q` quits.
    console.keys(&["?"]);
    console
        .wait_for("the help overlay", |s| s.contains("reconnect the channel"))
        .await;
    console.keys(&["Escape"]);
    console
        .wait_for("the help closes", |s| !s.contains("reconnect the channel"))
        .await;
    // gatewayd goes away: the console says so and keeps retrying by itself.
    gw.kill().await;
    let screen = console
        .wait_for("the console reports the lost connection", |s| {
            s.contains("disconnected, retrying in")
        })
        .await;
    println!("--- after gatewayd stopped ---\n{screen}");
    // It comes back: the console reconnects by itself and shows the session again.
    gw.restart().await.expect("restart gatewayd");
    let screen = console
        .wait_for("the console reconnects", |s| {
            s.contains("connected to") && !s.contains("disconnected") && s.contains("user:1")
        })
        .await;
    println!("--- after gatewayd came back ---\n{screen}");
    console.keys(&["q"]);
    let ok = poll_until(TIMEOUT, "the console exits on q", || {
        console.exit_status().is_some()
    })
    .await;
    assert!(ok.is_ok(), "still running:\n{}", console.capture());
    assert_eq!(
        console.exit_status().as_deref(),
        Some("0"),
        "{}",
        console.capture()
    );
}

/// The Channels tab shows each channel's health and last error, whatever the channel: here
/// Slack (events mode, connected once `auth.test` passed) and WhatsApp, held as
/// `reauth_needed` after the Cloud API refused its token with code 190.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channels_tab_shows_slack_and_whatsapp_health_and_last_error() {
    use gateway_tests::fake_slack::FakeSlack;
    use gateway_tests::fake_whatsapp::{FakeWhatsApp, Signing, WaFault};

    let slack = FakeSlack::start("xoxb-console", "xapp-console", "slack-secret").await;
    let wa = FakeWhatsApp::start("wa-console-token", "1065", "wa-secret").await;
    wa.set_mode(Some(WaFault::Unauthorized));
    let mut opts = GatewayOptions::with_config(format!(
        "[channels.slack]\nenabled = true\nmode = \"events\"\nbot_token_env = \"SLACK_BOT_TOKEN\"\n\
         signing_secret_env = \"SLACK_SIGNING_SECRET\"\napi_url = \"{}\"\n\n\
         [channels.whatsapp]\nenabled = true\naccess_token_env = \"WA_TOKEN\"\napp_secret_env = \"WA_APP_SECRET\"\n\
         verify_token_env = \"WA_VERIFY_TOKEN\"\nphone_number_id = \"1065\"\napi_url = \"{}\"\n",
        slack.api_url(),
        wa.api_url()
    ));
    for (k, v) in [
        ("SLACK_BOT_TOKEN", "xoxb-console"),
        ("SLACK_SIGNING_SECRET", "slack-secret"),
        ("WA_TOKEN", "wa-console-token"),
        ("WA_APP_SECRET", "wa-secret"),
        ("WA_VERIFY_TOKEN", "wa-verify"),
    ] {
        opts.env.push((k.to_owned(), v.to_owned()));
    }
    let gw = Gateway::start(opts).await.expect("start gatewayd");
    // A WhatsApp message whose reply is refused for its token.
    let (_, envelope) = wa.text_message("15550002222", "Bo", "hello", None);
    let url = format!("{}/channels/whatsapp/webhook", gw.http_base());
    assert_eq!(wa.deliver(&url, &envelope, Signing::Good).await, 200);

    let console = Tmux::start(&format!(
        "env -u GATEWAYCTL_TOKEN TERM=xterm-256color '{}' console --addr '{}'",
        gatewayctl_bin().display(),
        gw.admin_url()
    ));
    console
        .wait_for("the console connects", |s| s.contains("connected to"))
        .await;
    console.keys(&["3"]);
    let screen = console
        .wait_for(
            "the Channels tab shows slack connected and whatsapp held with its error",
            |s| {
                row(s, "slack").is_some_and(|l| l.contains("connected"))
                    && row(s, "whatsapp").is_some_and(|l| {
                        l.contains("reauth_needed") && l.contains("authentication refused")
                    })
            },
        )
        .await;
    assert!(screen.contains("LAST ERROR"), "{screen}");
    assert!(
        !screen.contains("wa-console-token"),
        "the token is never shown: {screen}"
    );
    println!("--- Channels tab ---\n{screen}");
    console.keys(&["q"]);
}
