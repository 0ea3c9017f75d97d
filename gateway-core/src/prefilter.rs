//! What rules, rewrites and rate limits select messages by before anything else
//! runs: the message's method and, for a `tools/call`, its tool. One meaning
//! for all three: an empty list admits every message; a list admits only a
//! message whose method (tool) it names, so a message without one is left out.

use std::collections::HashSet;

use serde::Deserialize;

/// A `methods` and `tools` pair, as sets looked up once per message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "Lists")]
pub struct Prefilter {
    methods: Option<HashSet<String>>,
    tools: Option<HashSet<String>>,
}

impl Prefilter {
    /// From the lists as written.
    pub fn new(methods: &[String], tools: &[String]) -> Self {
        let set = |items: &[String]| (!items.is_empty()).then(|| items.iter().cloned().collect());
        Self {
            methods: set(methods),
            tools: set(tools),
        }
    }

    /// Whether a message with `method` and `tool` passes.
    pub fn admits(&self, method: Option<&str>, tool: Option<&str>) -> bool {
        let named = |names: &Option<HashSet<String>>, name: Option<&str>| {
            names
                .as_ref()
                .is_none_or(|names| name.is_some_and(|name| names.contains(name)))
        };
        named(&self.methods, method) && named(&self.tools, tool)
    }

    /// Whether every message passes (neither list given).
    pub fn admits_all(&self) -> bool {
        self.methods.is_none() && self.tools.is_none()
    }

    /// The tools named, in no particular order.
    pub fn tools(&self) -> impl Iterator<Item = &str> {
        self.tools.iter().flatten().map(String::as_str)
    }
}

/// A prefilter as written on its own (a rate limit's `match`); rules and
/// rewrites write theirs among their other keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Lists {
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    tools: Vec<String>,
}

impl From<Lists> for Prefilter {
    fn from(lists: Lists) -> Self {
        Self::new(&lists.methods, &lists.tools)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_message_passes_by_any_of_its_methods_and_tools() {
        let filter = Prefilter::new(&names(&["tools/call"]), &names(&["a", "b"]));
        assert!(filter.admits(Some("tools/call"), Some("b")));
        assert!(!filter.admits(Some("tools/call"), Some("c")));
        assert!(!filter.admits(Some("tools/list"), None));
        assert!(
            !filter.admits(None, Some("a")),
            "a list needs a method to name"
        );
        assert!(!filter.admits_all());
    }

    #[test]
    fn empty_lists_admit_every_message() {
        let filter = Prefilter::new(&[], &[]);
        assert!(filter.admits(None, None));
        assert!(filter.admits(Some("ping"), None));
        assert!(filter.admits_all());
        let methods_only = Prefilter::new(&names(&["ping"]), &[]);
        assert!(methods_only.admits(Some("ping"), None));
        assert!(!methods_only.admits(Some("tools/list"), None));
    }

    #[test]
    fn as_written_unknown_keys_are_refused() {
        let parsed: Prefilter =
            serde_yaml_ng::from_str("{methods: [tools/call], tools: [add]}").expect("valid");
        assert_eq!(
            parsed,
            Prefilter::new(&names(&["tools/call"]), &names(&["add"]))
        );
        let error =
            serde_yaml_ng::from_str::<Prefilter>("{method: [tools/call]}").expect_err("a typo");
        assert!(
            error.to_string().contains("unknown field `method`"),
            "{error}"
        );
    }
}
