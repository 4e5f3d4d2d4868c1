//! Gateway commands, handled before the agent: `/help`, `/whoami`, `/link [CODE]`, `/unlink`,
//! `/history [n]`, `/reset`.
//!
//! A message is a command when its first word starts with `/` and names one of these; any other
//! `/word` gets a reply pointing at `/help` rather than reaching the agent. Commands write no
//! conversation entries (except the `/reset` marker), so they never become agent context.
//!
//! Arguments are split like a shell's words ([`split_args`]): `"double"` and `'single'` quotes
//! group words (`ticket="printer on fire"`), a backslash escapes `"` and `\` inside double
//! quotes, quoted and unquoted parts next to each other make one word, and the curly quotes
//! phones type (`“…”`, `‘…’`) count as quotes. An unclosed quote is an error, never a guess.
//! [`quote`] is the inverse: it writes a value so that [`split_args`] reads it back unchanged.

use std::sync::Arc;

use super::router::Router;
use super::worker::{Job, Outcome, SessionState};
use crate::identity::{CODE_TTL, IdentityError};
use crate::message::{ChatType, SessionKey, now_ms};
use crate::store::{Role, TranscriptEntry};

/// Most turns `/history` shows.
pub const MAX_HISTORY: usize = 100;
/// Turns `/history` shows without an argument.
pub const DEFAULT_HISTORY: usize = 10;

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/help`.
    Help,
    /// `/whoami`.
    Whoami,
    /// `/link` (issue a code) or `/link CODE` (redeem one).
    Link(Option<String>),
    /// `/unlink`.
    Unlink,
    /// `/history [n]`.
    History(usize),
    /// `/reset`.
    Reset,
    /// `/run <workflow> key=value…`.
    Run(String, Vec<(String, String)>),
    /// Anything else that looks like a command, with the reason it is not one.
    Invalid(String),
}

const HELP: &str = "Commands:
/help - this list
/whoami - your user id and linked addresses
/link - get a one-time code to link another channel to you
/link CODE - link this channel using a code from your other channel
/unlink - split this address off into a user of its own
/history [n] - the last n turns of this conversation (default 10)
/reset - start a fresh conversation (history is kept)
/run WORKFLOW key=value ... - run a workflow; its result comes back here";

/// Why arguments could not be split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// A quote was opened and never closed.
    #[error(
        "the {kind} quote opened at character {at} is not closed; close it, or write {kind} quotes inside the other kind"
    )]
    Unclosed {
        /// `double` or `single`.
        kind: &'static str,
        /// Its position, counting characters from 1.
        at: usize,
    },
}

/// Splits command arguments into words, shell-like: whitespace separates words outside quotes;
/// `"…"` keeps everything but `\"` and `\\` (a backslash before anything else stays);
/// `'…'` keeps everything; a backslash outside quotes is an ordinary character. `“…”` and
/// `‘…’` work as `"…"` and `'…'`.
pub fn split_args(text: &str) -> Result<Vec<String>, ArgError> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Whether a word has begun (`""` is an empty word, not none).
    let mut started = false;
    let mut chars = text.chars().enumerate().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            '"' | '“' | '”' => {
                started = true;
                loop {
                    match chars.next() {
                        None => {
                            return Err(ArgError::Unclosed {
                                kind: "double",
                                at: at + 1,
                            });
                        }
                        Some((_, '"' | '”' | '“')) => break,
                        Some((_, '\\')) => match chars.peek() {
                            Some(&(_, next @ ('"' | '\\'))) => {
                                word.push(next);
                                chars.next();
                            }
                            _ => word.push('\\'),
                        },
                        Some((_, other)) => word.push(other),
                    }
                }
            }
            '\'' | '‘' => {
                started = true;
                loop {
                    match chars.next() {
                        None => {
                            return Err(ArgError::Unclosed {
                                kind: "single",
                                at: at + 1,
                            });
                        }
                        Some((_, '\'' | '’')) => break,
                        Some((_, other)) => word.push(other),
                    }
                }
            }
            other => {
                started = true;
                word.push(other);
            }
        }
    }
    if started {
        words.push(word);
    }
    Ok(words)
}

/// Writes `value` as one word that [`split_args`] reads back as `value`: as it is when that is
/// safe, else in double quotes with `"` and `\` escaped.
pub fn quote(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '“' | '”' | '‘' | '’'));
    if plain {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            // Curly quotes would close the word; a single-quoted part keeps them.
            '“' | '”' => {
                out.push_str("\"'");
                out.push(c);
                out.push_str("'\"");
            }
            other => out.push(other),
        }
    }
    out.push('"');
    out
}

/// Parses `text` as a command; `None` if it is an ordinary message.
pub fn parse(text: &str) -> Option<Command> {
    let text = text.trim();
    let rest = text.strip_prefix('/')?;
    let (name, args_text) = match rest.find(char::is_whitespace) {
        Some(end) => (&rest[..end], &rest[end..]),
        None => (rest, ""),
    };
    // Telegram-style `/cmd@botname`.
    let name = name.split('@').next().unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    let args = match split_args(args_text) {
        Ok(args) => args,
        Err(ArgError::Unclosed { kind, at }) => {
            // Counted from the start of the message, as the user sees it.
            let before = text.chars().count() - args_text.chars().count();
            let e = ArgError::Unclosed {
                kind,
                at: at + before,
            };
            return Some(Command::Invalid(format!("/{name}: {e}")));
        }
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let no_args = |cmd: Command| {
        if args.is_empty() {
            cmd
        } else {
            Command::Invalid(format!("/{name} takes no arguments"))
        }
    };
    Some(match name.as_str() {
        "help" | "start" => Command::Help,
        "whoami" => no_args(Command::Whoami),
        "unlink" => no_args(Command::Unlink),
        "reset" => no_args(Command::Reset),
        "link" => match args.as_slice() {
            [] => Command::Link(None),
            [code] => Command::Link(Some((*code).to_owned())),
            _ => Command::Invalid("usage: /link or /link CODE".to_owned()),
        },
        "history" => match args.as_slice() {
            [] => Command::History(DEFAULT_HISTORY),
            [n] => match n.parse::<usize>() {
                Ok(n) if (1..=MAX_HISTORY).contains(&n) => Command::History(n),
                _ => Command::Invalid(format!(
                    "usage: /history [n], with n from 1 to {MAX_HISTORY}"
                )),
            },
            _ => Command::Invalid(format!(
                "usage: /history [n], with n from 1 to {MAX_HISTORY}"
            )),
        },
        "run" => match args.split_first() {
            None => Command::Invalid("usage: /run WORKFLOW key=value ...".to_owned()),
            Some((name, rest)) => {
                let mut pairs = Vec::new();
                for arg in rest {
                    match arg.split_once('=') {
                        Some((k, v)) if !k.is_empty() => pairs.push((k.to_owned(), v.to_owned())),
                        _ => {
                            return Some(Command::Invalid(format!(
                                "`{arg}` is not key=value; usage: /run WORKFLOW key=value ..."
                            )));
                        }
                    }
                }
                Command::Run((*name).to_owned(), pairs)
            }
        },
        "" => return None,
        other => Command::Invalid(format!("unknown command /{other}; send /help for the list")),
    })
}

fn reply(text: impl Into<String>) -> Outcome {
    Outcome {
        entries: Vec::new(),
        reply: text.into(),
        reset: false,
        usage: None,
        silent: false,
    }
}

/// Runs a command for the message in `job` and returns what to commit.
pub async fn execute(
    cmd: Command,
    router: &Arc<Router>,
    state: &mut SessionState,
    job: &Job,
) -> Outcome {
    let ctx = router.context();
    let address = job.msg.address();
    let direct = job.msg.chat_type == ChatType::Direct;
    match cmd {
        Command::Help => reply(HELP),
        Command::Invalid(why) => reply(why),
        Command::Whoami => match ctx.identity.user(job.user).await {
            Ok(user) => {
                let addresses: Vec<String> = user.addresses.iter().map(ToString::to_string).collect();
                let mut text = format!(
                    "You are user {}.\nLinked addresses: {}\nThis conversation: {}",
                    user.id,
                    addresses.join(", "),
                    state.key
                );
                if !direct {
                    text.push_str(" (a group chat has its own session)");
                }
                reply(text)
            }
            Err(e) => reply(format!("Cannot look you up right now: {e}")),
        },
        Command::Link(_) | Command::Unlink if !direct => {
            reply("Linking works in a direct chat only; send it to me privately.")
        }
        Command::Link(None) => match ctx.identity.issue_code(job.user).await {
            Ok(code) => reply(format!(
                "Your link code is {code}. Send /link {code} from your other channel within {} minutes. It works once.",
                CODE_TTL.as_secs() / 60
            )),
            Err(e) => reply(format!("Cannot make a link code right now: {e}")),
        },
        Command::Link(Some(code)) => match ctx.identity.redeem(&address, &code).await {
            Ok(linked) => {
                router.invalidate(&SessionKey::User(linked.user));
                router.invalidate(&SessionKey::User(linked.merged));
                state.window = None;
                reply(format!(
                    "Linked. {address} now belongs to user {}, and your conversations are merged.",
                    linked.user
                ))
            }
            Err(IdentityError::Store(e)) => reply(format!("Cannot link right now: {e}")),
            Err(e) => reply(format!("Not linked: {e}.")),
        },
        Command::Unlink => match ctx.identity.unlink(&address).await {
            Ok((previous, new_user)) => {
                router.invalidate(&SessionKey::User(previous));
                reply(format!(
                    "Unlinked. {address} is now user {new_user} on its own; the shared history stays with user {previous}."
                ))
            }
            Err(e) => reply(format!("Not unlinked: {e}.")),
        },
        Command::History(n) => match ctx.store.history(&state.key, n.saturating_mul(2)).await {
            Ok(entries) => {
                let lines: Vec<String> = entries
                    .iter()
                    .map(|e| {
                        let who = match e.role {
                            Role::User => "you",
                            Role::Assistant => "agent",
                            Role::Notice | Role::Reset => "gateway",
                        };
                        match e.channel {
                            Some(c) => format!("[{c}] {who}: {}", e.text),
                            None => format!("{who}: {}", e.text),
                        }
                    })
                    .collect();
                if lines.is_empty() {
                    reply("No history in this conversation yet.")
                } else {
                    reply(format!("History (oldest first):\n{}", lines.join("\n")))
                }
            }
            Err(e) => reply(format!("Cannot read the history right now: {e}")),
        },
        Command::Run(name, pairs) => {
            let Some(engine) = &ctx.workflows else {
                return reply("Workflows are not enabled on this gateway.");
            };
            let Some(workflow) = engine.get(&name) else {
                let names: Vec<String> = engine.list().iter().map(|w| w.name.clone()).collect();
                return reply(format!("No workflow `{name}`. Workflows: {}", names.join(", ")));
            };
            let inputs = typed_inputs(&workflow, pairs);
            let origin = crate::store::RunOrigin {
                channel: job.msg.channel,
                chat_id: job.msg.chat_id.clone(),
                user: Some(job.user),
                trigger: "chat".to_owned(),
            };
            match engine.start(&name, inputs, Some(origin)).await {
                Ok(run) => reply(format!("Started workflow {name} (run {run}); its result will come here.")),
                Err(e) => reply(format!("Not started: {e}")),
            }
        }
        Command::Reset => Outcome {
            entries: vec![TranscriptEntry {
                role: Role::Reset,
                text: "reset".to_owned(),
                at_ms: now_ms().max(job.msg.received_at_ms),
                channel: Some(job.msg.channel),
            }],
            reply: "Started a fresh conversation. The earlier history is kept but no longer sent to the agent.".to_owned(),
            reset: true,
            usage: None,
            silent: false,
        },
    }
}

/// `key=value` pairs as typed inputs: numbers and booleans for inputs declared so, lists and
/// objects parsed as JSON, everything else a string (the engine checks the types).
fn typed_inputs(
    workflow: &crate::workflow::model::Workflow,
    pairs: Vec<(String, String)>,
) -> serde_json::Value {
    use crate::workflow::model::InputType;
    let mut map = serde_json::Map::new();
    for (key, raw) in pairs {
        let kind = workflow.inputs.get(&key).map(|spec| spec.kind);
        let value = match kind {
            Some(InputType::Number | InputType::Boolean | InputType::List | InputType::Object) => {
                serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw))
            }
            _ => serde_json::Value::String(raw),
        };
        map.insert(key, value);
    }
    serde_json::Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Option<Command>) {
        assert_eq!(parse(text), expected, "{text}");
    }

    #[test]
    fn commands_parse() {
        check("hello", None);
        check("/", None);
        check("/help", Some(Command::Help));
        check("  /WHOAMI ", Some(Command::Whoami));
        check("/link", Some(Command::Link(None)));
        check("/link abc123", Some(Command::Link(Some("abc123".into()))));
        check("/history", Some(Command::History(DEFAULT_HISTORY)));
        check("/history 3", Some(Command::History(3)));
        check("/reset@mybot", Some(Command::Reset));
        check(
            "/run triage ticket=help priority=2",
            Some(Command::Run(
                "triage".into(),
                vec![
                    ("ticket".into(), "help".into()),
                    ("priority".into(), "2".into()),
                ],
            )),
        );
        assert!(matches!(parse("/run"), Some(Command::Invalid(_))));
        assert!(matches!(
            parse("/run triage oops"),
            Some(Command::Invalid(_))
        ));
        assert!(matches!(parse("/history 0"), Some(Command::Invalid(_))));
        assert!(matches!(parse("/history x"), Some(Command::Invalid(_))));
        assert!(matches!(parse("/reset now"), Some(Command::Invalid(_))));
        assert!(matches!(parse("/frobnicate"), Some(Command::Invalid(m)) if m.contains("/help")));
    }

    #[test]
    fn arguments_split_like_a_shell() {
        let ok = |text: &str, words: &[&str]| {
            assert_eq!(
                split_args(text),
                Ok(words.iter().map(|w| (*w).to_owned()).collect()),
                "{text}"
            );
        };
        ok("", &[]);
        ok("  a  b\tc ", &["a", "b", "c"]);
        ok(r#"ticket="printer on fire""#, &["ticket=printer on fire"]);
        ok("ticket='printer on fire'", &["ticket=printer on fire"]);
        ok(r#""ticket"=v"#, &["ticket=v"]);
        ok(r#"k="say \"hi\" \\ now""#, &[r#"k=say "hi" \ now"#]);
        ok(r#"path="C:\dir\n""#, &[r"path=C:\dir\n"]);
        ok(r"path=C:\dir", &[r"path=C:\dir"]);
        ok(r#"k='it"s' j="it's""#, &[r#"k=it"s"#, "j=it's"]);
        ok(r#"k="" j=''"#, &["k=", "j="]);
        ok(r#""" ''"#, &["", ""]);
        ok("a\"b c\"d", &["ab cd"]);
        ok(
            "ticket=“printer on fire” who=‘Ana B’ x=don’t",
            &["ticket=printer on fire", "who=Ana B", "x=don’t"],
        );
        assert_eq!(
            split_args(r#"ticket="printer on fire"#),
            Err(ArgError::Unclosed {
                kind: "double",
                at: 8
            })
        );
        assert_eq!(
            split_args("a 'b"),
            Err(ArgError::Unclosed {
                kind: "single",
                at: 3
            })
        );
    }

    #[test]
    fn run_takes_quoted_values_and_says_what_is_wrong() {
        check(
            r#"/run support_triage ticket="printer on fire""#,
            Some(Command::Run(
                "support_triage".into(),
                vec![("ticket".into(), "printer on fire".into())],
            )),
        );
        check(
            "/run support_triage ticket='printer on fire' customer=Ana",
            Some(Command::Run(
                "support_triage".into(),
                vec![
                    ("ticket".into(), "printer on fire".into()),
                    ("customer".into(), "Ana".into()),
                ],
            )),
        );
        check(
            r#"/run t ticket="printer on fire"#,
            Some(Command::Invalid(
                "/run: the double quote opened at character 15 is not closed; close it, or write double quotes inside the other kind".into(),
            )),
        );
        check(
            "/run t printer on fire",
            Some(Command::Invalid(
                "`printer` is not key=value; usage: /run WORKFLOW key=value ...".into(),
            )),
        );
        check(
            "/link 'abc 123'",
            Some(Command::Link(Some("abc 123".into()))),
        );
    }

    /// Every `/run …` the README shows in backquotes, as printed.
    fn readme_runs() -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).expect("README.md");
        readme
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|span| span.starts_with("/run ") && !span.contains("WORKFLOW"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_readme_run_examples_parse() {
        let runs = readme_runs();
        assert!(!runs.is_empty(), "README.md shows no /run example");
        for text in runs {
            match parse(&text) {
                Some(Command::Run(_, pairs)) => assert!(!pairs.is_empty(), "{text}"),
                other => panic!("{text} parses as {other:?}"),
            }
        }
    }

    mod generated {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            /// Any text, command or not, parses to something without panicking.
            #[test]
            fn prop_command_text_never_panics(text in any::<String>(), args in "[ -~“”‘’\\\\]{0,40}") {
                let _ = parse(&text);
                let _ = parse(&format!("/run wf {args}"));
                let _ = parse(&format!("/{text}"));
                let _ = split_args(&text);
            }

            /// Words written with `quote` and joined by spaces split back into the same words.
            #[test]
            fn prop_quoted_words_round_trip(words in proptest::collection::vec(any::<String>(), 0..8)) {
                let text = words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
                prop_assert_eq!(split_args(&text), Ok(words));
            }

            /// `/run` with key/values written with `quote` gives back the same pairs.
            #[test]
            fn prop_run_pairs_round_trip(
                pairs in proptest::collection::btree_map("[a-z_][a-z0-9_]{0,12}", any::<String>(), 0..6)
            ) {
                let mut text = String::from("/run wf");
                for (k, v) in &pairs {
                    text.push_str(&format!(" {k}={}", quote(v)));
                }
                let expected: Vec<(String, String)> = pairs.into_iter().collect();
                prop_assert_eq!(parse(&text), Some(Command::Run("wf".into(), expected)));
            }
        }
    }
}
