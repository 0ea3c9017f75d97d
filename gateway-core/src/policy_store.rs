//! The live authorization policy: swapped whole on reload, so a request judges
//! with the rules that were current when it started, and a bad file never
//! replaces good rules.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::rules::{Policy, PolicyError};

/// The current policy, shared by every request.
pub struct PolicyStore {
    path: PathBuf,
    current: RwLock<Arc<Policy>>,
}

impl PolicyStore {
    /// Loads the rules file at `path`.
    pub fn load(path: PathBuf) -> Result<Self, PolicyError> {
        let policy = Policy::load(&path)?;
        Ok(Self {
            path,
            current: RwLock::new(Arc::new(policy)),
        })
    }

    /// Loads the rules file, logs what it holds, and reloads it from then on (see
    /// [`watch`]).
    pub fn load_and_watch(path: PathBuf) -> Result<Arc<Self>, PolicyError> {
        let store = Arc::new(Self::load(path)?);
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
            current: RwLock::new(Arc::new(policy)),
        }
    }

    /// The policy for a request that starts now.
    pub fn current(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again; keeps the old rules when the new ones do not compile.
    pub fn reload(&self) -> Result<usize, PolicyError> {
        let policy = Policy::load(&self.path)?;
        let rules = policy.rule_count();
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(policy);
        Ok(rules)
    }
}

/// Reloads `store` on SIGHUP and whenever its file changes (checked every
/// `interval`: modification time and size). Runs until the process ends.
pub async fn watch(store: Arc<PolicyStore>, interval: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::warn!(error = %err, "no SIGHUP handler; rules reload on file change only");
            None
        }
    };
    let mut seen = stamp(store.path());
    let mut ticker = tokio::time::interval(interval);
    loop {
        let trigger = tokio::select! {
            _ = ticker.tick() => {
                let now = stamp(store.path());
                if now == seen { continue; }
                seen = now;
                "file change"
            }
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                seen = stamp(store.path());
                "SIGHUP"
            }
        };
        match store.reload() {
            Ok(rules) => {
                tracing::info!(trigger, rules, file = %store.path().display(), "rules reloaded")
            }
            Err(err) => {
                tracing::error!(trigger, error = %err, "rules NOT reloaded; the previous rules stay in force")
            }
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
