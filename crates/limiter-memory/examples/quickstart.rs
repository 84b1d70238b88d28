//! Rate-limits a burst of requests from a few clients with the default tier policies and
//! prints each decision. Run: `cargo run --release -p limiter-memory --example quickstart`.

use limiter_core::{ClientKeyHasher, RateLimiter, Tier, TierPolicies};
use limiter_memory::{MemoryConfig, MemoryLimiter};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), limiter_core::Error> {
    let limiter = MemoryLimiter::new(MemoryConfig::default())?;
    let tiers = TierPolicies::default();
    // Every worker of a deployment shares this secret; never log it or the raw IDs.
    let hasher = ClientKeyHasher::new(b"example secret, replace in production")?;

    for (client, tier, requests) in [
        ("203.0.113.9", Tier::Anonymous, 102),
        ("key-for-a-partner", Tier::ApiKey, 3),
        ("ops", Tier::Admin, 2),
    ] {
        let key = hasher.hash(client);
        let policy = tiers.get(tier);
        let (mut allowed, mut last) = (0, None);
        for _ in 0..requests {
            let decision = limiter.check(&key, policy, 1).await?;
            allowed += u32::from(decision.allowed);
            last = Some(decision);
        }
        if let Some(d) = last {
            let remaining = match d.quota {
                Some(_) => d.remaining.to_string(),
                None => "unlimited".to_owned(),
            };
            println!(
                "{tier:<9} client {key}: {allowed}/{requests} allowed; last: allowed={} \
                 remaining={remaining} retry_after={:?} backend={}",
                d.allowed,
                d.retry_after,
                d.backend.as_str(),
            );
        }
    }
    Ok(())
}
