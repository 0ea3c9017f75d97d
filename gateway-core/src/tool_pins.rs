//! Tool definitions pinned: a backend cannot silently change what a tool says
//! ("rug pull") or hide instructions for the model in it (tool poisoning).
//!
//! Each tool a backend lists has a fingerprint: SHA-256 of its canonical
//! definition (`name`, `title`, `description`, `inputSchema`, `outputSchema`,
//! `annotations`; sorted keys, no insignificant whitespace, one spelling per
//! number). A pool of backends (the session era's, the stateless era's) has a
//! mode:
//!
//! - `enforce`: the config's pins are the truth. A listed tool whose fingerprint
//!   differs from its pin, or that has none, is quarantined: removed from
//!   `tools/list`, and calls to it refused.
//! - `trust_on_first_use`: the first fingerprint seen is the pin, kept in the
//!   state file; drift is then treated as in `enforce`.
//! - `observe`: drift is logged and counted, nothing removed or refused.
//!
//! A scan of descriptions (and every `description` inside the schemas) finds
//! invisible or bidirectional characters, text addressed to the model, URLs
//! outside an allowlist and over-long descriptions; a finding warns or blocks
//! (quarantines) the tool.
//!
//! A quarantine holds for the whole pool (its backends serve one server's tools:
//! one that drifts speaks for all, and a clean one listing the pinned definition
//! again must not lift what a rogue one tripped) and stays until an operator
//! lifts it: deletes the tool from the state file's `quarantined` (and from its
//! `pins`, to trust the new definition at its next listing), or pins the new
//! fingerprint in `enforce`.
//!
//! Pins learned on first use and quarantines live in one small JSON state file,
//! shared by both sidecars and every replica on the host: ext-proc judges each
//! listing and writes what it learns (under a file lock, replaced atomically),
//! ext-authz judges each call by what the file says (re-read when it changes, a
//! `stat` per call). The file outlives restarts.
//!
//! Here: fingerprints, quarantines and the judgement of listings and calls
//! ([`ToolPins`], one impl that reads best whole). The config section as written
//! is in `tool_pins/config.rs`, the description scan in `scan.rs`, the shared
//! state file in `state.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::{canonical_json, sha256_hex};
use crate::metrics::Labels;
use crate::protocol::Era;

mod config;
mod scan;
mod state;

pub use config::{
    FindingAction, LengthCheck, PhraseCheck, PinMode, PoolPinsConfig, ScanConfig, ToolPinsConfig,
    UrlCheck,
};
pub use scan::{Finding, Scanner};
use state::StateFile;
pub use state::{PinState, PoolState};

/// The fields of a tool definition a fingerprint covers.
pub const FINGERPRINTED_FIELDS: [&str; 6] = [
    "name",
    "title",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
];

/// `sha256:` and the hex SHA-256 of the tool's canonical definition.
pub fn fingerprint(tool: &Value) -> String {
    // The covered fields in canonical (UTF-16) order, written without copying
    // the definition.
    let mut fields = FINGERPRINTED_FIELDS;
    fields.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
    let mut text = String::from("{");
    for field in fields {
        let Some(value) = tool.get(field) else {
            continue;
        };
        if text.len() > 1 {
            text.push(',');
        }
        text.push('"');
        text.push_str(field);
        text.push_str("\":");
        canonical_json(value, &mut text);
    }
    text.push('}');
    format!("sha256:{}", sha256_hex(text.as_bytes()))
}

/// Why a tool is quarantined or a call to it refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    /// `drift`, `unpinned` or `scan`.
    pub reason: String,
    /// The fingerprint the backend listed.
    pub fingerprint: String,
    /// The pin it was held against, if any.
    #[serde(default)]
    pub pinned: Option<String>,
    /// The blocking scan findings (`scan`).
    #[serde(default)]
    pub findings: Vec<String>,
    /// Unix seconds.
    pub since: i64,
}

impl Quarantine {
    /// The error a call to the tool gets.
    pub fn message(&self, tool: &str) -> String {
        let scan = if self.findings.is_empty() {
            String::new()
        } else {
            format!(
                "; its description also failed the scan ({})",
                self.findings.join(", ")
            )
        };
        match self.reason.as_str() {
            "drift" => format!(
                "tool `{tool}` is quarantined: its definition changed since it was pinned ({} is now {}){scan}",
                self.pinned.as_deref().unwrap_or("no pin"),
                self.fingerprint
            ),
            "unpinned" => format!(
                "tool `{tool}` is quarantined: it has no pin ({} is unreviewed)",
                self.fingerprint
            ),
            _ => format!(
                "tool `{tool}` is quarantined: its description failed the scan ({})",
                self.findings.join(", ")
            ),
        }
    }
}

/// Why tool pins could not be loaded or kept.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(
        "tool_pins.{pool}.pins.{tool}: `{value}` is not a fingerprint (sha256: and 64 hex digits)"
    )]
    BadPin {
        pool: &'static str,
        tool: String,
        value: String,
    },
}

/// The gateway's tool pins: modes and config pins per pool, the scan, and the
/// shared state file.
pub struct ToolPins {
    pools: [Option<PoolPolicy>; 2],
    scanner: Scanner,
    store: StateFile,
    metrics: PinMetrics,
}

struct PoolPolicy {
    mode: PinMode,
    pins: BTreeMap<String, String>,
}

/// A tool of a listing as judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolJudgement {
    pub tool: String,
    pub fingerprint: String,
    pub findings: Vec<Finding>,
    /// Set when the tool is held back (or, in `observe`, would be).
    pub quarantine: Option<Quarantine>,
}

/// The verdict on a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallVerdict {
    /// Pins do not apply (no mode for the pool, or `observe`).
    Unpinned,
    /// The tool is pinned and not quarantined.
    Pinned { fingerprint: String },
    /// Refused, with the message the caller gets.
    Refused(String),
}

impl ToolPins {
    /// Pins from the config section; relative paths are relative to `config_dir`.
    pub fn new(config: &ToolPinsConfig, config_dir: &Path) -> Result<Self, PinError> {
        let pool = |name: &'static str, pool: &Option<PoolPinsConfig>| {
            let Some(pool) = pool else {
                return Ok(None);
            };
            let mut pins = pool.pins.clone();
            if let Some(file) = &pool.pins_file {
                let path = config_dir.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| PinError::File {
                    path: path.clone(),
                    reason: format!("cannot read: {e}"),
                })?;
                let more: BTreeMap<String, String> =
                    serde_yaml_ng::from_str(&text).map_err(|e| PinError::File {
                        path: path.clone(),
                        reason: format!("not a map of tool names to fingerprints: {e}"),
                    })?;
                pins.extend(more);
            }
            for value in pins.values_mut() {
                // Fingerprints are written in lower case; a pin compares as text.
                *value = value.to_ascii_lowercase();
            }
            for (tool, value) in &pins {
                let hex = value.strip_prefix("sha256:").unwrap_or_default();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(PinError::BadPin {
                        pool: name,
                        tool: tool.clone(),
                        value: value.clone(),
                    });
                }
            }
            Ok(Some(PoolPolicy {
                mode: pool.mode,
                pins,
            }))
        };
        let store = StateFile::open(config_dir.join(&config.state_file))?;
        // A quarantine that cannot be written would hide a tool from listings
        // and still let its calls through: find out now, not then.
        store.update(|_| {}).map_err(|reason| PinError::File {
            path: store.path.clone(),
            reason,
        })?;
        Ok(Self {
            pools: [
                pool("session", &config.session)?,
                pool("stateless", &config.stateless)?,
            ],
            scanner: Scanner::new(config.scan.clone()),
            store,
            metrics: PinMetrics::default(),
        })
    }

    /// The pins the gateway config's `tool_pins` section asks for, if it has one.
    pub fn configured(
        section: Option<&ToolPinsConfig>,
        config_dir: &Path,
    ) -> Result<Option<std::sync::Arc<Self>>, PinError> {
        section
            .map(|pins| Self::new(pins, config_dir).map(std::sync::Arc::new))
            .transpose()
    }

    /// Registers the pins' counters.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mcp_gateway_tool_drift",
            "Tools listed with a fingerprint other than their pin, or with none in enforce mode",
            self.metrics.drift.clone(),
        );
        registry.register(
            "mcp_gateway_tool_scan_findings",
            "Scan findings on listed tools' descriptions, by check and action",
            self.metrics.findings.clone(),
        );
        registry.register(
            "mcp_gateway_tool_calls_refused",
            "Calls refused because their tool is quarantined or unpinned",
            self.metrics.refused.clone(),
        );
    }

    /// Whether the pool of `era` has pins at all.
    pub fn applies(&self, era: Era) -> bool {
        self.pools[index(era)].is_some()
    }

    /// Judges a `tools/list` result's tools (the `tools` array, in place) as
    /// listed at `path`: a quarantined tool is removed (but for `observe`).
    /// Learns first-use pins and records quarantines in the state file, then
    /// filters by the state as written (another replica may have pinned a tool
    /// first). Whether the list changed.
    pub fn judge_listing(&self, era: Era, path: &str, tools: &mut Vec<Value>) -> bool {
        let Some(policy) = &self.pools[index(era)] else {
            return false;
        };
        let pool = pool_name(era);
        let key = state_key(era, path);
        // One read of the state for the whole listing. An unreadable state
        // holds every tool back (a broken file must not lift quarantines).
        let learned = match self.store.current() {
            Ok(state) => state,
            Err(reason) => {
                tracing::error!(
                    reason,
                    "tool pin state unreadable; holding back the whole listing"
                );
                let before = tools.len();
                if policy.mode != PinMode::Observe {
                    tools.clear();
                }
                return before != tools.len();
            }
        };
        let judged: Vec<ToolJudgement> = tools
            .iter()
            .map(|t| self.judge_tool(policy, learned.pools.get(&key), t))
            .collect();
        let learned = self.record(policy, &key, &learned, &judged);
        let state = learned.pools.get(&key);
        let held_by_state = |tool: &str| {
            state
                .and_then(|s| s.quarantined.get(tool))
                .filter(|q| !self.lifted(policy, tool, q))
        };
        for judgement in &judged {
            for finding in &judgement.findings {
                tracing::warn!(
                    target: "security",
                    pool,
                    path,
                    tool = ?judgement.tool,
                    check = finding.check,
                    action = ?finding.action,
                    detail = ?finding.detail,
                    "tool description scan finding"
                );
                self.metrics
                    .findings
                    .get_or_create(&vec![
                        ("pool", pool.to_owned()),
                        ("check", finding.check.to_owned()),
                        (
                            "action",
                            match finding.action {
                                FindingAction::Warn => "warn",
                                FindingAction::Block => "block",
                            }
                            .to_owned(),
                        ),
                    ])
                    .inc();
            }
            let held = judgement
                .quarantine
                .as_ref()
                .or_else(|| held_by_state(&judgement.tool));
            if let Some(quarantine) = held {
                tracing::warn!(
                    target: "security",
                    pool,
                    path,
                    tool = ?judgement.tool,
                    reason = %quarantine.reason,
                    listed = %judgement.fingerprint,
                    pinned = quarantine.pinned.as_deref(),
                    mode = ?policy.mode,
                    "tool definition drifted or failed the scan"
                );
                if quarantine.reason != "scan" {
                    self.metrics
                        .drift
                        .get_or_create(&vec![
                            ("pool", pool.to_owned()),
                            ("reason", quarantine.reason.clone()),
                        ])
                        .inc();
                }
            }
        }
        if policy.mode == PinMode::Observe {
            return false;
        }
        let before = tools.len();
        let mut judged = judged.iter();
        tools.retain(|_| {
            judged
                .next()
                .is_some_and(|j| j.quarantine.is_none() && held_by_state(&j.tool).is_none())
        });
        tools.len() != before
    }

    /// The verdict on a call to `tool` (the backend's name, alias resolved) at
    /// `path`.
    pub fn judge_call(&self, era: Era, path: &str, tool: &str) -> CallVerdict {
        let Some(policy) = &self.pools[index(era)] else {
            return CallVerdict::Unpinned;
        };
        if policy.mode == PinMode::Observe {
            return CallVerdict::Unpinned;
        }
        let refused = |message: String| {
            self.metrics
                .refused
                .get_or_create(&vec![("pool", pool_name(era).to_owned())])
                .inc();
            CallVerdict::Refused(message)
        };
        let state = match self.store.current() {
            Ok(state) => state,
            Err(reason) => {
                tracing::error!(
                    reason,
                    "tool pin state unreadable; refusing calls to pinned tools"
                );
                return refused(format!(
                    "tool `{tool}` cannot be checked against its pin right now; retry later"
                ));
            }
        };
        let pool = state.pools.get(&state_key(era, path));
        if let Some(quarantine) = pool
            .and_then(|p| p.quarantined.get(tool))
            .filter(|q| !self.lifted(policy, tool, q))
        {
            return refused(quarantine.message(tool));
        }
        let pin = match policy.mode {
            PinMode::Enforce => policy.pins.get(tool),
            _ => policy
                .pins
                .get(tool)
                .or_else(|| pool.and_then(|p| p.pins.get(tool))),
        };
        match pin {
            Some(fingerprint) => CallVerdict::Pinned {
                fingerprint: fingerprint.clone(),
            },
            None if policy.mode == PinMode::Enforce => refused(format!(
                "tool `{tool}` has no pin: it is not allowed until reviewed and pinned"
            )),
            None => refused(format!(
                "tool `{tool}` has not been listed through the gateway yet: list the tools first"
            )),
        }
    }

    /// Whether an operator lifted `quarantine` by pinning (in the config) the
    /// very definition it held back.
    fn lifted(&self, policy: &PoolPolicy, tool: &str, quarantine: &Quarantine) -> bool {
        policy.pins.get(tool) == Some(&quarantine.fingerprint)
    }

    /// One tool of a listing: its fingerprint, findings and whether it is held
    /// back, against the pins as they stand.
    fn judge_tool(
        &self,
        policy: &PoolPolicy,
        learned: Option<&PoolState>,
        tool: &Value,
    ) -> ToolJudgement {
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let fingerprint = fingerprint(tool);
        let findings = self.scanner.scan(tool);
        let pin = policy.pins.get(&name).cloned().or_else(|| {
            (policy.mode != PinMode::Enforce)
                .then(|| learned?.pins.get(&name).cloned())
                .flatten()
        });
        let blocking: Vec<String> = findings
            .iter()
            .filter(|f| f.action == FindingAction::Block)
            .map(|f| f.check.to_owned())
            .collect();
        let quarantine = |reason: &str| Quarantine {
            reason: reason.to_owned(),
            fingerprint: fingerprint.clone(),
            pinned: pin.clone(),
            findings: blocking.clone(),
            since: now(),
        };
        // Drift first: a changed tool is a rug pull whatever its new text says.
        let held = match &pin {
            Some(pin) if *pin != fingerprint => Some(quarantine("drift")),
            _ if !blocking.is_empty() => Some(quarantine("scan")),
            None if policy.mode == PinMode::Enforce => Some(quarantine("unpinned")),
            _ if name.is_empty() || name.len() > MAX_NAME_BYTES => Some(quarantine("scan")),
            _ => None,
        };
        ToolJudgement {
            tool: name,
            fingerprint,
            findings,
            quarantine: held,
        }
    }

    /// Writes what a listing taught, under the lock and against the state as
    /// it is then (another writer may have been first): first-use pins, and
    /// quarantines for drift, for a scan that blocks, and for a name listed
    /// twice with two definitions or pinned differently meanwhile. An
    /// `unpinned` tool in `enforce` is held but not written (its pin in the
    /// config is what admits it). Nothing is written when nothing is new. The
    /// state as it stands after.
    fn record(
        &self,
        policy: &PoolPolicy,
        key: &str,
        current: &std::sync::Arc<PinState>,
        judged: &[ToolJudgement],
    ) -> std::sync::Arc<PinState> {
        let learns = policy.mode != PinMode::Enforce;
        let empty = PoolState::default();
        let state = current.pools.get(key).unwrap_or(&empty);
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        let twice = judged.iter().any(|j| {
            seen.insert(&j.tool, &j.fingerprint)
                .is_some_and(|other| other != j.fingerprint)
        });
        let stale = twice
            || judged.iter().any(|j| match &j.quarantine {
                Some(q) => q.reason != "unpinned" && !state.quarantined.contains_key(&j.tool),
                None => {
                    learns
                        && !policy.pins.contains_key(&j.tool)
                        && !state.pins.contains_key(&j.tool)
                }
            });
        if !stale {
            return current.clone();
        }
        let update = self.store.update(|state| {
            let pool = state.pools.entry(key.to_owned()).or_default();
            if pool.pins.len() + pool.quarantined.len() > MAX_TOOLS_PER_POOL {
                tracing::error!(
                    key,
                    "tool pin state full; nothing more recorded for this pool"
                );
                return;
            }
            let mut first: BTreeMap<String, String> = BTreeMap::new();
            for j in judged {
                let drifted = |pinned: &str| Quarantine {
                    reason: "drift".to_owned(),
                    fingerprint: j.fingerprint.clone(),
                    pinned: Some(pinned.to_owned()),
                    findings: Vec::new(),
                    since: now(),
                };
                // The same name twice in one listing, two ways: held.
                if let Some(other) = first.insert(j.tool.clone(), j.fingerprint.clone())
                    && other != j.fingerprint
                {
                    pool.quarantined
                        .entry(j.tool.clone())
                        .or_insert_with(|| drifted(&other));
                    continue;
                }
                match &j.quarantine {
                    Some(q) if q.reason == "unpinned" => {}
                    Some(q) => {
                        // The first quarantine stands (another replica's too).
                        pool.quarantined
                            .entry(j.tool.clone())
                            .or_insert_with(|| q.clone());
                    }
                    None if learns && !policy.pins.contains_key(&j.tool) => {
                        match pool.pins.get(&j.tool) {
                            // Pinned meanwhile, to something else.
                            Some(pin) if *pin != j.fingerprint => {
                                let q = drifted(pin);
                                pool.quarantined.entry(j.tool.clone()).or_insert(q);
                            }
                            Some(_) => {}
                            None => {
                                pool.pins.insert(j.tool.clone(), j.fingerprint.clone());
                            }
                        }
                    }
                    None => {}
                }
            }
        });
        if let Err(error) = update {
            tracing::error!(%error, "cannot record tool pins; the state file is unchanged");
        }
        self.store.current().unwrap_or_else(|_| current.clone())
    }
}

/// Longest tool name kept in the state file; a longer one is held back.
const MAX_NAME_BYTES: usize = 256;
/// Most tools one pool (and path) records: a backend listing ever new names
/// must not grow the state file without end.
const MAX_TOOLS_PER_POOL: usize = 10_000;

/// The state file's key of a pool and the path its tools are listed at: two
/// MCP apps behind one pool may each have a tool of the same name.
fn state_key(era: Era, path: &str) -> String {
    format!("{} {path}", pool_name(era))
}

fn index(era: Era) -> usize {
    match era {
        Era::Session => 0,
        Era::Stateless => 1,
    }
}

/// The pool's name in the config and the state file.
pub fn pool_name(era: Era) -> &'static str {
    match era {
        Era::Session => "session",
        Era::Stateless => "stateless",
    }
}

#[derive(Default)]
struct PinMetrics {
    drift: Family<Labels, Counter>,
    findings: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
