//! Shared by the Redis integration tests: a real Redis (`REDIS_URL` or a container) and the
//! helpers to look inside it, from `limiter-test-support`.

#![allow(
    unused_imports,
    unreachable_pub,
    reason = "each test file uses a different part"
)]

pub use limiter_test_support::*;
