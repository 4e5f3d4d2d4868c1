//! The popups over the tabs — help, a confirmation, a small form — and a form's own keys.
//!
//! **Invariant:** at most one popup is open; while it is, it takes every key.

use ratatui::crossterm::event::KeyCode;

use super::action::{Action, LinkOther};
use crate::model::Address;

/// A popup over the tabs; at most one at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modal {
    Help,
    /// "Evict user:3? y/n".
    Confirm(Action),
    /// A small form (link, run workflow).
    Form(Form),
}

/// What a form is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormKind {
    /// The user that stays, and a user id to merge into it or an address to move to it.
    Link,
    /// A workflow name and `k=v` inputs.
    RunWorkflow,
}

/// A form: labelled text fields, one focused; Enter submits, Esc cancels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    pub kind: FormKind,
    pub fields: Vec<(&'static str, String)>,
    pub focus: usize,
    /// Why the last submit was refused.
    pub error: Option<String>,
}

impl Form {
    /// A form of `kind` whose first field starts as `first`.
    pub fn new(kind: FormKind, first: String) -> Self {
        let labels: &[&'static str] = match kind {
            FormKind::Link => &["keep user id", "user or address"],
            FormKind::RunWorkflow => &["workflow", "inputs k=v …"],
        };
        let mut fields: Vec<(&'static str, String)> =
            labels.iter().map(|l| (*l, String::new())).collect();
        if let Some(f) = fields.first_mut() {
            f.1 = first;
        }
        Self {
            kind,
            fields,
            focus: 0,
            error: None,
        }
    }

    /// The action the form describes, or why it is not valid.
    pub fn action(&self) -> Result<Action, String> {
        let field = |i: usize| self.fields.get(i).map_or("", |f| f.1.trim());
        match self.kind {
            FormKind::Link => {
                let id = |i: usize| {
                    field(i)
                        .parse::<i64>()
                        .ok()
                        .filter(|v| *v > 0)
                        .ok_or_else(|| format!("{} must be a user id", self.fields[i].0))
                };
                let user_id = id(0)?;
                let other = field(1);
                // An address always has a colon (`http:alice`); a user id never does.
                let other =
                    if other.contains(':') {
                        LinkOther::Address(other.parse::<Address>()?)
                    } else {
                        let merge = other.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(
                            || {
                                "give a user id or an address CHANNEL:SENDER_ID, e.g. http:alice"
                                    .to_owned()
                            },
                        )?;
                        if merge == user_id {
                            return Err("the two user ids are the same".to_owned());
                        }
                        LinkOther::User(merge)
                    };
                Ok(Action::LinkIdentities { user_id, other })
            }
            FormKind::RunWorkflow => {
                let name = field(0);
                if name.is_empty() {
                    return Err("the workflow name is empty".to_owned());
                }
                let inputs = field(1)
                    .split_whitespace()
                    .map(crate::workflows::parse_input)
                    .collect::<Result<Vec<_>, _>>()?;
                let inputs_json = crate::workflows::inputs_object(inputs)
                    .map_err(|e| e.to_string())?
                    .to_string();
                Ok(Action::RunWorkflow {
                    name: name.to_owned(),
                    inputs_json,
                })
            }
        }
    }
}

/// What a key in a form leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormInput {
    /// The form stays open (edited, or refused with its error set).
    Open,
    /// Esc: the form closes, nothing is sent.
    Cancel,
    /// Enter on a valid form: propose this action.
    Submit(Action),
}

impl Form {
    /// Applies one key to the form.
    pub fn update_input(&mut self, code: KeyCode) -> FormInput {
        let n = self.fields.len();
        match code {
            KeyCode::Esc => return FormInput::Cancel,
            KeyCode::Tab | KeyCode::Down => self.focus = (self.focus + 1) % n,
            KeyCode::BackTab | KeyCode::Up => self.focus = (self.focus + n - 1) % n,
            KeyCode::Backspace => {
                if let Some(f) = self.fields.get_mut(self.focus) {
                    f.1.pop();
                }
            }
            KeyCode::Char(c) => {
                if let Some(f) = self.fields.get_mut(self.focus) {
                    f.1.push(c);
                }
            }
            KeyCode::Enter => match self.action() {
                Ok(action) => return FormInput::Submit(action),
                Err(e) => self.error = Some(e),
            },
            _ => {}
        }
        FormInput::Open
    }
}
