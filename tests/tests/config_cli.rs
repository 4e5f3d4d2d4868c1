//! The `gatewayd` command line: `check-config` on valid and invalid files (every error at once,
//! with key path and line), `GATEWAYD_CONFIG`, a missing file, and a clear startup error when
//! the configured HTTP port is already taken.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use gateway_tests::{TIMEOUT, gatewayd_bin, run_cli};

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gatewayd-cli-")
        .tempdir()
        .expect("temp dir")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn check_config(dir: &Path, config: &Path) -> Output {
    let path = config.to_str().expect("utf-8 path");
    run_cli(dir, &["check-config", "--config", path])
}

/// Asserts `out` is a failed check with exactly one error line mentioning all of `needles`.
fn assert_single_error(out: &Output, config: &Path, needles: &[&str]) {
    let err = stderr(out);
    assert!(!out.status.success(), "must fail: {out:?}");
    assert_eq!(out.status.code(), Some(2), "exit code 2: {err}");
    assert!(
        err.contains(&format!("{} has 1 error(s):", config.display())),
        "header names the file and the count:\n{err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{err}");
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{needle:?} missing in {:?}",
            lines[0]
        );
    }
}

const VALID: &str = r#"[gateway]
data_dir = "data"
max_sessions = 100
shutdown_grace = "2s"

[http]
listen = "127.0.0.1:0"

[log]
level = "info"

[agent]
provider = "echo"

[channels.webchat]
enabled = true
max_message_bytes = 4096
"#;

#[test]
fn valid_file_is_reported_valid() {
    let dir = tempdir();
    let config = write(dir.path(), "ok.toml", VALID);
    let out = check_config(dir.path(), &config);
    assert!(out.status.success(), "{out:?}\n{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{} is valid", config.display())),
        "stdout: {text:?}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "check-config starts nothing and creates no data dir"
    );
}

#[test]
fn every_semantic_error_is_reported_in_one_run_with_key_path_and_line() {
    let dir = tempdir();
    let text = "\
[gateway]
data_dir = \"data\"
max_sessions = 0

[http]
listen = \"nowhere\"

[agent]
max_concurrent = 0

[channels.http]
enabled = true
";
    let config = write(dir.path(), "bad.toml", text);
    let out = check_config(dir.path(), &config);
    let err = stderr(&out);
    assert!(!out.status.success(), "must fail: {out:?}");
    assert_eq!(out.status.code(), Some(2), "exit code 2: {err}");
    assert!(
        err.contains(&format!("{} has 4 error(s):", config.display())),
        "header names the file and the count:\n{err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(lines.len(), 4, "one line per error:\n{err}");
    let line_of = |path: &str| -> &str {
        lines
            .iter()
            .find(|l| {
                l.trim_start()
                    .strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with([' ', ':']))
            })
            .copied()
            .unwrap_or_else(|| panic!("no error line for {path}:\n{err}"))
    };
    assert!(
        line_of("gateway.max_sessions").contains("(line 3)"),
        "{err}"
    );
    assert!(line_of("http.listen").contains("(line 6)"), "{err}");
    assert!(line_of("http.listen").contains("nowhere"), "{err}");
    assert!(
        line_of("agent.max_concurrent").contains("(line 9)"),
        "{err}"
    );
    // The key is missing, so the line is where its table (or `enabled = true`) is written.
    let callback = line_of("channels.http.callback_url");
    assert!(
        callback.contains("(line 11)") || callback.contains("(line 12)"),
        "the missing callback_url points at [channels.http] (line 11) or `enabled = true` \
         (line 12): {callback:?}\n{err}"
    );
    assert!(stdout(&out).is_empty(), "nothing on stdout: {out:?}");
}

#[test]
fn toml_syntax_error_names_its_line() {
    let dir = tempdir();
    let text = "[gateway]\ndata_dir = \"data\"\n\n[http]\nlisten = \"127.0.0.1:0\n";
    let config = write(dir.path(), "syntax.toml", text);
    let out = check_config(dir.path(), &config);
    assert_single_error(&out, &config, &["(line 5)"]);
}

#[test]
fn unknown_key_names_the_key_and_its_line() {
    let dir = tempdir();
    let text = "[gateway]\ndata_dir = \"data\"\n\n[agent]\nprovider = \"echo\"\nmodle = \"x\"\n";
    let config = write(dir.path(), "typo.toml", text);
    let out = check_config(dir.path(), &config);
    assert_single_error(&out, &config, &["modle", "(line 6)"]);
}

#[test]
fn wrong_type_names_the_key_path_and_line() {
    let dir = tempdir();
    let text =
        "[gateway]\ndata_dir = \"data\"\n\n[channels.webchat]\nmax_message_bytes = \"big\"\n";
    let config = write(dir.path(), "type.toml", text);
    let out = check_config(dir.path(), &config);
    assert_single_error(
        &out,
        &config,
        &["channels.webchat.max_message_bytes", "(line 5)"],
    );
}

fn gatewayd_with_env(dir: &Path, args: &[&str], config_env: Option<&Path>) -> Output {
    let bin = gatewayd_bin().expect("gatewayd binary");
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("GATEWAYD_CONFIG")
        .stdin(Stdio::null());
    if let Some(path) = config_env {
        cmd.env("GATEWAYD_CONFIG", path);
    }
    cmd.output().expect("run gatewayd")
}

#[test]
fn gatewayd_config_env_var_selects_the_file() {
    let dir = tempdir();
    let good = write(dir.path(), "from-env.toml", VALID);
    let out = gatewayd_with_env(dir.path(), &["check-config"], Some(&good));
    assert!(out.status.success(), "{out:?}\n{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("{} is valid", good.display())),
        "{out:?}"
    );

    let bad = write(
        dir.path(),
        "bad-from-env.toml",
        "[gateway]\nmax_sessions = 0\n",
    );
    let out = gatewayd_with_env(dir.path(), &["check-config"], Some(&bad));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(err.contains("gateway.max_sessions (line 2)"), "{err}");

    // --config wins over the environment variable.
    let out = gatewayd_with_env(
        dir.path(),
        &["check-config", "--config", good.to_str().expect("utf-8")],
        Some(&bad),
    );
    assert!(out.status.success(), "{out:?}\n{}", stderr(&out));
}

#[test]
fn missing_config_file_says_to_pass_config() {
    let dir = tempdir();
    // No --config, no GATEWAYD_CONFIG, no config/gatewayd.toml in the working directory.
    for args in [&["check-config"][..], &[][..]] {
        let out = gatewayd_with_env(dir.path(), args, None);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} must fail: {out:?}");
        assert!(err.contains("config/gatewayd.toml"), "{args:?}: {err}");
        assert!(err.contains("--config"), "{args:?}: {err}");
        assert!(err.contains("GATEWAYD_CONFIG"), "{args:?}: {err}");
    }
    let missing = dir.path().join("nope.toml");
    let out = check_config(dir.path(), &missing);
    let err = stderr(&out);
    assert!(!out.status.success(), "{out:?}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("--config"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_exits_with_one_clear_line() {
    let dir = tempdir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("local addr");
    let config = write(
        dir.path(),
        "gatewayd.toml",
        &format!(
            "[gateway]\ndata_dir = \"data\"\n\n[http]\nlisten = \"{addr}\"\n\n[log]\nlevel = \"info\"\n"
        ),
    );
    let bin = gatewayd_bin().expect("gatewayd binary");
    let child = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("GATEWAYD_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gatewayd");
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .expect("gatewayd must exit when its port is taken, not keep running")
        .expect("wait for gatewayd");
    let err = stderr(&out);
    assert!(!out.status.success(), "non-zero exit: {out:?}");
    let port = addr.port().to_string();
    let line = err
        .lines()
        .find(|l| l.contains("already in use"))
        .unwrap_or_else(|| panic!("no `already in use` line:\n{err}"));
    assert!(line.contains(&port), "names the port {port}: {line:?}");
    assert!(line.contains("http.listen"), "names the key: {line:?}");
    assert!(
        line.contains(&config.display().to_string()),
        "names the config file: {line:?}"
    );
    assert!(
        !stdout(&out).contains("http listening on"),
        "never claims to listen: {out:?}"
    );
    drop(taken);
}

#[test]
fn check_config_reports_every_workflow_error_and_loads_the_rest() {
    let dir = tempdir();
    let flows = dir.path().join("workflows");
    std::fs::create_dir_all(&flows).expect("workflows dir");
    write(
        &flows,
        "good.toml",
        "name = \"good\"\ntools = [\"current_time\"]\n[[nodes]]\nid = \"now\"\nkind = \"tool\"\ntool = \"current_time\"\n",
    );
    write(
        &flows,
        "bad.toml",
        "name = \"bad\"\n\
         [[nodes]]\nid = \"a\"\nkind = \"tool\"\ntool = \"teleport\"\nafter = [\"b\"]\n\
         [[nodes]]\nid = \"b\"\nkind = \"code\"\nafter = [\"a\"]\nscript = \"let x = ;\"\n",
    );
    let config = write(
        dir.path(),
        "gatewayd.toml",
        "[gateway]\ndata_dir = \"data\"\n",
    );
    let out = check_config(dir.path(), &config);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.toml"), "names the file: {err}");
    assert!(err.contains("cycle"), "names the cycle: {err}");
    assert!(err.contains("teleport"), "names the unknown tool: {err}");
    assert!(err.contains("`b`"), "names the node with bad rhai: {err}");
    assert!(
        !err.contains("good.toml"),
        "the good file has no error: {err}"
    );
}

#[test]
fn check_config_refuses_a_workflow_node_calling_an_undeclared_tool() {
    let dir = tempdir();
    let flows = dir.path().join("workflows");
    std::fs::create_dir_all(&flows).expect("workflows dir");
    write(
        &flows,
        "sneaky.toml",
        "name = \"sneaky\"\ntools = [\"http_get\"]\n\
         [[nodes]]\nid = \"fetch\"\nkind = \"tool\"\ntool = \"http_get\"\nargs = { url = \"https://example.com/\" }\n\
         [[nodes]]\nid = \"tell\"\nkind = \"tool\"\ntool = \"send_message\"\nafter = [\"fetch\"]\n\
         args = { text = \"hi\", user_id = 1 }\n",
    );
    let config = write(
        dir.path(),
        "gatewayd.toml",
        "[gateway]\ndata_dir = \"data\"\n",
    );
    let out = check_config(dir.path(), &config);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "node `tell`, field `tool`: tool `send_message` is not declared by this workflow; \
             add it to the top-level list: tools = [\"http_get\", \"send_message\"]"
        ),
        "names the node, the tool and the fix: {err}"
    );
    assert!(!err.contains("`fetch`"), "the declared tool is fine: {err}");
}

/// The error line for `path` in a refused check, or a panic listing them all.
fn error_line<'a>(err: &'a str, path: &str) -> &'a str {
    err.lines()
        .filter(|l| l.starts_with("  "))
        .find(|l| {
            l.trim_start()
                .strip_prefix(path)
                .is_some_and(|rest| rest.starts_with([' ', ':']))
        })
        .unwrap_or_else(|| panic!("no error line for {path}:\n{err}"))
}

#[test]
fn an_unknown_key_a_bad_duration_and_a_bad_provider_are_three_errors_in_one_run() {
    let dir = tempdir();
    let text = "[gateway]\nbogus = 1\nidle_timeout = \"abc\"\n\n[agent]\nprovider = \"foo\"\n";
    let config = write(dir.path(), "three.toml", text);
    let out = check_config(dir.path(), &config);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{} has 3 error(s):", config.display())),
        "three errors:\n{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("  ")).count(),
        3,
        "{err}"
    );
    let bogus = error_line(&err, "gateway.bogus");
    assert!(
        bogus.contains("(line 2)") && bogus.contains("unknown field"),
        "{bogus}"
    );
    let idle = error_line(&err, "gateway.idle_timeout");
    assert!(
        idle.contains("(line 3)") && idle.contains("`abc`"),
        "{idle}"
    );
    let provider = error_line(&err, "agent.provider");
    assert!(
        provider.contains("(line 6)") && provider.contains("foo"),
        "{provider}"
    );
}

#[test]
fn a_negative_duration_says_what_a_duration_looks_like() {
    let dir = tempdir();
    let config = write(dir.path(), "neg.toml", "[agent]\ntimeout = -5\n");
    let out = check_config(dir.path(), &config);
    assert_single_error(
        &out,
        &config,
        &[
            "agent.timeout (line 2)",
            "expected a duration such as \"250ms\", \"30s\", \"5m\", \"2h\" or a whole number of seconds",
        ],
    );
    assert!(!stderr(&out).contains("untagged"), "{}", stderr(&out));
}

#[test]
fn values_that_used_to_panic_the_daemon_are_refused_with_their_key() {
    let dir = tempdir();
    for (text, path) in [
        (
            "[rate_limits.http]\nper_second = 1e-12\n",
            "rate_limits.http.per_second (line 2)",
        ),
        (
            "[rate_limits.http]\nper_chat_per_second = 1e-300\n",
            "rate_limits.http.per_chat_per_second (line 2)",
        ),
        (
            "[agent]\nmax_concurrent = 2305843009213693952\n",
            "agent.max_concurrent (line 2)",
        ),
        (
            "[gateway]\nmailbox_capacity = 2305843009213693952\n",
            "gateway.mailbox_capacity (line 2)",
        ),
    ] {
        let config = write(dir.path(), "panic.toml", text);
        let out = check_config(dir.path(), &config);
        assert_single_error(&out, &config, &[path, "must be from"]);
    }
}

#[test]
fn every_url_key_refuses_what_is_not_an_http_url() {
    let dir = tempdir();
    let telegram = "[channels.telegram]\nenabled = true\ntoken_env = \"PATH\"\n";
    let webhook = "[channels.telegram]\nenabled = true\ntoken_env = \"PATH\"\nmode = \"webhook\"\nwebhook_secret_env = \"PATH\"\n";
    for (key, prefix) in [
        ("agent.base_url", "[agent]\nprovider = \"openai\"\n"),
        ("channels.telegram.api_url", telegram),
        (
            "channels.discord.api_url",
            "[channels.discord]\nenabled = true\ntoken_env = \"PATH\"\n",
        ),
        (
            "channels.http.callback_url",
            "[channels.http]\nenabled = true\n",
        ),
        ("channels.telegram.webhook_url", webhook),
    ] {
        let leaf = key.rsplit('.').next().expect("leaf");
        for value in ["ftp://x", "not a url", "", "http://"] {
            let text = format!("{prefix}{leaf} = {value:?}\n");
            let config = write(dir.path(), "url.toml", &text);
            let out = check_config(dir.path(), &config);
            assert_single_error(&out, &config, &[&format!("{key} (line ")]);
        }
        let text = format!("{prefix}{leaf} = \"https://example.com\"\n");
        let config = write(dir.path(), "url.toml", &text);
        let out = check_config(dir.path(), &config);
        assert!(out.status.success(), "{text}\n{}", stderr(&out));
    }
    // Webhook mode without a webhook_url would sit in `starting` for ever.
    let config = write(dir.path(), "no-webhook.toml", webhook);
    let out = check_config(dir.path(), &config);
    assert_single_error(
        &out,
        &config,
        &["channels.telegram.webhook_url", "required"],
    );
}
