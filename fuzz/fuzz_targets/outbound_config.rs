//! The outbound configuration as a file gives it (TOML): refused with an error, or valid,
//! and then a pacer builds from it; never a panic. A valid configuration prints to TOML
//! that reads back the same.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use limiter_core::RateLimiter;
use limiter_memory::{MemoryConfig, MemoryLimiter};
use limiter_outbound::{OutboundConfig, Pacer};

fn limiter() -> Arc<dyn RateLimiter> {
    static LIMITER: OnceLock<Arc<MemoryLimiter>> = OnceLock::new();
    LIMITER
        .get_or_init(|| Arc::new(MemoryLimiter::new(MemoryConfig::default()).expect("a limiter")))
        .clone()
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(config) = toml::from_str::<OutboundConfig>(text) else {
        return;
    };
    if config.validate().is_err() {
        return;
    }
    if let Err(e) = Pacer::new(&config, limiter()) {
        panic!("a valid configuration does not build: {e}");
    }
    let printed = toml::to_string(&config).expect("a valid configuration prints");
    let again: OutboundConfig = toml::from_str(&printed).expect("a printed configuration parses");
    assert_eq!(again, config);
});
