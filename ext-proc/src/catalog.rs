//! What callers may see of each backend's tools: the input schemas backends
//! advertise in `tools/list` (cached per backend and tool, compiled once), and
//! the authorization rules that decide which tools a caller sees.

use std::sync::Arc;

use gateway_core::rewrite::ToolView;
use gateway_core::rules::{Policy, RequestFacts};
use serde_json::Value;

/// Input schemas by (backend host, tool name).
pub struct ToolCatalog {
    schemas: moka::sync::Cache<(String, String), Arc<jsonschema::Validator>>,
}

impl ToolCatalog {
    pub fn new(capacity: u64) -> Self {
        Self {
            schemas: moka::sync::Cache::new(capacity),
        }
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

impl ToolView for ToolsFor<'_> {
    fn visible(&self, tools: &[&str]) -> Vec<bool> {
        match &self.policy {
            Some(policy) => policy.for_path(self.path).allows_tools(self.facts, tools),
            None => vec![true; tools.len()],
        }
    }

    fn advertised(&self, tool: &str, input_schema: &Value) {
        let Some(upstream) = self.upstream else {
            return;
        };
        let key = (upstream.to_owned(), tool.to_owned());
        match jsonschema::validator_for(input_schema) {
            Ok(validator) => self.catalog.schemas.insert(key, Arc::new(validator)),
            Err(err) => {
                tracing::warn!(upstream, tool, error = %err, "backend advertised an unusable input schema");
                self.catalog.schemas.invalidate(&key);
            }
        }
    }

    fn schema(&self, tool: &str) -> Option<Arc<jsonschema::Validator>> {
        let upstream = self.upstream?;
        self.catalog
            .schemas
            .get(&(upstream.to_owned(), tool.to_owned()))
    }
}
