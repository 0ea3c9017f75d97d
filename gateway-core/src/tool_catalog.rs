//! What callers may see of each backend's tools: the input schemas backends
//! advertise in `tools/list` (cached per backend and tool, compiled once), and
//! the authorization rules that decide which tools a caller sees.

use std::sync::Arc;

use crate::cel::RequestFacts;
use crate::config::{ArgumentValidation, UnlistedTools};
use crate::protocol::Era;
use crate::rewrite::{Rejection, ToolView, check_arguments};
use crate::rules::Policy;
use serde_json::Value;

/// Input schemas by (backend host, tool name), within a byte budget.
pub struct ToolCatalog {
    schemas: moka::sync::Cache<(String, String), Schema>,
}

#[derive(Clone)]
struct Schema {
    validator: Arc<jsonschema::Validator>,
    /// The schema itself, kept only when it mirrors arguments in headers
    /// (`x-mcp-header`, the 2026-07-28 revision): their headers are checked and
    /// regenerated from it.
    mirrored: Option<Arc<Value>>,
    weight: u32,
}

/// A compiled validator measured about 17 to 21 times its schema's JSON for
/// schemas of properties and types (jsonschema 0.60, counted allocations), about
/// twice for schemas that are mostly description text: take the high end.
const COMPILED_PER_JSON_BYTE: usize = 20;
/// The key, the entry and moka's bookkeeping.
const SCHEMA_ENTRY_OVERHEAD: usize = 1024;

impl ToolCatalog {
    /// A catalog holding about `budget_bytes` of compiled schemas.
    pub fn new(budget_bytes: u64) -> Self {
        Self {
            schemas: moka::sync::Cache::builder()
                .weigher(|_, schema: &Schema| schema.weight)
                .max_capacity(budget_bytes)
                .build(),
        }
    }

    /// Keeps the input schema `upstream` advertised for `tool` (compiled); an
    /// unusable schema forgets any older one.
    pub fn learn(&self, upstream: &str, tool: &str, input_schema: &Value) {
        let key = (upstream.to_owned(), tool.to_owned());
        match jsonschema::validator_for(input_schema) {
            Ok(validator) => {
                let mirrored = crate::protocol::mirrors_arguments(input_schema)
                    .then(|| Arc::new(input_schema.clone()));
                // A kept schema weighs about its JSON again (taken as a twentieth
                // of the compiled estimate).
                let compiled = weight(upstream, tool, input_schema);
                let weight = match &mirrored {
                    Some(_) => compiled.saturating_add(compiled / 20),
                    None => compiled,
                };
                self.schemas.insert(
                    key,
                    Schema {
                        validator: Arc::new(validator),
                        mirrored,
                        weight,
                    },
                );
            }
            Err(err) => {
                tracing::warn!(upstream, tool, error = %err, "backend advertised an unusable input schema");
                self.schemas.invalidate(&key);
            }
        }
    }

    /// The compiled input schema `upstream` advertised for `tool`, if known.
    pub fn schema(&self, upstream: &str, tool: &str) -> Option<Arc<jsonschema::Validator>> {
        self.schemas
            .get(&(upstream.to_owned(), tool.to_owned()))
            .map(|schema| schema.validator)
    }

    /// The input schema `upstream` advertised for `tool`, if it mirrors
    /// arguments in `Mcp-Param-*` headers.
    pub fn mirrored_schema(&self, upstream: &str, tool: &str) -> Option<Arc<Value>> {
        self.schemas
            .get(&(upstream.to_owned(), tool.to_owned()))
            .and_then(|schema| schema.mirrored)
    }

    /// Estimated bytes the catalog holds (for tests and metrics).
    pub fn weighted_size(&self) -> u64 {
        self.schemas.run_pending_tasks();
        self.schemas.weighted_size()
    }
}

/// A `tools/call`, as the backend will receive it, against the tool's advertised
/// input schema (`ext_proc.argument_validation`); other messages pass. A tool
/// with no known schema is judged by `unlisted_tools` (for `fetch`, the caller
/// has already asked the backend: see [`crate::schema_fetch`]).
pub fn check_call_arguments(
    validation: &ArgumentValidation,
    era: Era,
    message: &Value,
    tools: &dyn ToolView,
) -> Result<(), Rejection> {
    if !validation.enabled || message.get("method").and_then(Value::as_str) != Some("tools/call") {
        return Ok(());
    }
    let tool = message
        .pointer("/params/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if validation.skip_tools.iter().any(|t| t == tool) {
        return Ok(());
    }
    match (tools.schema(tool), validation.unlisted_in(era)) {
        (Some(validator), _) => {
            check_arguments(&validator, tool, message, "its advertised inputSchema")
        }
        (None, UnlistedTools::Forward) => {
            tracing::info!(
                tool,
                "no input schema seen for this tool; forwarded unchecked"
            );
            Ok(())
        }
        (None, UnlistedTools::Refuse) => Err(Rejection {
            code: -32602,
            message: format!(
                "the gateway has not seen `{tool}` in this server's tools/list, so it cannot check its arguments: list the tools (tools/list) and call again"
            ),
        }),
        (None, UnlistedTools::Fetch) => Err(Rejection {
            code: -32602,
            message: format!(
                "the gateway cannot learn `{tool}`'s input schema from this server's tools/list, so it cannot check its arguments"
            ),
        }),
    }
}

/// Estimated bytes of a compiled schema, from the size of its JSON.
fn weight(upstream: &str, tool: &str, input_schema: &Value) -> u32 {
    let mut counter = ByteCounter(0);
    // Writing to a counter cannot fail; a schema that could not be written
    // would not have been parsed.
    let _ = serde_json::to_writer(&mut counter, input_schema);
    let bytes = counter
        .0
        .saturating_mul(COMPILED_PER_JSON_BYTE)
        .saturating_add(SCHEMA_ENTRY_OVERHEAD + upstream.len() + tool.len());
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Counts bytes written, keeping none.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The catalog as one exchange sees it: its backend, its caller.
pub struct ToolsFor<'a> {
    pub catalog: &'a ToolCatalog,
    pub upstream: Option<&'a str>,
    /// The rules current when this exchange looked.
    pub policy: Option<Arc<Policy>>,
    pub path: &'a str,
    pub facts: &'a RequestFacts<'a>,
}

impl ToolsFor<'_> {
    /// The input schema of `tool`, if it mirrors arguments in headers.
    pub fn mirrored_schema(&self, tool: &str) -> Option<Arc<Value>> {
        self.catalog.mirrored_schema(self.upstream?, tool)
    }
}

impl ToolView for ToolsFor<'_> {
    fn visible(&self, tools: &[&str]) -> Vec<bool> {
        match &self.policy {
            Some(policy) => policy.for_path(self.path).allows_tools(self.facts, tools),
            None => vec![true; tools.len()],
        }
    }

    fn advertised(&self, tool: &str, input_schema: &Value) {
        if let Some(upstream) = self.upstream {
            self.catalog.learn(upstream, tool, input_schema);
        }
    }

    fn schema(&self, tool: &str) -> Option<Arc<jsonschema::Validator>> {
        self.catalog.schema(self.upstream?, tool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemas_are_kept_within_their_byte_budget() {
        let budget = 1024 * 1024;
        let catalog = ToolCatalog::new(budget);
        let facts = RequestFacts::default();
        let view = ToolsFor {
            catalog: &catalog,
            upstream: Some("127.0.0.1:9001"),
            policy: None,
            path: "/mcp",
            facts: &facts,
        };
        // 200 schemas of ~5 KiB of JSON, each weighing ~100 KiB: twenty times the budget.
        let mut properties = serde_json::Map::new();
        for i in 0..100 {
            properties.insert(format!("p{i}"), json!({"type": "integer", "minimum": i}));
        }
        let schema = json!({"type": "object", "properties": properties});
        for i in 0..200 {
            view.advertised(&format!("tool-{i}"), &schema);
        }
        assert!(
            catalog.weighted_size() <= budget,
            "{}",
            catalog.weighted_size()
        );
        assert!(
            catalog.weighted_size() > 0,
            "the catalog still keeps schemas"
        );
        let small = json!({"type": "object", "required": ["a"]});
        view.advertised("small", &small);
        catalog.schemas.run_pending_tasks();
        assert!(view.schema("small").is_some());
        let estimate = u64::from(weight("127.0.0.1:9001", "t", &schema));
        assert!(
            estimate > 20 * schema.to_string().len() as u64,
            "{estimate}"
        );
    }
}
