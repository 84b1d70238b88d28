//! [`RuleStore`]: where the rule document lives. [`FileStore`] keeps it in a local file for
//! a service without Redis; `ratelimitd` keeps it in Redis for a fleet.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
/// after the rules are in place, and trimmed to its newest [`audit_max`](Self::audit_max)
/// entries. One process per file: writers in this process are serialised. The file is
/// read and written on Tokio's blocking threads, never on the runtime's own.
#[derive(Debug, Clone)]
pub struct FileStore {
    inner: Arc<FileInner>,
}

#[derive(Debug)]
struct FileInner {
    path: PathBuf,
    audit: PathBuf,
    audit_max: usize,
    writing: Mutex<()>,
}

/// Audit entries a file store keeps unless told otherwise.
const DEFAULT_AUDIT_MAX: usize = 10_000;

impl FileStore {
    /// A store in `path` (created on the first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut audit = path.clone().into_os_string();
        audit.push(".audit.jsonl");
        Self {
            inner: Arc::new(FileInner {
                path,
                audit: audit.into(),
                audit_max: DEFAULT_AUDIT_MAX,
                writing: Mutex::new(()),
            }),
        }
    }

    /// Keeps at most `max` audit entries (at least 1). Default 10,000.
    #[must_use]
    pub fn audit_max(self, max: usize) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(FileInner {
                path: inner.path.clone(),
                audit: inner.audit.clone(),
                audit_max: max.max(1),
                writing: Mutex::new(()),
            }),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the store's files on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&FileInner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Unavailable(format!("rule file task failed: {e}")))?
    }
}

impl FileInner {
    fn read(&self) -> Result<Option<Document>, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unavailable(&self.path, &e)),
        };
        Document::from_json(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", self.path.display())))
    }

    fn append_change(&self, change: &Change) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(change).unwrap_or_default();
        line.push(b'\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.audit)?;
        file.write_all(&line)?;
        file.sync_data()?;
        drop(file);
        // Trimmed once it holds twice the cap, so a trim is rare.
        let text = std::fs::read_to_string(&self.audit)?;
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > 2 * self.audit_max {
            let mut kept = lines[lines.len() - self.audit_max..].join("\n");
            kept.push('\n');
            replace_file(&self.audit, kept.as_bytes())?;
        }
        Ok(())
    }

    fn changes(&self, limit: usize) -> Result<Vec<Change>, StoreError> {
        let text = match std::fs::read_to_string(&self.audit) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(&self.audit, &e)),
        };
        Ok(text
            .lines()
            .rev()
            .filter_map(|line| serde_json::from_str(line).ok())
            .take(limit)
            .collect())
    }

    fn store(&self, expected: u64, next: &Document, change: &Change) -> Result<(), StoreError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.read()?.map_or(0, |d| d.version);
        if current != expected {
            return Err(StoreError::Conflict { current });
        }
        let mut bytes = next.to_json();
        bytes.push(b'\n');
        replace_file(&self.path, &bytes).map_err(|e| unavailable(&self.path, &e))?;
        if let Err(e) = self.append_change(change) {
            // The rules are stored; an audit line that could not be written is logged, not
            // turned into a failed write the caller would retry.
            tracing::error!(error = %e, "audit log not written");
        }
        Ok(())
    }
}

fn unavailable(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
}

/// Replaces `path` with `bytes` atomically: a temporary file beside it, synced, renamed
/// over it, and the directory synced so the rename is durable.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}

#[async_trait]
impl RuleStore for FileStore {
    async fn load(&self) -> Result<Option<Document>, StoreError> {
        self.blocking(FileInner::read).await
    }

    async fn store(
        &self,
        expected: u64,
        next: &Document,
        change: &Change,
    ) -> Result<(), StoreError> {
        let (next, change) = (next.clone(), change.clone());
        self.blocking(move |inner| inner.store(expected, &next, &change))
            .await
    }

    async fn changes(&self, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.blocking(move |inner| inner.changes(limit)).await
    }
}
