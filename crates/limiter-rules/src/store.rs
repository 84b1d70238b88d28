//! [`RuleStore`]: where the rule document lives. [`FileStore`] keeps it in a local file for
//! a service without Redis; `ratelimitd` keeps it in Redis for a fleet.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Document;

/// One entry of the audit log: a change to the rules, who made it, and the rule before
/// and after (in their stored form: API keys as hashes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The name of the admin token that made it.
    pub token: String,
    /// `create`, `replace`, `update`, `delete`, `import` or `enforcement`.
    pub action: String,
    /// The rule changed, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The document version the change made.
    pub version: u64,
    /// What was there before (a rule, a whole set, or the switch).
    pub before: serde_json::Value,
    /// What is there after.
    pub after: serde_json::Value,
}

/// Why a store could not load or store.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The stored version is not the one the write was made against: someone else wrote
    /// first. Nothing was stored.
    Conflict {
        /// The version stored now.
        current: u64,
    },
    /// The store cannot be reached or written (Redis down, disk full). Nothing was stored.
    Unavailable(String),
    /// What is stored is not a document this version can read.
    Corrupt(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Conflict { current } => {
                write!(
                    f,
                    "the rules changed meanwhile: version {current} is stored"
                )
            }
            StoreError::Unavailable(why) => write!(f, "rule store unavailable: {why}"),
            StoreError::Corrupt(why) => write!(f, "stored rules unreadable: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Where the rule document lives; every write is all or nothing.
#[async_trait]
pub trait RuleStore: Send + Sync + fmt::Debug + 'static {
    /// The stored document; `None` when nothing was ever stored.
    async fn load(&self) -> Result<Option<Document>, StoreError>;

    /// Stores `next` if the stored version is `expected` (nothing stored counts as version
    /// 0), as one atomic step, and records `change` in the audit log. `next.version` is
    /// `expected + 1` for an edit; a worker restoring the rules it holds into a store that
    /// lost them writes them under their own version.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when another write came first; [`StoreError::Unavailable`]
    /// when the store cannot be written. Either way the stored document is unchanged.
    async fn store(
        &self,
        expected: u64,
        next: &Document,
        change: &Change,
    ) -> Result<(), StoreError>;

    /// The audit log's most recent `limit` entries, newest first.
    async fn changes(&self, limit: usize) -> Result<Vec<Change>, StoreError>;
}

/// The document in a local file, replaced atomically (written to a temporary file beside
/// it, synced, then renamed over it), so a crash leaves the old rules or the new, never a
/// mix. The audit log is appended to `<file>.audit.jsonl` beside it, one change per line,
/// after the rules are in place. One process per file: writers in this process are
/// serialised.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    audit: PathBuf,
    writing: Mutex<()>,
}

impl FileStore {
    /// A store in `path` (created on the first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut audit = path.clone().into_os_string();
        audit.push(".audit.jsonl");
        Self {
            path,
            audit: audit.into(),
            writing: Mutex::new(()),
        }
    }

    fn append_change(&self, change: &Change) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(change).unwrap_or_default();
        line.push(b'\n');
        let append = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.audit)?;
            file.write_all(&line)?;
            file.sync_data()
        };
        append().map_err(|e| StoreError::Unavailable(format!("{}: {e}", self.audit.display())))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<Option<Document>, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.unavailable(&e)),
        };
        Document::from_json(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", self.path.display())))
    }

    fn unavailable(&self, e: &std::io::Error) -> StoreError {
        StoreError::Unavailable(format!("{}: {e}", self.path.display()))
    }

    fn replace(&self, next: &Document) -> Result<(), StoreError> {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(&next.to_json())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)?;
            // The rename itself is durable once the directory is synced.
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            self.unavailable(&e)
        })
    }
}

#[async_trait]
impl RuleStore for FileStore {
    async fn load(&self) -> Result<Option<Document>, StoreError> {
        self.read()
    }

    async fn store(
        &self,
        expected: u64,
        next: &Document,
        change: &Change,
    ) -> Result<(), StoreError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.read()?.map_or(0, |d| d.version);
        if current != expected {
            return Err(StoreError::Conflict { current });
        }
        self.replace(next)?;
        if let Err(e) = self.append_change(change) {
            // The rules are stored; an audit line that could not be written is logged, not
            // turned into a failed write the caller would retry.
            tracing::error!(error = %e, "audit log not written");
        }
        Ok(())
    }

    async fn changes(&self, limit: usize) -> Result<Vec<Change>, StoreError> {
        let text = match std::fs::read_to_string(&self.audit) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(StoreError::Unavailable(format!(
                    "{}: {e}",
                    self.audit.display()
                )));
            }
        };
        Ok(text
            .lines()
            .rev()
            .filter_map(|line| serde_json::from_str(line).ok())
            .take(limit)
            .collect())
    }
}
