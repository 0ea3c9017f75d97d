//! Tool aliases: clients call `from`, the backend receives `to`.
//!
//! Resolution is one hop, so a target must be a backend's own name: an alias
//! of an alias would reach the backend as a name it does not have, and is
//! refused when the config loads.

use std::collections::BTreeMap;

use super::AliasConfig;

/// The aliases of a rewrite set, checked at load. Ordered, so that a listing
/// shows them in the same order every time.
#[derive(Debug, Clone, Default)]
pub struct Aliases {
    targets: BTreeMap<String, String>,
}

impl Aliases {
    /// Adds `alias`, or says why it cannot be one.
    pub(super) fn add(&mut self, alias: &AliasConfig) -> Result<(), String> {
        if alias.from == alias.to {
            return Err(format!("alias `{}` names itself", alias.from));
        }
        if self.targets.contains_key(&alias.from) {
            return Err(format!("alias `{}` is defined twice", alias.from));
        }
        if self.targets.contains_key(&alias.to) {
            return Err(format!(
                "alias `{}` points to `{}`, which is itself an alias",
                alias.from, alias.to
            ));
        }
        if let Some((earlier, _)) = self.targets.iter().find(|(_, to)| **to == alias.from) {
            return Err(format!(
                "alias `{earlier}` points to `{}`, which is itself an alias",
                alias.from
            ));
        }
        self.targets.insert(alias.from.clone(), alias.to.clone());
        Ok(())
    }

    /// The backend's name for a tool a client called (the tool itself when it
    /// is not an alias).
    pub fn resolve<'a>(&'a self, tool: &'a str) -> &'a str {
        self.target(tool).unwrap_or(tool)
    }

    /// The backend's name when `tool` is an alias.
    pub fn target(&self, tool: &str) -> Option<&str> {
        self.targets.get(tool).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Every alias and its target, by alias.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.targets.iter().map(|(a, t)| (a.as_str(), t.as_str()))
    }
}
