//! What the workers share besides buckets: the rules in force and their store, kept in
//! step (a change notification, and a version check twice a second as a backstop); the
//! statistics and violations every worker records; the audit log of rule changes.
//!
//! With Redis all of it lives there (`redis.rs`); without, rules persist in a local file
//! and the records stay in the worker. While Redis is down, workers keep the rules they
//! last loaded and say so in `/health/ready`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use limiter_core::Tier;
use limiter_redis::redis;
use limiter_rules::{
    Change, Document, Edit, EditError, FileStore, Rule, RuleStore, Rules, StoreError,
};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::config::{Config, ConfigError};
use crate::state::Backend;

mod members;
pub(crate) mod records;
mod redis_store;

pub(crate) use members::Member;
use members::Members;
pub(crate) use records::{Counts, Records, Violation, now_ms};
use redis_store::{CHANNEL, RedisFleet, stats_key, unavailable};

/// How often a worker asks Redis for the rules' version, whatever notifications say.
const POLL: Duration = Duration::from_millis(500);
/// How often records are flushed (and heartbeats sent).
const FLUSH: Duration = Duration::from_secs(1);
/// The longest a fleet operation on Redis may take before it counts as unavailable.
const DEADLINE: Duration = Duration::from_secs(2);

/// `operation` bounded by [`DEADLINE`]: no answer in time is an unavailable store.
async fn within<T>(
    operation: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(DEADLINE, operation)
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable("no answer in time".into())))
}

/// Why a rule write failed.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The edit itself is refused.
    Edit(EditError),
    /// `If-Match` named another version than the stored one.
    Precondition { current: u64 },
    /// The store could not be written: nothing changed.
    Unavailable(String),
}

/// The fleet-shared state of one worker.
pub(crate) struct Fleet {
    pub(crate) rules: Rules,
    pub(crate) records: Arc<Records>,
    /// This worker's membership of the fleet.
    pub(crate) members: Members,
    /// Whether this worker is throttling (when throttling is enabled).
    throttling: Option<Arc<std::sync::atomic::AtomicBool>>,
    store: Arc<dyn RuleStore>,
    redis: Option<Arc<RedisFleet>>,
    seeds: Vec<Rule>,
    status: Mutex<SyncStatus>,
    writing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct SyncStatus {
    /// When the rules in force were last confirmed current (ms since the epoch).
    confirmed_ms: Option<u64>,
    /// Why they could not be, since.
    error: Option<String>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// The fleet state `config` describes, on `backend`; the rules start as the file's
    /// seeds until [`start`](Self::start) loads the store.
    pub(crate) fn new(
        config: &Config,
        backend: &Backend,
        throttling: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<Self, ConfigError> {
        let seeds = config.seed_rules()?;
        let worker = config.worker_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".to_owned());
            format!("{host}/{}", std::process::id())
        });
        let admin = &config.admin;
        let members = Members::new(
            worker.clone(),
            Duration::from_millis(admin.heartbeat_ttl_ms),
        );
        let records = Arc::new(Records::new(
            worker,
            admin.violations_per_second,
            admin.violations_max,
        ));
        let (store, redis): (Arc<dyn RuleStore>, _) = match backend {
            Backend::Redis(fallback, _) => {
                let fleet = Arc::new(RedisFleet::new(
                    Arc::clone(fallback),
                    admin.audit_max,
                    admin.violations_max,
                ));
                (fleet.clone(), Some(fleet))
            }
            Backend::Memory(_) => (Arc::new(FileStore::new(&config.rules_file)), None),
        };
        let initial = Document {
            rules: seeds.clone(),
            ..Document::default()
        };
        Ok(Self {
            rules: Rules::new(initial.to_set()),
            records,
            members,
            throttling,
            store,
            redis,
            seeds,
            status: Mutex::new(SyncStatus::default()),
            writing: tokio::sync::Mutex::new(()),
        })
    }

    /// Loads the stored rules, then keeps them current and flushes the records, in the
    /// background.
    pub(crate) async fn start(self: &Arc<Self>) {
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "rules not loaded at start: the file's seed rules apply until they are");
        }
        if self.redis.is_some() {
            tokio::spawn(Arc::clone(self).watch());
            tokio::spawn(Arc::clone(self).beat_every_second());
        }
        tokio::spawn(Arc::clone(self).flush_every_second());
    }

    /// The seed document: version 0, what an empty store holds.
    fn seeded(&self) -> Document {
        Document {
            rules: self.seeds.clone(),
            ..Document::default()
        }
    }

    /// The rules as an admin reads them: the stored document; while nothing is stored, the
    /// rules this worker enforces (which it is about to restore), or the seeds.
    pub(crate) async fn document(&self) -> Result<Document, StoreError> {
        let stored = self.stored().await?;
        let held = self.rules.current();
        if stored.version == 0 && held.version() > 0 {
            return Ok(held_document(&held));
        }
        Ok(stored)
    }

    /// The stored document, or the seeds (version 0) when nothing is stored.
    async fn stored(&self) -> Result<Document, StoreError> {
        let loaded = within(self.store.load()).await?;
        Ok(loaded.unwrap_or_else(|| self.seeded()))
    }

    /// Loads the store's rules and puts them in force (the store is the truth: a store
    /// rolled back to older rules rolls the workers back too), holding off edits meanwhile
    /// so that an older read never replaces a newer write.
    async fn refresh(&self) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        let result = self.load().await;
        let mut status = self.status.lock();
        match &result {
            Ok(()) => {
                status.confirmed_ms = Some(now_ms());
                status.error = None;
            }
            Err(e) => status.error = Some(e.to_string()),
        }
        result
    }

    /// Puts the stored rules in force, or the seeds while nothing is stored. Seeds are not
    /// written: the first edit stores them with itself, so a worker starting with seeds
    /// never overwrites rules that other workers hold and will restore.
    async fn load(&self) -> Result<(), StoreError> {
        let document = self.stored().await?;
        let held = self.rules.current();
        if document.version == 0 && held.version() > 0 {
            return self.restore().await;
        }
        if document.version != held.version() {
            tracing::debug!(
                version = document.version,
                rules = document.rules.len(),
                "rules in force"
            );
            self.rules.replace(document.to_set());
        }
        Ok(())
    }

    /// Applies `edit` to the stored document and puts the result in force: all or nothing.
    /// `if_match` is the version the caller saw (`If-Match`); without one, a write that
    /// loses a race is made again on the new document.
    pub(crate) async fn edit(
        &self,
        edit: Edit,
        if_match: Option<u64>,
        token: &str,
    ) -> Result<(Document, Document), WriteError> {
        let _writing = self.writing.lock().await;
        self.edit_locked(edit, if_match, token).await
    }

    async fn edit_locked(
        &self,
        edit: Edit,
        if_match: Option<u64>,
        token: &str,
    ) -> Result<(Document, Document), WriteError> {
        for _ in 0..3 {
            let current = self
                .stored()
                .await
                .map_err(|e| WriteError::Unavailable(e.to_string()))?;
            // A store that lost its rules gets back the ones in force before any edit, so
            // an edit never builds on an empty document by mistake.
            if current.version == 0 && self.rules.current().version() > 0 {
                self.restore()
                    .await
                    .map_err(|e| WriteError::Unavailable(e.to_string()))?;
                continue;
            }
            if let Some(expected) = if_match
                && expected != current.version
            {
                return Err(WriteError::Precondition {
                    current: current.version,
                });
            }
            let next = current.apply(edit.clone()).map_err(WriteError::Edit)?;
            let change = describe(&edit, &current, &next, token);
            let stored =
                tokio::time::timeout(DEADLINE, self.store.store(current.version, &next, &change))
                    .await
                    .unwrap_or_else(|_| Err(StoreError::Unavailable("no answer in time".into())));
            match stored {
                Ok(()) => {
                    tracing::info!(
                        token,
                        action = change.action,
                        rule = change.rule.as_deref(),
                        version = next.version,
                        "rules changed"
                    );
                    self.rules.replace(next.to_set());
                    return Ok((current, next));
                }
                Err(StoreError::Conflict { current }) if if_match.is_some() => {
                    return Err(WriteError::Precondition { current });
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(WriteError::Unavailable(e.to_string())),
            }
        }
        Err(WriteError::Unavailable(
            "the rules kept changing under this write; retry".into(),
        ))
    }

    /// The audit log's newest `limit` entries.
    pub(crate) async fn changes(&self, limit: usize) -> Result<Vec<Change>, StoreError> {
        within(self.store.changes(limit)).await
    }

    /// The rules' part of `/health/ready`: `ok`, or `stale` while the store cannot be read
    /// (the last rules loaded stay in force).
    pub(crate) fn health(&self) -> (bool, Value) {
        let status = self.status.lock();
        let set = self.rules.current();
        let store = if self.redis.is_some() {
            "redis"
        } else {
            "file"
        };
        let body = json!({
            "status": if status.error.is_none() { "ok" } else { "stale" },
            "store": store,
            "version": set.version(),
            "rules": set.len(),
            "enforce": set.enforce(),
            "confirmed_ms": status.confirmed_ms,
            "error": status.error,
        });
        (status.error.is_none(), body)
    }

    /// Keeps the rules current: on a change notification, and on a version check every
    /// [`POLL`] whatever the notifications do (they are lost while disconnected).
    async fn watch(self: Arc<Self>) {
        let Some(redis) = self.redis.clone() else {
            return;
        };
        let url = redis.limiter().pubsub_url().map(str::to_owned);
        let mut notifications = None;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match &mut notifications {
                Some(stream) => {
                    tokio::select! {
                        _ = tick.tick() => {}
                        message = StreamExt::next(stream) => {
                            if message.is_none() {
                                notifications = None;
                            }
                        }
                    }
                }
                None => {
                    tick.tick().await;
                    if let Some(url) = &url {
                        notifications = subscribe(url).await;
                    }
                }
            }
            let held = self.rules.current().version();
            let result = match within(redis.version()).await {
                Ok(v) if v == held && v > 0 => {
                    let mut status = self.status.lock();
                    status.confirmed_ms = Some(now_ms());
                    status.error = None;
                    Ok(())
                }
                // Another version, or none stored: load it (an empty store gets back the
                // rules this worker holds, if any).
                Ok(_) => self.refresh().await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                let mut status = self.status.lock();
                if status.error.is_none() {
                    tracing::warn!(error = %e, "rules could not be refreshed: keeping the last ones loaded");
                }
                status.error = Some(e.to_string());
            }
        }
    }

    /// Writes the rules in force into a store that holds none (Redis restarted without
    /// persistence, an empty replica promoted); another worker doing the same first is as
    /// good. Called with the write lock held.
    async fn restore(&self) -> Result<(), StoreError> {
        let set = self.rules.current();
        let document = held_document(&set);
        let change = Change {
            time_ms: now_ms(),
            token: format!("worker {}", self.records.worker()),
            action: "restore".into(),
            rule: None,
            version: document.version,
            before: Value::Null,
            after: summary(&document),
        };
        let stored = within(self.store.store(0, &document, &change)).await;
        match stored {
            Ok(()) => {
                tracing::warn!(
                    version = document.version,
                    "redis held no rules: restored the ones in force"
                );
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => {
                let stored = self.stored().await?;
                self.rules.replace(stored.to_set());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn flush_every_second(self: Arc<Self>) {
        let mut tick = tokio::time::interval(FLUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush().await;
        }
    }

    /// Tells the fleet this worker is live, once a second; the live count it answers
    /// divides this worker's limits while Redis is away.
    async fn beat_every_second(self: Arc<Self>) {
        let mut tick = tokio::time::interval(members::BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(redis) = &self.redis else { return };
            let me = self.me();
            let beat = within(async {
                let mut conn = redis.connection().await?;
                self.members.beat(&mut conn, &me).await.map_err(unavailable)
            });
            match beat.await {
                // Only while Redis decides: a share changed during an outage would start
                // the degraded clients on fresh buckets.
                Ok(live) if redis.fallback().state() == limiter_fallback::CircuitState::Closed => {
                    redis.fallback().set_fleet_size(live);
                }
                Ok(_) => {}
                // Redis away: the last count seen stays in force.
                Err(e) => tracing::debug!(error = %e, "heartbeat not sent"),
            }
        }
    }

    /// This worker as its heartbeat describes it.
    pub(crate) fn me(&self) -> Member {
        let checks = self
            .records
            .checks
            .load(std::sync::atomic::Ordering::Relaxed);
        let throttling = self
            .throttling
            .as_ref()
            .is_some_and(|t| t.load(std::sync::atomic::Ordering::Relaxed));
        match &self.redis {
            None => self.members.me("memory", 0.0, checks, throttling),
            Some(redis) => {
                let stats = redis.fallback().stats();
                let backend = if stats.state == limiter_fallback::CircuitState::Closed {
                    "redis"
                } else {
                    "fallback"
                };
                self.members
                    .me(backend, stats.degraded_share(), checks, throttling)
            }
        }
    }

    /// The live workers: from Redis, or this one alone without it.
    pub(crate) async fn workers(&self) -> Result<Vec<Member>, StoreError> {
        match &self.redis {
            None => Ok(vec![self.me()]),
            Some(redis) => {
                within(async {
                    let mut conn = redis.connection().await?;
                    self.members.list(&mut conn).await.map_err(unavailable)
                })
                .await
            }
        }
    }

    /// Flushes what the worker recorded since the last flush.
    pub(crate) async fn flush(&self) {
        let batch = self.records.take();
        match &self.redis {
            None => self.records.keep_locally(batch),
            Some(redis) => match tokio::time::timeout(DEADLINE, redis.flush(&batch)).await {
                Ok(Ok(())) => {}
                // Not sent: kept for the next flush, so an outage loses no counts.
                Ok(Err(_)) => self.records.put_back(batch),
                // Sent, perhaps applied: sending it again could count it twice.
                Err(_) => {
                    metrics::counter!("ratelimit_stats_flushes_lost_total").increment(1);
                    tracing::warn!(
                        "statistics flush got no answer in time: its counts may be lost"
                    );
                }
            },
        }
    }

    /// Recent violations, newest first.
    pub(crate) async fn violations(
        &self,
        since_ms: u64,
        limit: usize,
        keep: &(dyn Fn(&Violation) -> bool + Sync),
    ) -> Result<Vec<Violation>, StoreError> {
        match &self.redis {
            Some(redis) => within(redis.violations(since_ms, limit, keep)).await,
            None => Ok(self
                .records
                .local
                .lock()
                .violations
                .iter()
                .rev()
                .take_while(|v| v.time >= since_ms)
                .filter(|v| keep(v))
                .take(limit)
                .cloned()
                .collect()),
        }
    }

    /// Counters over `[from, from + steps × step)` seconds in buckets of `granularity`
    /// seconds: the total, by (rule, tier), and one point per step.
    pub(crate) async fn stats(
        &self,
        granularity: u64,
        from: u64,
        step: u64,
        steps: u64,
        keep: &(dyn Fn(Option<&str>, Tier) -> bool + Sync),
    ) -> Result<Stats, StoreError> {
        let starts: Vec<u64> = (0..steps * step / granularity)
            .map(|i| from + i * granularity)
            .collect();
        let buckets: Vec<std::collections::HashMap<String, u64>> = match &self.redis {
            Some(redis) => {
                let keys: Vec<String> = starts.iter().map(|&s| stats_key(granularity, s)).collect();
                within(redis.buckets(&keys)).await?
            }
            None => {
                let local = self.records.local.lock();
                starts
                    .iter()
                    .map(|&s| {
                        local
                            .series
                            .get(&(granularity, s))
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect()
            }
        };
        let mut stats = Stats::default();
        let per_step = (step / granularity) as usize;
        for (i, chunk) in buckets.chunks(per_step.max(1)).enumerate() {
            let mut point = Counts::default();
            for fields in chunk {
                let counted = records::tally(
                    fields.iter().map(|(f, n)| (f.as_str(), *n)),
                    keep,
                    &mut stats.by,
                );
                for (j, name) in Counts::NAMES.iter().enumerate() {
                    point.add_field(name, counted.get(j));
                    stats.total.add_field(name, counted.get(j));
                }
            }
            stats.series.push((from + i as u64 * step, point));
        }
        Ok(stats)
    }
}

/// A stats answer.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) total: Counts,
    pub(crate) by: BTreeMap<(Option<String>, Tier), Counts>,
    pub(crate) series: Vec<(u64, Counts)>,
}

/// A subscription to the change channel, or `None` if it cannot be made now.
async fn subscribe(url: &str) -> Option<redis::aio::PubSubStream> {
    let open = async {
        let client = redis::Client::open(url).ok()?;
        let mut pubsub = client.get_async_pubsub().await.ok()?;
        pubsub.subscribe(CHANNEL).await.ok()?;
        Some(pubsub.into_on_message())
    };
    tokio::time::timeout(DEADLINE, open).await.ok().flatten()
}

/// The document of the rules in force.
fn held_document(set: &limiter_rules::RuleSet) -> Document {
    Document {
        version: set.version(),
        enforce: set.enforce(),
        rules: set.rules().cloned().collect(),
    }
}

/// A whole rule set as the audit log records it: the switch, the count and the names (a
/// set may hold thousands of rules; each entry stays small).
fn summary(document: &Document) -> Value {
    const NAMES: usize = 100;
    let names: Vec<&str> = document
        .rules
        .iter()
        .take(NAMES)
        .map(|r| r.name())
        .collect();
    json!({
        "enforce": document.enforce,
        "rules": document.rules.len(),
        "names": names,
        "more": document.rules.len().saturating_sub(NAMES),
    })
}

/// The audit entry of `edit`, from the document before and after.
fn describe(edit: &Edit, before: &Document, after: &Document, token: &str) -> Change {
    let rule_json = |doc: &Document, name: &str| {
        doc.get(name)
            .map_or(Value::Null, |r| serde_json::to_value(r).unwrap_or_default())
    };
    let (action, rule) = match edit {
        Edit::Add(r) => ("create", Some(r.name().to_owned())),
        Edit::Replace(r) => ("replace", Some(r.name().to_owned())),
        Edit::Remove(name) => ("delete", Some(name.clone())),
        Edit::ReplaceAll { .. } => ("import", None),
        Edit::Enforce(_) => ("enforcement", None),
    };
    let (before_json, after_json) = match (edit, &rule) {
        (Edit::Enforce(_), _) => (
            json!({"enforce": before.enforce}),
            json!({"enforce": after.enforce}),
        ),
        (_, Some(name)) => (rule_json(before, name), rule_json(after, name)),
        (_, None) => (summary(before), summary(after)),
    };
    Change {
        time_ms: now_ms(),
        token: token.to_owned(),
        action: action.to_owned(),
        rule,
        version: after.version,
        before: before_json,
        after: after_json,
    }
}
