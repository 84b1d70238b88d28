//! The fleet's shared state in Redis: the rule document (with its audit stream and change
//! channel), the statistics buckets and the violations stream. Every key shares the
//! `{admin}` hash tag, so a Redis Cluster keeps them on one slot and the write script
//! works there unchanged.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use limiter_redis::redis::{self, Script};
use limiter_redis::{RedisConnection, RedisLimiter};
use limiter_rules::{Change, Document, RuleStore, StoreError};

use super::records::{Batch, HOURS_KEPT, MINUTES_KEPT, Violation};
use crate::state::RedisFallback;

/// The rule document: a hash of `version` and `doc`.
pub(crate) const RULES_KEY: &str = "rl:{admin}:rules";
/// The audit log of rule changes.
pub(crate) const AUDIT_KEY: &str = "rl:{admin}:audit";
/// Recent violations, fleet-wide.
pub(crate) const VIOLATIONS_KEY: &str = "rl:{admin}:violations";
/// Where a write announces its new version.
pub(crate) const CHANNEL: &str = "rl:{admin}:rules:changed";

/// The script that writes the document (`lua/rules_write.lua`).
const WRITE_SCRIPT: &str = include_str!("../../../../lua/rules_write.lua");

/// A statistics bucket: counters of one minute or one hour, as a hash of fields.
pub(crate) fn stats_key(granularity: u64, start: u64) -> String {
    format!("rl:{{admin}}:stats:{granularity}:{start}")
}

/// The fleet's records and rules in Redis, through the limiter's own connections.
pub(crate) struct RedisFleet {
    backend: Arc<RedisFallback>,
    write: Script,
    audit_max: usize,
    violations_max: usize,
}

impl std::fmt::Debug for RedisFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFleet").finish_non_exhaustive()
    }
}

/// A Redis error as the store reports it: unavailable, classified.
pub(crate) fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(RedisConnection::error(e).to_string())
}

impl RedisFleet {
    pub(crate) fn new(
        backend: Arc<RedisFallback>,
        audit_max: usize,
        violations_max: usize,
    ) -> Self {
        Self {
            backend,
            write: Script::new(WRITE_SCRIPT),
            audit_max,
            violations_max,
        }
    }

    /// The fallback the fleet's Redis is reached through.
    pub(crate) fn fallback(&self) -> &RedisFallback {
        &self.backend
    }

    pub(crate) fn limiter(&self) -> &RedisLimiter {
        self.backend.primary()
    }

    pub(crate) async fn connection(&self) -> Result<RedisConnection, StoreError> {
        self.limiter()
            .connection()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// The stored version: the cheap question a worker asks to see a change.
    pub(crate) async fn version(&self) -> Result<u64, StoreError> {
        let mut conn = self.connection().await?;
        let version: Option<u64> = redis::cmd("HGET")
            .arg(RULES_KEY)
            .arg("version")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(version.unwrap_or(0))
    }

    /// Adds one flushed batch: a pipeline of counter increments (each bucket with its
    /// expiry) and violations, the stream capped.
    pub(crate) async fn flush(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.counts.is_empty() && batch.violations.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (granularity, kept) in [(60, MINUTES_KEPT), (3600, HOURS_KEPT)] {
            if batch.counts.is_empty() {
                break;
            }
            let key = stats_key(granularity, batch.at / granularity * granularity);
            for (field, n) in &batch.counts {
                pipe.cmd("HINCRBY").arg(&key).arg(field).arg(n).ignore();
            }
            pipe.cmd("EXPIRE").arg(&key).arg(kept.as_secs()).ignore();
        }
        for v in &batch.violations {
            pipe.cmd("XADD")
                .arg(VIOLATIONS_KEY)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.violations_max)
                .arg("*")
                .arg("v")
                .arg(serde_json::to_string(v).unwrap_or_default())
                .ignore();
        }
        let mut conn = self.connection().await?;
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    /// Every field of each bucket, in order.
    pub(crate) async fn buckets(
        &self,
        keys: &[String],
    ) -> Result<Vec<HashMap<String, u64>>, StoreError> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HGETALL").arg(key);
        }
        let mut conn = self.connection().await?;
        pipe.query_async(&mut conn).await.map_err(unavailable)
    }

    /// Violations since `since_ms`, newest first, those `keep` accepts, at most `limit`.
    pub(crate) async fn violations(
        &self,
        since_ms: u64,
        limit: usize,
        keep: &(dyn Fn(&Violation) -> bool + Sync),
    ) -> Result<Vec<Violation>, StoreError> {
        let mut conn = self.connection().await?;
        let mut found = Vec::new();
        let mut end = "+".to_owned();
        // Pages of the stream, newest first, until enough match or the window ends; the
        // stream is capped, so this is bounded.
        loop {
            let page: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
                .arg(VIOLATIONS_KEY)
                .arg(&end)
                .arg(since_ms)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let full = page.len() == 1000;
            for (id, fields) in &page {
                if id == &end {
                    continue;
                }
                let Some(v) = fields
                    .get("v")
                    .and_then(|json| serde_json::from_str::<Violation>(json).ok())
                else {
                    continue;
                };
                if keep(&v) {
                    found.push(v);
                    if found.len() == limit {
                        return Ok(newest_first(found));
                    }
                }
            }
            match page.last() {
                Some((id, _)) if full => end = id.clone(),
                _ => return Ok(newest_first(found)),
            }
        }
    }
}

/// Entries are in the order workers flushed them; an answer is in the order they happened.
fn newest_first(mut found: Vec<Violation>) -> Vec<Violation> {
    found.sort_by_key(|v| std::cmp::Reverse(v.time));
    found
}

#[async_trait]
impl RuleStore for RedisFleet {
    async fn load(&self) -> Result<Option<Document>, StoreError> {
        let mut conn = self.connection().await?;
        let doc: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(RULES_KEY)
            .arg("doc")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        doc.map(|bytes| Document::from_json(&bytes).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    async fn store(
        &self,
        expected: u64,
        next: &Document,
        change: &Change,
    ) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let (written, version): (u8, u64) = self
            .write
            .key(RULES_KEY)
            .key(AUDIT_KEY)
            .arg(expected)
            .arg(next.to_json())
            .arg(serde_json::to_vec(change).unwrap_or_default())
            .arg(self.audit_max)
            .arg(CHANNEL)
            .arg(next.version)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if written == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict { current: version })
        }
    }

    async fn changes(&self, limit: usize) -> Result<Vec<Change>, StoreError> {
        let mut conn = self.connection().await?;
        let page: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
            .arg(AUDIT_KEY)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(page
            .iter()
            .filter_map(|(_, f)| serde_json::from_str(f.get("change")?).ok())
            .collect())
    }
}
