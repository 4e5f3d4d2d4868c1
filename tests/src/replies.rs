//! Readers of the gateway commands' replies, as the end-to-end tests parse them: the user id,
//! linked addresses and conversation of a `/whoami` reply, and the one-time code of a `/link`
//! reply (checked against its documented wording). Each panics with the reply it could not
//! read, so a changed wording fails loudly.

/// The user id of a `/whoami` reply (`You are user N.\n…`).
pub fn whoami_user(whoami: &str) -> u64 {
    whoami
        .strip_prefix("You are user ")
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a /whoami reply: {whoami:?}"))
}

/// The addresses of a `/whoami` reply's `Linked addresses:` line, sorted.
pub fn whoami_addresses(whoami: &str) -> Vec<String> {
    let line = whoami
        .lines()
        .find_map(|l| l.strip_prefix("Linked addresses: "))
        .unwrap_or_else(|| panic!("no `Linked addresses:` line in {whoami:?}"));
    let mut out: Vec<String> = line.split(", ").map(str::to_owned).collect();
    out.sort();
    out
}

/// The `This conversation:` line of a `/whoami` reply (`user:N` or `group:<channel>:<chat>`).
pub fn whoami_conversation(whoami: &str) -> String {
    whoami
        .lines()
        .find_map(|l| l.strip_prefix("This conversation: "))
        .unwrap_or_else(|| panic!("no `This conversation:` line in {whoami:?}"))
        .to_owned()
}

/// The code of a `/link` reply: 8 characters of A-Z2-9, in the documented sentence.
pub fn link_code(reply: &str) -> String {
    let code: String = reply
        .strip_prefix("Your link code is ")
        .unwrap_or_else(|| panic!("not a link-code reply: {reply:?}"))
        .chars()
        .take(8)
        .collect();
    assert_eq!(code.len(), 8, "{reply:?}");
    assert!(
        code.chars()
            .all(|c| c.is_ascii_uppercase() || ('2'..='9').contains(&c)),
        "code is 8 characters of A-Z2-9: {code:?}"
    );
    assert_eq!(
        reply,
        format!(
            "Your link code is {code}. Send /link {code} from your other channel within 10 minutes. It works once."
        )
    );
    code
}
