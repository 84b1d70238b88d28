//! [`RateLimitLayer`]: the middleware's settings, and the layer that makes the service.

use std::fmt;
use std::num::NonZeroU64;
use std::sync::Arc;

use http::request::Parts;
use limiter_core::{ClientKeyHasher, Decision, Policy, RateLimiter, TierPolicies};
use limiter_rules::{Observe, Rules};
use tower_layer::Layer;

use crate::identify::{ClientIp, Identify};
use crate::service::{RateLimit, Shared, path_resource, tier_limits};

/// What a guarded route answers when the limiter cannot decide (an error that is not a
/// denial; with a `Fallback` backend, outages are decided in memory and never get here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// Serve the request without rate-limit headers (fail open). The default.
    #[default]
    Allow,
    /// Answer 503 with `Retry-After: 1` (fail closed).
    Deny,
}

/// Applies [`RateLimit`] to a service: every request is identified, checked against its
/// tier's policy, and either served with rate-limit headers or answered 429.
///
/// ```
/// use std::sync::Arc;
///
/// use axum::{Router, routing::get};
/// use limiter_core::ClientKeyHasher;
/// use limiter_http::{ApiKeyOrIp, ApiKeys, ClientIp, RateLimitLayer};
/// use limiter_memory::{MemoryConfig, MemoryLimiter};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let limiter = Arc::new(MemoryLimiter::new(MemoryConfig::default())?);
/// let hasher = ClientKeyHasher::new(b"the deployment's shared secret")?;
/// let who = ApiKeyOrIp::new(ApiKeys::new(), ClientIp::new().trust_proxies(["10.0.0.0/8".parse()?]));
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(RateLimitLayer::new(limiter, hasher).identify(who));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct RateLimitLayer {
    shared: Shared,
}

impl RateLimitLayer {
    /// Checks requests with `limiter`, hashing client IDs with `hasher`. Defaults: the
    /// default tier policies, clients known by peer address (no trusted proxies), cost 1,
    /// [`OnError::Allow`].
    pub fn new(limiter: Arc<dyn RateLimiter>, hasher: ClientKeyHasher) -> Self {
        Self {
            shared: Shared {
                limiter,
                hasher,
                tiers: tier_limits(&TierPolicies::default()),
                identify: Arc::new(ClientIp::new()),
                cost: 1,
                on_error: OnError::Allow,
                rules: None,
                resource: Arc::new(path_resource),
                observer: None,
                explain: None,
            },
        }
    }

    /// The policy of each tier.
    pub fn tiers(mut self, tiers: TierPolicies) -> Self {
        self.shared.tiers = tier_limits(&tiers);
        self
    }

    /// How clients and their tiers are told apart: [`ClientIp`], [`ApiKeyOrIp`](crate::ApiKeyOrIp),
    /// or any [`Identify`].
    pub fn identify(mut self, identify: impl Identify) -> Self {
        self.shared.identify = Arc::new(identify);
        self
    }

    /// Tokens each request costs. Default 1.
    pub fn cost(mut self, cost: NonZeroU64) -> Self {
        self.shared.cost = cost.get();
        self
    }

    /// What to answer when the limiter cannot decide. Default [`OnError::Allow`].
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.shared.on_error = on_error;
        self
    }
}

impl RateLimitLayer {
    /// Live rules over the tiers' policies: the most specific rule that matches a request
    /// decides it (the tier's policy when none does), a shadow rule is evaluated beside it,
    /// and the kill switch is obeyed. Changes to `rules` apply to the next request.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use axum::{Router, routing::post};
    /// use limiter_core::ClientKeyHasher;
    /// use limiter_http::RateLimitLayer;
    /// use limiter_memory::{MemoryConfig, MemoryLimiter};
    /// use limiter_rules::{RuleSet, RuleSpec, Rules, from_json};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Five logins a minute per client address, whatever the tier allows elsewhere.
    /// let login: RuleSpec = from_json(br#"{"name": "login", "scope": "global",
    ///     "resource": "/login", "quotas": [{"limit": 5, "period": "1m"}]}"#)?;
    /// let rules = Rules::new(RuleSet::new(1, true, [login.into_rule()?]));
    /// let layer = RateLimitLayer::new(
    ///     Arc::new(MemoryLimiter::new(MemoryConfig::default())?),
    ///     ClientKeyHasher::new(b"the deployment's shared secret")?,
    /// )
    /// .rules(rules.clone());
    /// let app: Router = Router::new().route("/login", post(|| async { "welcome" })).layer(layer);
    ///
    /// // Later, from whatever loads new rules: the next request sees them.
    /// rules.replace(RuleSet::new(2, true, []));
    /// # Ok(())
    /// # }
    /// ```
    pub fn rules(mut self, rules: Rules) -> Self {
        self.shared.rules = Some(rules);
        self
    }

    /// What a request is for, as rules' `resource` sees it. Default: its path, so a rule
    /// on `/api/upload` covers `/api/upload/1`. Return `None` for no resource.
    pub fn resource<F>(mut self, resource: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.shared.resource = Arc::new(resource);
        self
    }

    /// Where each decided request is reported (statistics, violations), when rules are on.
    pub fn observe(mut self, observer: Arc<dyn Observe>) -> Self {
        self.shared.observer = Some(observer);
        self
    }

    /// Says why a denial happened when something other than the limit itself caused it
    /// (a server that tightens limits under load answers `"throttled"`): the 429's
    /// problem+json gains `"reason"`. Called with the policy that decided and its decision.
    pub fn explain_denials<F>(mut self, explain: F) -> Self
    where
        F: Fn(&Policy, &Decision) -> Option<&'static str> + Send + Sync + 'static,
    {
        self.shared.explain = Some(Arc::new(explain));
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit::new(inner, Arc::new(self.shared.clone()))
    }
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}
