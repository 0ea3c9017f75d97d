//! The live authorization policy: swapped whole on reload, so a request judges
//! with the rules that were current when it started, and a bad file never
//! replaces good rules.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::HeaderOnlyCalls;
use crate::rules::{Policy, PolicyError};

/// The current policy, shared by every request.
pub struct PolicyStore {
    path: PathBuf,
    /// Read by every request, written by a reload: a read takes no lock.
    current: ArcSwap<Policy>,
    /// Calls judged from their headers alone: no rule they fall under may read
    /// their body, in the first rules or any reloaded.
    header_only: Vec<HeaderOnlyCalls>,
}

impl PolicyStore {
    /// Loads the rules file at `path`, checked against the gateway config's
    /// header-only calls.
    pub fn load(path: PathBuf, header_only: &[HeaderOnlyCalls]) -> Result<Self, PolicyError> {
        let policy = Self::read(&path, header_only)?;
        Ok(Self {
            path,
            current: ArcSwap::from_pointee(policy),
            header_only: header_only.to_vec(),
        })
    }

    /// Loads the rules file, logs what it holds, and reloads it from then on (see
    /// [`watch`]).
    pub fn load_and_watch(
        path: PathBuf,
        header_only: &[HeaderOnlyCalls],
    ) -> Result<Arc<Self>, PolicyError> {
        let store = Arc::new(Self::load(path, header_only)?);
        tracing::info!(
            file = %store.path().display(),
            rules = store.current().rule_count(),
            "rules loaded"
        );
        tokio::spawn(watch(store.clone(), Duration::from_secs(1)));
        Ok(store)
    }

    /// Wraps an already compiled policy (tests, benchmarks).
    pub fn fixed(policy: Policy) -> Self {
        Self {
            path: PathBuf::new(),
            current: ArcSwap::from_pointee(policy),
            header_only: Vec::new(),
        }
    }

    /// The policy for a request that starts now.
    pub fn current(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again; keeps the old rules when the new ones do not compile.
    pub fn reload(&self) -> Result<usize, PolicyError> {
        let policy = Self::read(&self.path, &self.header_only)?;
        Ok(self.install(policy))
    }

    /// Compiles `bytes` (what the file held when last read) and puts the rules in
    /// force; keeps the old rules when the new ones do not compile.
    pub fn reload_from(&self, bytes: &[u8]) -> Result<usize, PolicyError> {
        let name = self.path.display().to_string();
        let text = std::str::from_utf8(bytes).map_err(|err| PolicyError::Read {
            path: name.clone(),
            error: std::io::Error::new(std::io::ErrorKind::InvalidData, err),
        })?;
        let policy = Policy::parse(&name, text)?;
        policy.check_header_only(&name, &self.header_only)?;
        Ok(self.install(policy))
    }

    fn install(&self, policy: Policy) -> usize {
        let rules = policy.rule_count();
        self.current.store(Arc::new(policy));
        rules
    }

    fn read(path: &Path, header_only: &[HeaderOnlyCalls]) -> Result<Policy, PolicyError> {
        let policy = Policy::load(path)?;
        policy.check_header_only(&path.display().to_string(), header_only)?;
        Ok(policy)
    }
}

/// Reloads `store` on SIGHUP and whenever its file changes (read every
/// `interval`; see [`Settled`]). Runs until the process ends.
pub async fn watch(store: Arc<PolicyStore>, interval: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::warn!(error = %err, "no SIGHUP handler; rules reload on file change only");
            None
        }
    };
    let mut file = Settled::new(contents(store.path()));
    let mut ticker = tokio::time::interval(interval);
    loop {
        let (trigger, reloaded) = tokio::select! {
            _ = ticker.tick() => {
                if !file.changed_and_settled(contents(store.path())) { continue; }
                // Exactly what was read twice alike: never a third, later read.
                let reloaded = match file.loaded() {
                    Some(bytes) => store.reload_from(bytes),
                    None => store.reload(),
                };
                ("file change", reloaded)
            }
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                file = Settled::new(contents(store.path()));
                ("SIGHUP", store.reload())
            }
        };
        match reloaded {
            Ok(rules) => {
                tracing::info!(trigger, rules, file = %store.path().display(), "rules reloaded")
            }
            Err(err) => {
                tracing::error!(trigger, error = %err, "rules NOT reloaded; the previous rules stay in force")
            }
        }
    }
}

/// What the watcher knows of the file: a change is loaded only once the file
/// has read the same at two checks in a row, and what is loaded is those bytes.
/// A file rewritten in place (an editor, `cat > rules.yaml`, a config sync) may
/// be read between two writes; its first half can be a valid, smaller rule set
/// (a deny rule missing), and must never be in force. Comparing contents, not
/// modification times, also sees a replacement that keeps size and time (`cp
/// -p`, rsync). Writers that pause longer than the check interval are not
/// covered: replace the file atomically (write, then rename), as the README says.
#[derive(Debug)]
pub struct Settled<S> {
    loaded: S,
    seen: S,
}

impl<S: PartialEq + Clone> Settled<S> {
    /// The file as last loaded.
    pub fn new(loaded: S) -> Self {
        Self {
            seen: loaded.clone(),
            loaded,
        }
    }

    /// The file as last loaded.
    pub fn loaded(&self) -> &S {
        &self.loaded
    }

    /// Whether to reload now, given how the file looks at this check.
    pub fn changed_and_settled(&mut self, now: S) -> bool {
        let settled = now == self.seen;
        self.seen = now;
        if settled && self.seen != self.loaded {
            self.loaded = self.seen.clone();
            return true;
        }
        false
    }
}

/// The file's bytes (`None` when it cannot be read). A rules file is small:
/// reading it once per interval costs less than a request.
fn contents(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_loaded_once_the_file_looks_the_same_at_two_checks_in_a_row() {
        let mut file = Settled::new(1);
        assert!(!file.changed_and_settled(1), "unchanged");
        // Half written at one check, whole at the next, then still whole.
        assert!(
            !file.changed_and_settled(2),
            "just changed: may be half written"
        );
        assert!(!file.changed_and_settled(3), "changed again");
        assert!(file.changed_and_settled(3), "the same twice: loaded");
        assert!(!file.changed_and_settled(3), "loaded once");
        // Changed and changed back before settling: nothing to load.
        assert!(!file.changed_and_settled(4));
        assert!(!file.changed_and_settled(3));
        assert!(!file.changed_and_settled(3), "back to what is loaded");
        // A file that disappears (None) and comes back as it was.
        let mut file = Settled::new(Some(1));
        assert!(!file.changed_and_settled(None));
        assert!(
            file.changed_and_settled(None),
            "gone for two checks: reload (and fail)"
        );
        assert!(!file.changed_and_settled(Some(1)));
        assert!(file.changed_and_settled(Some(1)));
    }

    #[test]
    fn rules_that_would_read_a_header_only_calls_body_are_refused_at_load_and_reload() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rules.yaml");
        let calls = [HeaderOnlyCalls {
            method: "tools/call".to_owned(),
            names: vec!["whoami".to_owned()],
        }];
        let by_name = "default:\n  rules:\n  - {name: who, effect: allow, tools: [whoami]}\n";
        let by_argument = "default:\n  rules:\n  - {name: who, effect: allow, tools: [whoami], when: has(mcp.params.arguments.x)}\n";

        std::fs::write(&path, by_argument).expect("write");
        let err = PolicyStore::load(path.clone(), &calls)
            .err()
            .expect("refused at load");
        assert!(
            err.to_string().contains("rule `who` reads `mcp.params`"),
            "{err}"
        );

        std::fs::write(&path, by_name).expect("write");
        let store = PolicyStore::load(path.clone(), &calls).expect("loads");
        std::fs::write(&path, by_argument).expect("write");
        assert!(store.reload().is_err(), "refused at reload");
        // The rules in force are still the ones that read no body.
        let current = store.current();
        assert_eq!(
            current
                .for_path("/mcp")
                .body_reader("tools/call", Some("whoami")),
            None
        );
        assert_eq!(current.rule_count(), 1);
    }
}
