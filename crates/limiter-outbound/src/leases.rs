//! In-flight caps: leases, fleet-wide in Redis (`lua/outbound_lease.lua`), that expire if a
//! worker dies and are renewed while their request lives; a local semaphore per host (and
//! one for all) while Redis is unavailable or absent.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use limiter_redis::RedisLimiter;

use crate::shared::SharedRedis;
use limiter_redis::redis::{self, Script};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The lease script.
const LEASE_SCRIPT: &str = include_str!("../../../lua/outbound_lease.lua");
/// How often a full cap is asked again (a release is not announced).
const POLL: Duration = Duration::from_millis(10);
/// The longest a lease call may take before Redis counts as down.
const DEADLINE: Duration = Duration::from_millis(100);

fn host_key(authority: &str) -> String {
    format!("rl:out:{{outbound-leases}}:host:{authority}")
}

const TOTAL_KEY: &str = "rl:out:{outbound-leases}:all";

/// The in-flight caps of every host.
#[derive(Debug)]
pub(crate) struct Leases {
    redis: Option<SharedRedis>,
    ttl: Duration,
    total: Option<u32>,
    local_total: Option<Arc<Semaphore>>,
    local_hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    next_id: AtomicU64,
    prefix: String,
}

/// One request's place under the caps; given back when dropped.
#[derive(Debug)]
pub struct Lease {
    host: String,
    _local: Vec<OwnedSemaphorePermit>,
    _shared: Option<Shared>,
}

impl Lease {
    fn new(host: &str, local: Vec<OwnedSemaphorePermit>, shared: Option<Shared>) -> Self {
        metrics::gauge!("outbound_in_flight", "host" => host.to_owned()).increment(1.0);
        Self {
            host: host.to_owned(),
            _local: local,
            _shared: shared,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        metrics::gauge!("outbound_in_flight", "host" => self.host.clone()).decrement(1.0);
    }
}

#[derive(Debug)]
struct Shared {
    redis: Arc<RedisLimiter>,
    keys: Vec<String>,
    id: String,
    renew: tokio::task::JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.renew.abort();
        release(&self.redis, &self.keys, &self.id);
    }
}

/// A lease asked for whose answer is not in yet: if the call times out or its caller
/// gives up, the lease may have been taken all the same, so it is released.
struct Asking<'a> {
    redis: &'a Arc<RedisLimiter>,
    keys: &'a [String],
    id: &'a str,
    armed: bool,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if self.armed {
            release(self.redis, self.keys, self.id);
        }
    }
}

/// Removes lease `id` from `keys`, in the background.
fn release(redis: &Arc<RedisLimiter>, keys: &[String], id: &str) {
    {
        let (redis, keys, id) = (Arc::clone(redis), keys.to_vec(), id.to_owned());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let release = async {
                    let mut conn = redis.connection().await.ok()?;
                    let mut pipe = redis::pipe();
                    for key in &keys {
                        pipe.cmd("ZREM").arg(key).arg(&id).ignore();
                    }
                    pipe.query_async::<()>(&mut conn).await.ok()
                };
                // Not released in time: it expires by itself.
                let _ = tokio::time::timeout(DEADLINE, release).await;
            });
        }
    }
}

impl Leases {
    pub(crate) fn new(redis: Option<Arc<RedisLimiter>>, ttl: Duration, total: Option<u32>) -> Self {
        let mut salt = [0u8; 8];
        // Ids only need to differ between processes; time will do if randomness does not.
        if getrandom::fill(&mut salt).is_err() {
            salt = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                .to_le_bytes();
        }
        Self {
            redis: redis.map(|r| SharedRedis::new(r, LEASE_SCRIPT)),
            ttl,
            total,
            local_total: total.map(|n| Arc::new(Semaphore::new(n as usize))),
            local_hosts: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            prefix: format!("{}-{:016x}", std::process::id(), u64::from_le_bytes(salt)),
        }
    }

    fn shared(&self) -> Option<&(Arc<RedisLimiter>, Script)> {
        self.redis.as_ref().and_then(SharedRedis::get)
    }

    fn failed(&self) {
        if let Some(redis) = &self.redis {
            redis.failed();
        }
    }

    /// A lease under `authority`'s cap (`None`: uncapped) and the cap on all, waiting until
    /// `deadline` at most; `Ok(None)` when nothing caps the request; `Err(())` when no
    /// place came in time.
    pub(crate) async fn acquire(
        &self,
        authority: &str,
        cap: Option<u32>,
        deadline: Instant,
    ) -> Result<Option<Lease>, ()> {
        if cap.is_none() && self.total.is_none() {
            return Ok(None);
        }
        if let Some((redis, script)) = self.shared() {
            match self
                .acquire_shared(redis, script, authority, cap, deadline)
                .await
            {
                Ok(lease) => return Ok(Some(lease)),
                Err(Some(())) => return Err(()),
                // Redis failed: this process's own caps decide.
                Err(None) => self.failed(),
            }
        }
        self.acquire_local(authority, cap, deadline).await.map(Some)
    }

    /// `Err(Some(()))`: no place in time; `Err(None)`: Redis failed.
    async fn acquire_shared(
        &self,
        redis: &Arc<RedisLimiter>,
        script: &Script,
        authority: &str,
        cap: Option<u32>,
        deadline: Instant,
    ) -> Result<Lease, Option<()>> {
        let id = format!(
            "{}-{}",
            self.prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let keys = vec![host_key(authority), TOTAL_KEY.to_owned()];
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut delay = POLL;
        loop {
            let mut asking = Asking {
                redis,
                keys: &keys,
                id: &id,
                armed: true,
            };
            let call = async {
                let mut conn = redis.connection().await.ok()?;
                script
                    .key(&keys[0])
                    .key(&keys[1])
                    .arg(&id)
                    .arg(ttl_ms)
                    .arg(cap.unwrap_or(0))
                    .arg(self.total.unwrap_or(0))
                    .invoke_async::<(u8, u64)>(&mut conn)
                    .await
                    .ok()
            };
            match tokio::time::timeout(DEADLINE, call).await.ok().flatten() {
                None => return Err(None),
                Some((1, _)) => {
                    asking.armed = false;
                    drop(asking);
                    let renew =
                        tokio::spawn(renew(Arc::clone(redis), keys.clone(), id.clone(), self.ttl));
                    let shared = Shared {
                        redis: Arc::clone(redis),
                        keys,
                        id,
                        renew,
                    };
                    return Ok(Lease::new(authority, Vec::new(), Some(shared)));
                }
                Some((_, wait_ms)) => {
                    // Refused: nothing was taken.
                    asking.armed = false;
                    drop(asking);
                    // Asked again sooner than the earliest expiry (a release is not
                    // announced), backing off while the cap stays full.
                    let wait = Duration::from_millis(wait_ms).min(delay);
                    delay = (delay * 2).min(Duration::from_millis(200));
                    if Instant::now() + wait > deadline {
                        return Err(Some(()));
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn acquire_local(
        &self,
        authority: &str,
        cap: Option<u32>,
        deadline: Instant,
    ) -> Result<Lease, ()> {
        let mut permits = Vec::new();
        if let Some(cap) = cap {
            let semaphore = {
                let mut hosts = self.local_hosts.lock();
                // Semaphores with every permit back are forgotten: a crawler of many hosts
                // keeps only the busy ones.
                if hosts.len() > 1024 {
                    hosts.retain(|_, s| {
                        s.available_permits() < cap as usize || Arc::strong_count(s) > 1
                    });
                }
                Arc::clone(
                    hosts
                        .entry(authority.to_owned())
                        .or_insert_with(|| Arc::new(Semaphore::new(cap as usize))),
                )
            };
            let permit = tokio::time::timeout_at(deadline, semaphore.acquire_owned()).await;
            permits.push(permit.map_err(|_| ())?.map_err(|_| ())?);
        }
        if let Some(total) = &self.local_total {
            let permit = tokio::time::timeout_at(deadline, Arc::clone(total).acquire_owned()).await;
            permits.push(permit.map_err(|_| ())?.map_err(|_| ())?);
        }
        Ok(Lease::new(authority, permits, None))
    }
}

/// Keeps a lease alive while its request lives: its expiry moved a time to live ahead,
/// every third of one.
async fn renew(redis: Arc<RedisLimiter>, keys: Vec<String>, id: String, ttl: Duration) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let extend = async {
            let mut conn = redis.connection().await.ok()?;
            let t: (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.ok()?;
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            let expiry = t.0 * 1000 + t.1 / 1000 + ttl_ms;
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("ZADD")
                    .arg(key)
                    .arg("XX")
                    .arg(expiry)
                    .arg(&id)
                    .ignore();
                // The set outlives its longest lease: a long download keeps it.
                pipe.cmd("PEXPIRE")
                    .arg(key)
                    .arg(ttl_ms.saturating_mul(2))
                    .arg("GT")
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await.ok()
        };
        let _ = tokio::time::timeout(DEADLINE, extend).await;
    }
}
