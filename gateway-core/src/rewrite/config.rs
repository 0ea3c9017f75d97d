//! Rewrite rules as written in the gateway config (`rewrites:`), before they
//! are compiled.

use serde::Deserialize;
use serde_json::Value;

/// One rewrite rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    pub name: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub tools: Vec<String>,
    pub when: Option<String>,
    pub alias: Option<AliasConfig>,
    #[serde(default)]
    pub set: Vec<SetConfig>,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub clamp: Vec<ClampConfig>,
    pub validate: Option<ValidateConfig>,
    #[serde(default)]
    pub filter_tools: bool,
    #[serde(default)]
    pub redact: Vec<RedactConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasConfig {
    /// The name clients call.
    pub from: String,
    /// The backend's tool.
    pub to: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    pub pointer: String,
    /// A literal value...
    pub value: Option<Value>,
    /// ...or a CEL expression whose result is set.
    pub expr: Option<String>,
    /// What happens when the value cannot be computed (a claim the token lacks,
    /// an expression or a rule condition that fails): the client's value at the
    /// pointer never survives either way.
    #[serde(default)]
    pub on_missing: OnMissing,
}

/// What a `set` does when its value cannot be computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    /// Refuse the call (JSON-RPC -32001): the backend relies on the value.
    #[default]
    Deny,
    /// Remove the pointer and forward the call without it.
    Remove,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClampConfig {
    pub pointer: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// Validate `params.arguments` against this schema...
    pub schema: Option<Value>,
    /// ...or against the `inputSchema` the backend advertised for the tool.
    #[serde(default)]
    pub from_tools_list: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// Replace every match in every string of the result...
    pub regex: Option<String>,
    /// ...or the value at this pointer.
    pub pointer: Option<String>,
    #[serde(default = "default_replacement")]
    pub replacement: String,
}

pub(super) fn default_replacement() -> String {
    "[redacted]".to_owned()
}
