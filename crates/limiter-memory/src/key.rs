//! Buckets' identities in 96 bits, and the shard each lives in.

use limiter_core::{ClientKey, Policy};

/// A bucket's identity in 96 bits, drawn from the 128-bit client key, the policy id and the
/// quota's index. Keys that differ only in their high or only in their low 64 bits never
/// meet (each half enters through a bijection); otherwise two buckets share an identity with
/// a chance of about 2^-96 per pair (2^-57 for a million buckets), whatever the structure
/// of the keys: client keys are HMAC output, but tests and benchmarks build them from
/// integers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct BucketKey(pub(crate) [u32; 3]);

impl BucketKey {
    /// The key of a client's first quota under `policy`; its hash also picks the shard.
    pub(crate) fn client(key: &ClientKey, policy: &Policy) -> Self {
        let client = key.as_u128();
        let (hi, lo) = ((client >> 64) as u64, client as u64);
        let p = policy.id();
        let top = hi ^ mix64(lo ^ p);
        let low = (lo ^ (lo >> 32)) as u32 ^ (p >> 32) as u32;
        Self([(top >> 32) as u32, top as u32, low])
    }

    /// The key of quota `index` of the same client and policy.
    pub(crate) fn quota(self, index: usize) -> Self {
        let [a, b, c] = self.0;
        Self([a, b, c ^ (index as u32).wrapping_mul(0x9e37_79b9)])
    }

    /// A well-spread hash for the shard and the table.
    pub(crate) fn hash(self) -> u64 {
        let [a, b, c] = self.0;
        mix64(((u64::from(a) << 32) | u64::from(b)) ^ u64::from(c).rotate_left(17))
    }
}

/// splitmix64's finalizer: a bijection on u64 whose every output bit depends on every input
/// bit.
fn mix64(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The shard of a hash, from bits 32 and up: a shard's table takes its slot index from the
/// low bits and a tag from the top 7, so the shard must use neither or they would be
/// constant within a shard.
pub(crate) fn shard_index(hash: u64, bits: u32) -> usize {
    ((hash >> 32) & ((1 << bits) - 1)) as usize
}
