//! What every worker records about decided requests: counters by rule and tier, and the
//! recent violations. Both aggregate in the worker and are flushed about once a second:
//! to Redis with one pipeline (never one write per request), or into the worker's own
//! series and ring without Redis.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use limiter_core::{Tier, ceil_millis};
use limiter_rules::{Observe, Query, Verdict};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Minute buckets are kept this long.
pub(crate) const MINUTES_KEPT: Duration = Duration::from_secs(48 * 3600);
/// Hour buckets are kept this long.
pub(crate) const HOURS_KEPT: Duration = Duration::from_secs(8 * 24 * 3600);

/// The four counters of one rule and tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counts {
    /// Requests this rule (or the tier's policy) decided.
    pub(crate) checks: u64,
    /// Of those, answered allowed.
    pub(crate) allowed: u64,
    /// Of those, answered denied.
    pub(crate) denied: u64,
    /// Denials not answered: by this rule in shadow (or outside its rollout), or let
    /// through by the kill switch.
    pub(crate) shadow_denied: u64,
}

impl Counts {
    pub(crate) const NAMES: [&'static str; 4] = ["checks", "allowed", "denied", "shadow_denied"];

    pub(crate) fn get(&self, i: usize) -> u64 {
        [self.checks, self.allowed, self.denied, self.shadow_denied][i]
    }

    pub(crate) fn add_field(&mut self, name: &str, n: u64) {
        let slot = match name {
            "checks" => &mut self.checks,
            "allowed" => &mut self.allowed,
            "denied" => &mut self.denied,
            "shadow_denied" => &mut self.shadow_denied,
            _ => return,
        };
        *slot = slot.saturating_add(n);
    }

    fn add(&mut self, other: &Counts) {
        for (i, name) in Self::NAMES.iter().enumerate() {
            self.add_field(name, other.get(i));
        }
    }
}

/// One recorded denial, enforced or not. `client` is the keyed hash, never the raw ID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Violation {
    /// Milliseconds since the Unix epoch.
    pub(crate) time: u64,
    pub(crate) worker: String,
    /// The rule that denied; `null`: the tier's policy.
    pub(crate) rule: Option<String>,
    pub(crate) tier: Tier,
    pub(crate) resource: Option<String>,
    pub(crate) client: String,
    /// True when the denial was not answered (a shadow rule, or the kill switch).
    pub(crate) shadow: bool,
    pub(crate) retry_after_ms: Option<u64>,
}

/// A stats field: `<rule or "-">|<tier>|<counter>`. Rule names never hold `|`.
pub(crate) fn field(rule: Option<&str>, tier: Tier, counter: &str) -> String {
    format!("{}|{}|{counter}", rule.unwrap_or("-"), tier.as_str())
}

/// A field read back: rule, tier, counter.
pub(crate) fn parse_field(field: &str) -> Option<(Option<String>, Tier, &str)> {
    let mut parts = field.splitn(3, '|');
    let rule = parts.next()?;
    let tier = parts.next()?.parse().ok()?;
    let counter = parts.next()?;
    Some(((rule != "-").then(|| rule.to_owned()), tier, counter))
}

/// The counters waiting for the next flush, and the violations.
#[derive(Debug)]
pub(crate) struct Records {
    worker: String,
    pending: Mutex<HashMap<Option<String>, [Counts; 4]>>,
    waiting: Mutex<Vec<Violation>>,
    /// Violations dropped since the last flush because the per-second cap was reached.
    dropped: Mutex<u64>,
    per_second: usize,
    /// Without Redis: the worker's own series and violations.
    pub(crate) local: Mutex<Local>,
    /// Checks observed so far (for the heartbeat's rate).
    pub(crate) checks: std::sync::atomic::AtomicU64,
}

/// A worker's own records, when there is no Redis to share them through.
#[derive(Debug, Default)]
pub(crate) struct Local {
    /// (granularity in seconds, bucket start in seconds) → field → count.
    pub(crate) series: BTreeMap<(u64, u64), HashMap<String, u64>>,
    pub(crate) violations: VecDeque<Violation>,
    pub(crate) violations_max: usize,
}

/// What one flush takes out of the worker.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Field → count, for the current minute and hour.
    pub(crate) counts: Vec<(String, u64)>,
    pub(crate) violations: Vec<Violation>,
    /// Seconds since the epoch when taken.
    pub(crate) at: u64,
}

impl Records {
    pub(crate) fn new(worker: String, per_second: usize, violations_max: usize) -> Self {
        Self {
            worker,
            pending: Mutex::new(HashMap::new()),
            waiting: Mutex::new(Vec::new()),
            dropped: Mutex::new(0),
            per_second,
            local: Mutex::new(Local {
                violations_max,
                ..Local::default()
            }),
            checks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// This worker's name.
    pub(crate) fn worker(&self) -> &str {
        &self.worker
    }

    fn count(&self, rule: Option<&str>, tier: Tier, update: impl FnOnce(&mut Counts)) {
        let mut pending = self.pending.lock();
        // Looked up by reference: no allocation unless the rule is new since the last flush.
        let key = rule.map(str::to_owned);
        let slot = match pending.get_mut(&key) {
            Some(slot) => slot,
            None => pending.entry(key).or_default(),
        };
        update(&mut slot[tier as usize]);
    }

    fn violation(&self, query: &Query<'_>, denial: &limiter_rules::Violation<'_>) {
        let mut waiting = self.waiting.lock();
        if waiting.len() >= self.per_second {
            *self.dropped.lock() += 1;
            return;
        }
        waiting.push(Violation {
            time: now_ms(),
            worker: self.worker.clone(),
            rule: denial.rule.map(str::to_owned),
            tier: query.tier,
            // The rule's resource, never the request's: a path may hold identifiers.
            resource: denial.resource.map(str::to_owned),
            client: query.client.to_hex(),
            shadow: denial.shadow,
            retry_after_ms: denial.retry_after.map(ceil_millis),
        });
    }

    /// Takes what waits for the next flush.
    pub(crate) fn take(&self) -> Batch {
        let pending = std::mem::take(&mut *self.pending.lock());
        let violations = std::mem::take(&mut *self.waiting.lock());
        let dropped = std::mem::take(&mut *self.dropped.lock());
        if dropped > 0 {
            metrics::counter!("ratelimit_violations_dropped_total").increment(dropped);
        }
        let mut counts = Vec::new();
        for (rule, tiers) in &pending {
            for (tier, c) in Tier::ALL.into_iter().zip(tiers) {
                for (i, name) in Counts::NAMES.iter().enumerate() {
                    let n = c.get(i);
                    if n > 0 {
                        counts.push((field(rule.as_deref(), tier, name), n));
                    }
                }
            }
        }
        Batch {
            counts,
            violations,
            at: now_ms() / 1000,
        }
    }

    /// Puts back a batch that could not be flushed, so nothing is lost while Redis is
    /// down (the counters are bounded by rules × tiers; violations by the cap).
    pub(crate) fn put_back(&self, batch: Batch) {
        let mut pending = self.pending.lock();
        for (f, n) in batch.counts {
            if let Some((rule, tier, counter)) = parse_field(&f) {
                pending.entry(rule).or_default()[tier as usize].add_field(counter, n);
            }
        }
        drop(pending);
        let mut waiting = self.waiting.lock();
        let room = self.per_second.saturating_sub(waiting.len());
        waiting.extend(batch.violations.into_iter().take(room));
    }

    /// Without Redis: adds a batch to the worker's own series and ring.
    pub(crate) fn keep_locally(&self, batch: Batch) {
        let mut local = self.local.lock();
        for (granularity, kept) in [(60, MINUTES_KEPT), (3600, HOURS_KEPT)] {
            let bucket = batch.at / granularity * granularity;
            let fields = local.series.entry((granularity, bucket)).or_default();
            for (f, n) in &batch.counts {
                *fields.entry(f.clone()).or_default() += n;
            }
            let oldest = batch.at.saturating_sub(kept.as_secs());
            local
                .series
                .retain(|&(g, start), _| g != granularity || start + granularity > oldest);
        }
        let max = local.violations_max;
        for v in batch.violations {
            if local.violations.len() == max {
                local.violations.pop_front();
            }
            local.violations.push_back(v);
        }
    }
}

impl Observe for Records {
    fn observe(&self, query: &Query<'_>, verdict: &Verdict) {
        self.checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rule = verdict.rule.as_deref();
        let answered_denial = verdict.denied && verdict.enforced;
        self.count(rule, query.tier, |c| {
            c.checks += 1;
            if answered_denial {
                c.denied += 1;
            } else {
                c.allowed += 1;
            }
            if verdict.denied && !verdict.enforced {
                c.shadow_denied += 1;
            }
        });
        if let Some(shadow) = verdict.shadow.as_ref().filter(|s| !s.decision.allowed) {
            self.count(Some(&shadow.rule), query.tier, |c| c.shadow_denied += 1);
        }
        for denial in verdict.violations() {
            self.violation(query, &denial);
        }
    }
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Sums `fields` into per-(rule, tier) counts and a total, keeping those `keep` accepts.
pub(crate) fn tally<'a>(
    fields: impl IntoIterator<Item = (&'a str, u64)>,
    keep: &dyn Fn(Option<&str>, Tier) -> bool,
    by: &mut BTreeMap<(Option<String>, Tier), Counts>,
) -> Counts {
    let mut total = Counts::default();
    for (f, n) in fields {
        let Some((rule, tier, counter)) = parse_field(f) else {
            continue;
        };
        if !keep(rule.as_deref(), tier) {
            continue;
        }
        let mut one = Counts::default();
        one.add_field(counter, n);
        total.add(&one);
        by.entry((rule, tier)).or_default().add(&one);
    }
    total
}
