//! The scan of tool descriptions: invisible or bidirectional characters, text
//! addressed to the model, URLs outside an allowlist, over-long descriptions.

use serde_json::Value;

use super::{FindingAction, ScanConfig};

/// One scan finding on a tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `invisible_unicode`, `model_instructions`, `urls` or `description_length`.
    pub check: &'static str,
    pub action: FindingAction,
    /// What was found, for the log (never the whole description).
    pub detail: String,
}

/// The scan, compiled from its config.
#[derive(Debug, Clone)]
pub struct Scanner {
    config: ScanConfig,
    phrases: Vec<String>,
}

impl Scanner {
    pub fn new(config: ScanConfig) -> Self {
        let phrases = config
            .model_instructions
            .as_ref()
            .map(|c| c.phrases.iter().map(|p| normalized(p)).collect())
            .unwrap_or_default();
        Self { config, phrases }
    }

    /// The findings on a tool's description, title and every `description` in
    /// its schemas.
    pub fn scan(&self, tool: &Value) -> Vec<Finding> {
        let mut texts = Vec::new();
        for field in ["title", "description"] {
            if let Some(text) = tool.get(field).and_then(Value::as_str) {
                texts.push(text);
            }
        }
        for schema in ["inputSchema", "outputSchema"] {
            if let Some(schema) = tool.get(schema) {
                schema_descriptions(schema, &mut texts);
            }
        }
        let mut findings = Vec::new();
        if let Some(action) = self.config.invisible_unicode
            && let Some(c) = texts.iter().flat_map(|t| t.chars()).find(|c| invisible(*c))
        {
            findings.push(Finding {
                check: "invisible_unicode",
                action,
                detail: format!("U+{:04X}", u32::from(c)),
            });
        }
        if let Some(check) = &self.config.model_instructions {
            let text = normalized(&texts.join(" "));
            if let Some(phrase) = self.phrases.iter().find(|p| text.contains(p.as_str())) {
                findings.push(Finding {
                    check: "model_instructions",
                    action: check.action,
                    detail: format!("\"{phrase}\""),
                });
            }
        }
        if let Some(check) = &self.config.urls
            && let Some(url) = texts
                .iter()
                .flat_map(|t| urls_in(t))
                .find(|url| !check.allow.iter().any(|prefix| url.starts_with(prefix)))
        {
            findings.push(Finding {
                check: "urls",
                action: check.action,
                detail: url.chars().take(200).collect(),
            });
        }
        if let Some(check) = &self.config.description_length
            && let Some(len) = tool
                .get("description")
                .and_then(Value::as_str)
                .map(str::len)
                .filter(|len| *len > check.max_bytes)
        {
            findings.push(Finding {
                check: "description_length",
                action: check.action,
                detail: format!("{len} bytes, over {}", check.max_bytes),
            });
        }
        findings
    }
}

fn schema_descriptions<'v>(schema: &'v Value, out: &mut Vec<&'v str>) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("description" | "title", Value::String(text)) => out.push(text),
                    _ => schema_descriptions(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| schema_descriptions(i, out)),
        _ => {}
    }
}

/// Characters a reader does not see but a model reads: zero-width and
/// formatting characters, bidirectional controls, tag characters, and controls
/// other than tab and line breaks.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
        || (c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

fn normalized(text: &str) -> String {
    let visible: String = text.chars().filter(|c| !invisible(*c)).collect();
    visible
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn urls_in(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices("http")
        .map(move |(at, _)| &text[at..])
        .filter(|rest| rest.starts_with("http://") || rest.starts_with("https://"))
        .map(|rest| {
            let end = rest
                .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | '<'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
}
