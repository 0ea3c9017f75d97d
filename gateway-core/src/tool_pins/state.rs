//! The state file both sidecars share: pins learned on first use and
//! quarantines, written under a file lock and replaced atomically, re-read when
//! it changes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::{PinError, Quarantine};

/// What the state file holds, per pool (`session`, `stateless`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinState {
    #[serde(default)]
    pub pools: BTreeMap<String, PoolState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolState {
    /// Pins learned on first use: tool name to fingerprint.
    #[serde(default)]
    pub pins: BTreeMap<String, String>,
    #[serde(default)]
    pub quarantined: BTreeMap<String, Quarantine>,
}

/// The state file, as last read: re-read when its modification time or length
/// changes (one `stat`), written under an exclusive lock by writing a temporary
/// file and renaming it over the old one, so a reader never sees half a file.
pub(super) struct StateFile {
    pub(super) path: PathBuf,
    lock_path: PathBuf,
    /// Read on every listing and call, replaced when the file changes.
    cached: ArcSwap<Snapshot>,
}

/// The state as last read, and the stamp of the file it was read from.
struct Snapshot {
    stamp: Stamp,
    state: Arc<PinState>,
}

/// A file's modification time and length, `None` when it does not exist.
pub(super) type Stamp = Option<(SystemTime, u64, u64)>;

impl StateFile {
    pub(super) fn open(path: PathBuf) -> Result<Self, PinError> {
        let mut lock_name = path.file_name().unwrap_or_default().to_os_string();
        lock_name.push(".lock");
        let lock_path = path.with_file_name(lock_name);
        let file = Self {
            path,
            lock_path,
            cached: ArcSwap::from_pointee(Snapshot {
                stamp: None,
                state: Arc::default(),
            }),
        };
        file.reload().map_err(|reason| PinError::File {
            path: file.path.clone(),
            reason,
        })?;
        Ok(file)
    }

    /// The state as the file says now; an error while the file cannot be read
    /// or parsed (callers hold tools back then), or once it has vanished after
    /// being read (which would lift every quarantine).
    pub(super) fn current(&self) -> Result<Arc<PinState>, String> {
        let stamp = stamp(&self.path);
        let cached = self.cached.load();
        if cached.stamp == stamp {
            return Ok(cached.state.clone());
        }
        if stamp.is_none() && cached.stamp.is_some() {
            return Err(format!("{}: gone since it was read", self.path.display()));
        }
        self.reload()
    }

    /// Reads the file again and keeps what it holds; the state read.
    pub(super) fn reload(&self) -> Result<Arc<PinState>, String> {
        let stamp = stamp(&self.path);
        let state = match std::fs::read(&self.path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| format!("not a pin state: {e}"))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PinState::default(),
            Err(e) => return Err(format!("cannot read: {e}")),
        };
        let state = Arc::new(state);
        self.cached.store(Arc::new(Snapshot {
            stamp,
            state: state.clone(),
        }));
        Ok(state)
    }

    /// Applies `change` to the state on disk, under the lock.
    pub(super) fn update(&self, change: impl FnOnce(&mut PinState)) -> Result<(), String> {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| format!("{}: cannot open: {e}", self.lock_path.display()))?;
        lock.lock()
            .map_err(|e| format!("{}: cannot lock: {e}", self.lock_path.display()))?;
        let mut state = (*self.reload()?).clone();
        change(&mut state);
        let text = serde_json::to_vec_pretty(&state).map_err(|e| e.to_string())?;
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(format!(".{}.tmp", std::process::id()));
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &self.path))
            .map_err(|e| format!("{}: cannot write: {e}", self.path.display()))?;
        self.reload()?;
        drop(lock);
        Ok(())
    }
}

pub(super) fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    // Each write renames a new file in: its inode tells it apart even within
    // one tick of the clock at the same length.
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}
