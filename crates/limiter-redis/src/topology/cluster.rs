//! Redis Cluster: the client that follows the cluster's slots, and the keyspace's parts for
//! a fallback (a master's hash slots go to the fallback together).

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_redis::redis::Value;
use deadpool_redis::redis::cluster::ClusterClientBuilder;
use deadpool_redis::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use limiter_core::{ClientKey, Error, Partitioned};

use super::{Conn, Source, nodes};
use crate::connection::Inner;
use crate::script::{FORMAT, key};
use crate::{RedisConfig, redacted};

/// Retries of a cluster command (redirections, reconnections).
const CLUSTER_RETRIES: u32 = 3;
/// Backoff bounds between those retries, in milliseconds.
const CLUSTER_MIN_RETRY_WAIT_MS: u64 = 10;
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 100;

/// A cluster client for the seeds of `config.url`.
pub(super) fn source(config: &RedisConfig) -> Result<Source, Error> {
    let nodes = nodes(&config.url)?;
    if !nodes.path.is_empty() {
        return Err(Error::config(format_args!(
            "url {}: a cluster has no database number or path",
            redacted(&config.url)
        )));
    }
    let client = ClusterClientBuilder::new(nodes.urls)
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.response_timeout)
        // Redirections (MOVED, ASK) and reconnections are retried by the client,
        // briefly: every check is bounded by `timeout` anyway, and a fallback
        // answers sooner than a long retry would.
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(CLUSTER_MIN_RETRY_WAIT_MS)
        .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS)
        .build()
        .map_err(|e| Error::config(format_args!("url {}: {e}", redacted(&config.url))))?;
    Ok(Source::Cluster(client))
}

/// Hash slots of a Redis Cluster.
pub(crate) const SLOTS: usize = 16384;

/// The key a probe of `slot` runs the script on, `rl:{<tag>}:probe:v2`: no client's
/// (clients' tags are 32 hex digits), and it lives two milliseconds.
pub(crate) fn slot_probe_key(slot: u16) -> String {
    key(slot_tag(slot), format_args!("probe:{FORMAT}"))
}

/// A hash tag whose slot is `slot`: the smallest number, in hex, that CRC16 maps there.
fn slot_tag(slot: u16) -> String {
    static TAGS: std::sync::OnceLock<Box<[u32]>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        // About 170,000 CRC16s of short strings until every slot is hit: a few ms, once.
        let mut tags = vec![u32::MAX; SLOTS];
        let mut missing = SLOTS;
        let mut n = 0u32;
        while missing > 0 {
            let tag = format!("{n:x}");
            let s = usize::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % 16384);
            if tags[s] == u32::MAX {
                tags[s] = n;
                missing -= 1;
            }
            n += 1;
        }
        tags.into_boxed_slice()
    });
    format!("{:x}", tags[usize::from(slot) % SLOTS])
}

impl Conn {
    /// `CLUSTER SLOTS` as (first slot, last slot, master "host:port"), asked of a random node,
    /// up to three of them; `None` if none answers or this is not a cluster.
    pub(crate) async fn slot_owners(self) -> Option<Vec<(usize, usize, String)>> {
        let Conn::Cluster(mut conn) = self else {
            return None;
        };
        for _ in 0..3 {
            let mut cmd = deadpool_redis::redis::cmd("CLUSTER");
            cmd.arg("SLOTS");
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
            if let Ok(Value::Array(ranges)) = conn.route_command(cmd, route).await {
                return Some(ranges.iter().filter_map(slot_range).collect());
            }
        }
        None
    }
}

/// One entry of `CLUSTER SLOTS`: `[start, end, [host, port, id…], replicas…]`.
fn slot_range(entry: &Value) -> Option<(usize, usize, String)> {
    let Value::Array(fields) = entry else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(n) => usize::try_from(*n).ok(),
        _ => None,
    };
    let (start, end) = (int(fields.first()?)?, int(fields.get(1)?)?);
    let Value::Array(master) = fields.get(2)? else {
        return None;
    };
    let host = match master.first()? {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    Some((start, end, format!("{host}:{}", int(master.get(1)?)?)))
}

/// The slot ranges owned by the master of `slot`, from `CLUSTER SLOTS` entries.
pub(crate) fn colocated(
    owners: &[(usize, usize, String)],
    slot: usize,
) -> Option<Vec<std::ops::Range<usize>>> {
    let (_, _, master) = owners.iter().find(|(a, b, _)| (*a..=*b).contains(&slot))?;
    Some(
        owners
            .iter()
            .filter(|(_, _, m)| m == master)
            .map(|(a, b, _)| *a..*b + 1)
            .collect(),
    )
}

/// The Redis Cluster hash slot of every key of `client`: CRC16 (XMODEM) of the hash tag's
/// content, the client's hex hash, modulo 16384.
pub fn hash_slot(client: &ClientKey) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(&client.hex_digits()) % 16384
}

/// A cluster's keyspace in parts: what [`RedisLimiter`](crate::RedisLimiter) offers a
/// fallback on a cluster, and only there.
pub(crate) struct Slots(pub(crate) Arc<Inner>);

#[async_trait]
impl Partitioned for Slots {
    /// The 16384 hash slots.
    fn partitions(&self) -> usize {
        SLOTS
    }

    /// The client's [`hash_slot`].
    fn partition_of(&self, key: &ClientKey) -> usize {
        usize::from(hash_slot(key))
    }

    /// One check of the script on a probe key of the slot, answered only by the master that
    /// owns it now and only if it can decide (reads, writes, the script).
    async fn ping_partition(&self, partition: usize) -> Result<(), Error> {
        let Ok(slot) = u16::try_from(partition) else {
            return Err(Error::config(format_args!("no hash slot {partition}")));
        };
        let inner = &self.0;
        let probe = inner.probe(inner.next_connection(), slot_probe_key(slot));
        tokio::time::timeout(inner.config.timeout, probe)
            .await
            .map_err(|_| inner.timed_out())?
    }

    /// Every slot range of the master that owns `partition`, read from `CLUSTER SLOTS`
    /// (asked of any node that answers); `partition` alone if none does.
    async fn colocated(&self, partition: usize) -> Vec<Range<usize>> {
        #[allow(
            clippy::single_range_in_vec_init,
            reason = "one range: the partition alone"
        )]
        let alone = vec![partition..partition + 1];
        let inner = &self.0;
        let i = inner.next_connection();
        let ask = async {
            let (_, conn) = inner.connection(i).await.ok()?;
            conn.slot_owners().await
        };
        match tokio::time::timeout(inner.config.timeout, ask).await {
            Ok(Some(owners)) => colocated(&owners, partition).unwrap_or(alone),
            _ => alone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colocated_slots_are_every_range_of_the_same_master() {
        let owners = vec![
            (0, 100, "a:1".to_owned()),
            (101, 200, "b:2".to_owned()),
            (201, 300, "a:1".to_owned()),
        ];
        assert_eq!(colocated(&owners, 250), Some(vec![0..101, 201..301]));
        assert_eq!(
            colocated(&owners, 150),
            Some(std::iter::once(101..201).collect())
        );
        assert_eq!(colocated(&owners, 400), None, "an unowned slot");
    }

    #[test]
    fn every_slot_has_a_tag_of_its_own() {
        let slot = |s: &str| crc16::State::<crc16::XMODEM>::calculate(s.as_bytes()) % 16384;
        for s in [0u16, 1, 5460, 5461, 10922, 16383] {
            assert_eq!(slot(&slot_tag(s)), s);
        }
    }

    #[test]
    fn slots_are_redis_cluster_keyslots() {
        // The values `CLUSTER KEYSLOT` gives, from Redis's documentation.
        let slot = |s: &str| crc16::State::<crc16::XMODEM>::calculate(s.as_bytes()) % 16384;
        assert_eq!(slot("somekey"), 11058);
        assert_eq!(slot("hash_tag"), 2515);
        let key = ClientKey::from(1);
        assert_eq!(hash_slot(&key), slot(&key.to_string()));
    }
}
