//! `cargo xtask pin-tools`: the pins of the tools an MCP endpoint lists, as a
//! pins file for `tool_pins.<pool>.pins_file`, each tool's definition shown for
//! review above its pin.
//!
//! Through a gateway whose pool is in `enforce` without pins, every tool is held
//! back: list through a gateway in `observe` mode, or from a backend directly.

use std::path::PathBuf;

use anyhow::{Context, bail};
use e2e::mcp::RawSession;
use gateway_core::tool_pins::fingerprint;
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct PinTools {
    /// The MCP endpoint (the gateway's, or a backend's).
    #[arg(long, default_value = "https://localhost:8443/mcp")]
    pub url: String,
    /// A bearer token for it (`cargo xtask token` for the dev stack).
    #[arg(long)]
    pub token: String,
    /// CA bundle that signed the endpoint's certificate (default: the dev CA).
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

impl PinTools {
    pub fn run(&self) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let text = runtime.block_on(self.pins())?;
        // What is printed holds the pins it means to, and only those.
        let printed: std::collections::BTreeMap<String, String> = serde_yaml_ng::from_str(&text)?;
        let expected = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        if printed.len() != expected {
            bail!("the pins file would not read back as written; not printed");
        }
        // The pins file is this command's output.
        print!("{text}");
        Ok(())
    }

    async fn pins(&self) -> anyhow::Result<String> {
        let http = match &self.ca {
            None => e2e::stack::https_client()?,
            Some(ca) => {
                let pem = std::fs::read(ca).with_context(|| ca.display().to_string())?;
                reqwest::Client::builder()
                    .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
                    .build()?
            }
        };
        let session = RawSession::initialize(&http, &self.url, &self.token).await?;
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let params = match &cursor {
                Some(cursor) => json!({"cursor": cursor}),
                None => json!({}),
            };
            let answer = session.request("tools/list", params).await?;
            if let Some(error) = answer.get("error") {
                bail!("tools/list: {error}");
            }
            let result = &answer["result"];
            tools.extend(result["tools"].as_array().cloned().unwrap_or_default());
            match result["nextCursor"].as_str() {
                Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(render(&self.url, &tools))
    }
}

/// The pins file: per tool, its definition as comments, then `name: fingerprint`.
fn render(url: &str, tools: &[Value]) -> String {
    let mut out = format!(
        "# Tool pins of {url} ({} tools). Review each definition before pinning it:\n\
         # a pin says \"this, exactly, was reviewed\".\n",
        tools.len()
    );
    let mut sorted: Vec<&Value> = tools.iter().collect();
    sorted.sort_by_key(|t| t["name"].as_str().unwrap_or_default().to_owned());
    for tool in sorted {
        let name = tool["name"].as_str().unwrap_or_default();
        out.push('\n');
        let definition = serde_json::to_string_pretty(tool).unwrap_or_default();
        for line in definition.lines() {
            out.push_str("# ");
            // Only printable ASCII in a comment: a character YAML reads as a
            // line break (U+2028, U+0085, ...) would end the comment and let a
            // description write a pin of its own.
            for c in line.chars() {
                if c == ' ' || c.is_ascii_graphic() {
                    out.push(c);
                } else {
                    out.push_str(&format!("\\u{{{:04X}}}", u32::from(c)));
                }
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "{}: {}\n",
            serde_json::to_string(name).unwrap_or_default(),
            fingerprint(tool)
        ));
    }
    out
}
