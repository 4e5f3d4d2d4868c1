//! DAG workflows: the definition layer.
//!
//! A workflow is a TOML file in `config/workflows/`: typed `inputs` and `[[nodes]]` that form a
//! directed acyclic graph through each node's `after` list. [`model`] holds the file's serde
//! types and graph helpers, [`template`] the `{{…}}` templates used in prompts, arguments and
//! messages, [`script`] the sandboxed rhai engine for `code`, `condition` and `foreach` steps,
//! and [`validate`] loads a directory and reports every problem in every file at once. A
//! workflow that passed validation has no cycle, names only known tools, and every template or
//! script reference it makes points at an input it declares or a node that runs before it.
//! Execution (the `run` module) relies on those invariants instead of checking them again.

pub mod model;
pub mod run;
pub mod script;
pub mod template;
pub mod validate;
