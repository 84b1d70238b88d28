//! Fleet membership: every worker beats once a second into Redis, saying what it is and
//! how it is doing; the live workers are those seen within the TTL. Plain commands, not a
//! script: the limiter's script calls stay the only ones (what its cost figures count).
//!
//! Keys: a sorted set of worker IDs scored by when each was last seen (Redis's clock, in
//! milliseconds, so workers' clocks need not agree), and a hash of what each said of
//! itself. A beat forgets the workers not seen within the TTL, in the same transaction
//! that records it; both keys expire when no worker is left to beat.
//! The count a worker last saw divides its limits while Redis is away
//! ([`Fallback::set_fleet_size`](limiter_fallback::Fallback::set_fleet_size)).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use limiter_redis::redis;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::records::now_ms;

/// Last seen, by worker: a sorted set of IDs scored by milliseconds.
pub(crate) const WORKERS_KEY: &str = "rl:{admin}:workers";
/// What each worker said of itself (JSON), by ID.
pub(crate) const WORKER_INFO_KEY: &str = "rl:{admin}:workers:info";
/// How often a worker beats.
pub(crate) const BEAT: Duration = Duration::from_secs(1);

/// One worker, as it describes itself in its heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Member {
    /// The worker's name (`worker_name`, or the host name and process ID).
    pub(crate) id: String,
    /// The address its check API listens on.
    pub(crate) address: Option<String>,
    /// Its `ratelimitd` version.
    pub(crate) version: String,
    /// When it started, in milliseconds since the Unix epoch.
    pub(crate) started_ms: u64,
    /// `redis`, `fallback` (deciding from memory, all or part of the keyspace), `memory`.
    pub(crate) backend: String,
    /// The share of the keyspace it decides from memory, 0 to 1.
    pub(crate) degraded_share: f64,
    /// Checks it decided per second, over its last beat.
    pub(crate) checks_per_sec: f64,
    /// Whether it is tightening limits under load.
    pub(crate) throttling: bool,
    /// The live workers it last saw (what its limits are divided by in an outage).
    pub(crate) fleet_size: u32,
    /// When it was last seen, in milliseconds since the Unix epoch (filled when listed).
    #[serde(default)]
    pub(crate) last_seen: u64,
}

/// This worker's side of membership.
#[derive(Debug)]
pub(crate) struct Members {
    id: String,
    started_ms: u64,
    address: Mutex<Option<String>>,
    ttl: Duration,
    /// The live workers last seen; 1 (this one) until Redis says.
    seen: AtomicU32,
    /// Checks counted at the last beat, and when.
    last: Mutex<(Instant, u64)>,
}

impl Members {
    pub(crate) fn new(id: String, ttl: Duration) -> Self {
        Self {
            id,
            started_ms: now_ms(),
            address: Mutex::new(None),
            ttl,
            seen: AtomicU32::new(1),
            last: Mutex::new((Instant::now(), 0)),
        }
    }

    /// The address to advertise, once the listener is bound.
    pub(crate) fn advertise(&self, address: String) {
        *self.address.lock() = Some(address);
    }

    /// The live workers last seen.
    pub(crate) fn seen(&self) -> u32 {
        self.seen.load(Ordering::Relaxed)
    }

    /// This worker now: `backend` and `degraded_share` from its fallback, `checks` the
    /// checks it decided so far.
    pub(crate) fn me(
        &self,
        backend: &str,
        degraded_share: f64,
        checks: u64,
        throttling: bool,
    ) -> Member {
        let checks_per_sec = {
            let mut last = self.last.lock();
            let elapsed = last.0.elapsed().as_secs_f64();
            let rate = if elapsed > 0.0 {
                checks.saturating_sub(last.1) as f64 / elapsed
            } else {
                0.0
            };
            *last = (Instant::now(), checks);
            rate
        };
        Member {
            id: self.id.clone(),
            address: self.address.lock().clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_ms: self.started_ms,
            backend: backend.to_owned(),
            degraded_share,
            checks_per_sec: (checks_per_sec * 10.0).round() / 10.0,
            throttling,
            fleet_size: self.seen(),
            last_seen: now_ms(),
        }
    }

    /// Records `me` as live; answers the live workers' count and remembers it.
    pub(crate) async fn beat(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        me: &Member,
    ) -> redis::RedisResult<u32> {
        let ttl = ttl_ms(self.ttl);
        let now = redis_now_ms(conn).await?;
        let cutoff = now.saturating_sub(ttl);
        let json = serde_json::to_string(me).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("ZRANGEBYSCORE")
            .arg(WORKERS_KEY)
            .arg("-inf")
            .arg(format!("({cutoff}"));
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(WORKERS_KEY)
            .arg("-inf")
            .arg(format!("({cutoff}"))
            .ignore();
        pipe.cmd("ZADD")
            .arg(WORKERS_KEY)
            .arg(now)
            .arg(&self.id)
            .ignore();
        pipe.cmd("HSET")
            .arg(WORKER_INFO_KEY)
            .arg(&self.id)
            .arg(json)
            .ignore();
        for key in [WORKERS_KEY, WORKER_INFO_KEY] {
            pipe.cmd("PEXPIRE")
                .arg(key)
                .arg(ttl.saturating_mul(2))
                .ignore();
        }
        pipe.cmd("ZCARD").arg(WORKERS_KEY);
        let (gone, live): (Vec<String>, u32) = pipe.query_async(conn).await?;
        if !gone.is_empty() {
            // What the workers gone said of themselves (a worker back since then says it
            // again at its next beat).
            let () = redis::cmd("HDEL")
                .arg(WORKER_INFO_KEY)
                .arg(&gone)
                .query_async(conn)
                .await?;
        }
        self.seen.store(live.max(1), Ordering::Relaxed);
        Ok(live)
    }

    /// The live workers, by ID.
    pub(crate) async fn list(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> redis::RedisResult<Vec<Member>> {
        let cutoff = redis_now_ms(conn).await?.saturating_sub(ttl_ms(self.ttl));
        let live: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(WORKERS_KEY)
            .arg(cutoff)
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = live.iter().map(|(id, _)| id.as_str()).collect();
        let infos: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(WORKER_INFO_KEY)
            .arg(&ids)
            .query_async(conn)
            .await?;
        let mut members = Vec::with_capacity(live.len());
        for ((id, seen), info) in live.into_iter().zip(infos) {
            // A worker of another version may say more or less: what parses is shown.
            let Some(Ok(mut member)) = info.map(|json| serde_json::from_str::<Member>(&json))
            else {
                tracing::debug!(worker = %id, "a heartbeat that does not parse");
                continue;
            };
            member.id = id;
            member.last_seen = seen as u64;
            members.push(member);
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(members)
    }
}

/// Redis's clock, in milliseconds: one clock for the whole fleet, whatever the workers'
/// own say.
async fn redis_now_ms(conn: &mut impl redis::aio::ConnectionLike) -> redis::RedisResult<u64> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(secs.saturating_mul(1000).saturating_add(micros / 1000))
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}
