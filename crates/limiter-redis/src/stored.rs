//! A bucket as the script stores it, and the expiry it gives the key: the stored half of
//! `lua/token_bucket.lua`'s contract, for tools and tests that read or write buckets.

use limiter_core::{MAX_WAIT_US, Quota};

/// One bucket's stored value: 24 bytes, three little-endian IEEE-754 doubles (Lua's
/// `struct.pack('<ddd', level, updated, expires)`), each an integer below 2^53.
///
/// Packed rather than written as text: formatting and parsing three numbers took more of
/// Redis's time per decision than the whole of the bucket's math, and the value now fits
/// Redis's one-allocation string encoding. To read one by hand:
///
/// ```text
/// redis-cli EVAL "return {struct.unpack('<ddd', redis.call('GET', KEYS[1]))}" 1 '<key>'
/// ```
///
/// which prints the level, the stamp and the expiry (and the unpacker's next offset, 25).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredBucket {
    /// Units in the bucket at `updated`.
    pub level: u64,
    /// When `level` was measured, in µs of Redis's `TIME`: a multiple of the quota's tick.
    pub updated: u64,
    /// When the key expires, in ms of Redis's `TIME`: the key's own `PXAT`, which the script
    /// keeps (`KEEPTTL`) while it outlasts the bucket's time to full.
    pub expires_ms: u64,
}

/// The largest integer a double holds exactly, plus one.
const EXACT: u64 = 1 << 53;

impl StoredBucket {
    /// Bytes in a stored value.
    pub const LEN: usize = 24;

    /// The stored value, as the script packs it.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0; Self::LEN];
        for (chunk, value) in
            out.chunks_exact_mut(8)
                .zip([self.level, self.updated, self.expires_ms])
        {
            // Every stored figure is below 2^53, so the conversion is exact.
            #[allow(clippy::cast_precision_loss, reason = "below 2^53: exact")]
            chunk.copy_from_slice(&(value as f64).to_le_bytes());
        }
        out
    }

    /// The bucket in `bytes`; `None` unless they are three doubles that are whole numbers
    /// from 0 to 2^53.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; Self::LEN] = bytes.try_into().ok()?;
        let mut values = [0u64; 3];
        for (value, chunk) in values.iter_mut().zip(bytes.chunks_exact(8)) {
            let x = f64::from_le_bytes(chunk.try_into().ok()?);
            if !(0.0..=EXACT as f64).contains(&x) || x.fract() != 0.0 {
                return None;
            }
            // A whole number in range, checked above.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a whole number from 0 to 2^53, checked above"
            )]
            {
                *value = x as u64;
            }
        }
        let [level, updated, expires_ms] = values;
        Some(Self {
            level,
            updated,
            expires_ms,
        })
    }
}

/// What the script does with a key's expiry when it writes a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// `SET … KEEPTTL`: the key's expiry outlasts the bucket's time to full.
    Keep,
    /// `SET … PXAT ms`: a new expiry, in ms of Redis time.
    At(u64),
}

impl Expiry {
    /// The script's rule, for a bucket of `quota` written at `now` (µs) with `level` units
    /// and stamped at tick `stamp`, whose key expires at `kept_ms` (0 for a new key).
    ///
    /// `full` is the µs the bucket is full again, `(stamp + ⌈(max − level) / refill⌉) ×
    /// tick`, at most 2^51 µs after `now`. The key keeps its expiry while `kept_ms × 1000 ≥
    /// full`; otherwise it gets `⌈(2 × full − now) / 1000⌉`: twice the time to full, from
    /// now. So a key never expires before its bucket is full (forgetting it then loses
    /// nothing), and a busy bucket's writes mostly keep their expiry, which costs Redis far
    /// less than setting one. An idle key lives at most twice the longest time to full its
    /// bucket had since its expiry was set, plus a millisecond.
    pub fn of(quota: &Quota, level: u64, stamp: u64, now: u64, kept_ms: u64) -> Self {
        let missing = quota.max_level().saturating_sub(level);
        let end = (u128::from(stamp) + u128::from(missing.div_ceil(quota.refill())))
            * u128::from(quota.tick());
        let full = end.min(u128::from(now) + u128::from(MAX_WAIT_US));
        if u128::from(kept_ms) * 1_000 >= full {
            return Self::Keep;
        }
        let at = (2 * full).saturating_sub(u128::from(now)).div_ceil(1_000);
        // At most (now + 2^52) / 1000 for a `now` below 2^53.
        Self::At(u64::try_from(at).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn values_round_trip_and_anything_else_is_refused() {
        let b = StoredBucket {
            level: 999_999_999_000_000,
            updated: 1_796_232_460_540_357,
            expires_ms: 1_796_232_462_541,
        };
        assert_eq!(StoredBucket::decode(&b.encode()), Some(b));
        let max = StoredBucket {
            level: EXACT,
            updated: 0,
            expires_ms: 0,
        };
        assert_eq!(StoredBucket::decode(&max.encode()), Some(max));
        assert_eq!(StoredBucket::decode(b"123 456"), None);
        assert_eq!(StoredBucket::decode(&[0; 23]), None);
        for bad in [-1.0, 0.5, f64::NAN, f64::INFINITY, 2f64.powi(54)] {
            let mut bytes = b.encode();
            bytes[8..16].copy_from_slice(&f64::to_le_bytes(bad));
            assert_eq!(StoredBucket::decode(&bytes), None, "{bad}");
        }
    }

    #[test]
    fn a_key_outlives_its_bucket_by_at_most_twice_its_time_to_full() {
        // 10 per second: one token takes 100 ms to come back.
        let q = Quota::per_second(10).unwrap();
        let now = 1_796_232_460_540_357;
        let one_token = q.max_level() - q.unit();
        // A new key: full 100 ms from now, so it expires 200 ms from now (rounded up).
        let full = now + 100_000;
        assert_eq!(
            Expiry::of(&q, one_token, now, now, 0),
            Expiry::At((2 * full - now).div_ceil(1_000))
        );
        // An expiry at or after `full` is kept; one a microsecond short is not.
        assert_eq!(
            Expiry::of(&q, one_token, now, now, full.div_ceil(1_000)),
            Expiry::Keep
        );
        assert!(matches!(
            Expiry::of(&q, one_token, now, now, full / 1_000 - 1),
            Expiry::At(_)
        ));
        // A stamp later than now (time stepped back) counts from the stamp.
        let later = now + 60_000_000;
        assert_eq!(
            Expiry::of(&q, one_token, later, now, 0),
            Expiry::At((2 * (later + 100_000) - now).div_ceil(1_000))
        );
        // Coarse ticks count in ticks; waits stop at 2^51 µs.
        let slow = Quota::new(1, Duration::from_secs(86_400))
            .unwrap()
            .allow_burst(1_000_000_000)
            .unwrap();
        let Expiry::At(at) = Expiry::of(&slow, 0, slow.ticks(now), now, 0) else {
            panic!("a new key gets an expiry");
        };
        assert_eq!(at, (now + 2 * MAX_WAIT_US).div_ceil(1_000));
    }
}
