//! A keyspace in parts that fail independently: what a fallback needs to send only the
//! clients of an unreachable part elsewhere.

use std::ops::Range;

use async_trait::async_trait;

use crate::{ClientKey, Error};

/// The parts of a backend's keyspace that become unreachable independently, such as the
/// 16384 hash slots of a Redis Cluster, grouped by the master that owns them. A backend
/// offers it through [`RateLimiter::partitioning`](crate::RateLimiter::partitioning).
#[async_trait]
pub trait Partitioned: Send + Sync {
    /// How many parts there are.
    fn partitions(&self) -> usize;

    /// The part, below [`partitions`](Self::partitions), that holds `key`'s buckets.
    fn partition_of(&self, key: &ClientKey) -> usize;

    /// Whether part `partition` could decide now: one cheap round trip to where it lives.
    async fn ping_partition(&self, partition: usize) -> Result<(), Error>;

    /// The parts that live where `partition` does (every hash slot of the cluster master
    /// that owns it), as ranges that include `partition`: when one is unreachable, so are
    /// the others, and a fallback can send all their clients elsewhere at once instead of
    /// each finding out by a failed call. Default: `partition` alone.
    async fn colocated(&self, partition: usize) -> Vec<Range<usize>> {
        #[allow(
            clippy::single_range_in_vec_init,
            reason = "one range: the partition alone"
        )]
        let alone = vec![partition..partition + 1];
        alone
    }
}
