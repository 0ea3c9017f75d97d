//! The `tool_pins` section of the gateway config, as written.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The `tool_pins` section of the gateway config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolPinsConfig {
    /// Pins learned on first use and quarantines, shared by both sidecars and
    /// the replicas on a host (relative to the config file).
    pub state_file: PathBuf,
    /// The session era's pool (`mcp_backends`).
    #[serde(default)]
    pub session: Option<PoolPinsConfig>,
    /// The stateless era's pool (`mcp_stateless_backends`).
    #[serde(default)]
    pub stateless: Option<PoolPinsConfig>,
    #[serde(default)]
    pub scan: ScanConfig,
}

/// How one pool's tools are pinned.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolPinsConfig {
    pub mode: PinMode,
    /// Tool name to fingerprint (`sha256:…`), as `cargo xtask pin-tools` prints.
    #[serde(default)]
    pub pins: BTreeMap<String, String>,
    /// More pins, from a YAML file of the same shape (relative to the config).
    #[serde(default)]
    pub pins_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinMode {
    Enforce,
    TrustOnFirstUse,
    Observe,
}

/// What a scan finding does to its tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingAction {
    /// Logged and counted.
    Warn,
    /// Also quarantines the tool (in `enforce` and `trust_on_first_use`).
    Block,
}

/// The checks on descriptions; each may be left out (`null`) to switch it off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanConfig {
    /// Invisible, zero-width or bidirectional-control characters.
    #[serde(default = "block")]
    pub invisible_unicode: Option<FindingAction>,
    /// Text addressed to the model rather than describing the tool.
    #[serde(default = "default_instructions")]
    pub model_instructions: Option<PhraseCheck>,
    /// URLs whose prefix is not on the allowlist.
    #[serde(default = "default_urls")]
    pub urls: Option<UrlCheck>,
    /// Descriptions longer than this.
    #[serde(default = "default_length")]
    pub description_length: Option<LengthCheck>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhraseCheck {
    pub action: FindingAction,
    /// Matched case-insensitively, whitespace runs as one space.
    #[serde(default = "default_phrases")]
    pub phrases: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlCheck {
    pub action: FindingAction,
    /// URL prefixes descriptions may name (`https://docs.example.com/`).
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthCheck {
    pub action: FindingAction,
    pub max_bytes: usize,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            invisible_unicode: block(),
            model_instructions: default_instructions(),
            urls: default_urls(),
            description_length: default_length(),
        }
    }
}

fn block() -> Option<FindingAction> {
    Some(FindingAction::Block)
}

fn default_instructions() -> Option<PhraseCheck> {
    Some(PhraseCheck {
        action: FindingAction::Block,
        phrases: default_phrases(),
    })
}

fn default_phrases() -> Vec<String> {
    [
        "ignore previous instructions",
        "ignore all previous instructions",
        "ignore the above",
        "disregard previous instructions",
        "do not tell the user",
        "don't tell the user",
        "without telling the user",
        "do not mention",
        "<important>",
        "system prompt",
        "you must always",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn default_urls() -> Option<UrlCheck> {
    Some(UrlCheck {
        action: FindingAction::Warn,
        allow: Vec::new(),
    })
}

fn default_length() -> Option<LengthCheck> {
    Some(LengthCheck {
        action: FindingAction::Warn,
        max_bytes: 2048,
    })
}
