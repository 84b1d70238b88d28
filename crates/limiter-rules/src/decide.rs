//! [`Verdict`]: a request decided under the rules, the shadow rule beside it, and the kill
//! switch; and [`Observe`], where verdicts go to be counted and recorded.

use std::time::Duration;

use limiter_core::{ClientKey, Decision, Error, Policy, RateLimiter};

use crate::rule::Rule;
use crate::set::{Query, Resolution, RuleSet};

/// What to do with the deciding policy's bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Take the cost if it fits (a check).
    Check,
    /// Say what a check would answer, taking nothing (a dry run). Shadow rules are not
    /// evaluated: a dry run records nothing.
    Peek,
}

/// A request decided under the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// What to answer: the deciding policy's decision, turned into an admission while the
    /// kill switch is on.
    pub decision: Decision,
    /// The rule that decided; `None`: the tier's policy.
    pub rule: Option<String>,
    /// The resource that rule is narrowed to, if any (never the request's own: a path may
    /// hold identifiers).
    pub resource: Option<String>,
    /// True when the deciding policy denied, whether or not the denial was answered.
    pub denied: bool,
    /// When the deciding policy would admit this request again, if it denied: kept for the
    /// record when the kill switch answers the denial as an admission.
    pub retry_after: Option<Duration>,
    /// False when a denial was not answered because enforcement is off fleet-wide.
    pub enforced: bool,
    /// A shadow rule evaluated beside the deciding one: its name, and whether it would
    /// have denied (and after how long it would admit).
    pub shadow: Option<ShadowVerdict>,
}

/// What a shadow rule would have answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowVerdict {
    /// The shadow rule.
    pub rule: String,
    /// The resource it is narrowed to, if any.
    pub resource: Option<String>,
    /// Its decision (never answered).
    pub decision: Decision,
}

/// One denial to record: answered, or not (`shadow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation<'a> {
    /// The rule that denied; `None`: the tier's policy.
    pub rule: Option<&'a str>,
    /// The resource that rule is narrowed to.
    pub resource: Option<&'a str>,
    /// When it would admit the request.
    pub retry_after: Option<Duration>,
    /// True when the denial was not answered: a shadow rule, a client outside a rollout,
    /// or the kill switch.
    pub shadow: bool,
}

impl Verdict {
    /// The denials in this verdict worth recording: the deciding policy's (answered or let
    /// through by the kill switch) and a shadow rule's.
    pub fn violations(&self) -> impl Iterator<Item = Violation<'_>> {
        let own = self.denied.then_some(Violation {
            rule: self.rule.as_deref(),
            resource: self.resource.as_deref(),
            retry_after: self.retry_after,
            shadow: !self.enforced,
        });
        let shadow = self
            .shadow
            .as_ref()
            .filter(|s| !s.decision.allowed)
            .map(|s| Violation {
                rule: Some(s.rule.as_str()),
                resource: s.resource.as_deref(),
                retry_after: s.decision.retry_after,
                shadow: true,
            });
        own.into_iter().chain(shadow)
    }
}

fn resource_of(rule: &Rule) -> Option<String> {
    rule.resource_filter().map(|r| r.as_str().to_owned())
}

/// Where verdicts go: statistics, the record of violations. Called once per decided
/// request, on the request's path: implementations aggregate in memory and flush elsewhere.
pub trait Observe: Send + Sync + 'static {
    /// Takes note of one decided request.
    fn observe(&self, query: &Query<'_>, verdict: &Verdict);
}

/// Decides `query` with `limiter` under the resolved rules: the deciding policy (a rule's,
/// or `tier_policy`) with `operation`, and for a check a shadow rule beside it.
///
/// # Errors
/// As [`RateLimiter::check`] for the deciding policy. A shadow rule's error is logged and
/// otherwise ignored: a rule on trial never changes an answer.
pub async fn decide(
    limiter: &dyn RateLimiter,
    set: &RuleSet,
    resolution: Resolution<'_>,
    tier_policy: &Policy,
    key: &ClientKey,
    cost: u64,
    operation: Operation,
) -> Result<Verdict, Error> {
    let policy = resolution.rule.map_or(tier_policy, |r| r.policy());
    let decision = match operation {
        Operation::Check => limiter.check(key, policy, cost).await?,
        Operation::Peek => limiter.peek(key, policy, cost).await?,
    };
    let shadow = match (operation, resolution.shadow) {
        (Operation::Check, Some(rule)) => match limiter.check(key, rule.policy(), cost).await {
            Ok(decision) => Some(ShadowVerdict {
                rule: rule.name().to_owned(),
                resource: resource_of(rule),
                decision,
            }),
            Err(e) => {
                tracing::debug!(rule = rule.name(), error = %e, "shadow rule could not decide");
                None
            }
        },
        _ => None,
    };
    Ok(finish(set, resolution, decision, shadow))
}

/// The verdict of a decision already made (an in-process backend decides without
/// awaiting): applies the kill switch.
pub fn finish(
    set: &RuleSet,
    resolution: Resolution<'_>,
    mut decision: Decision,
    shadow: Option<ShadowVerdict>,
) -> Verdict {
    let denied = !decision.allowed;
    let enforced = set.enforce() || !denied;
    let retry_after = decision.retry_after;
    if !enforced {
        decision.allowed = true;
        decision.retry_after = None;
    }
    Verdict {
        decision,
        rule: resolution.rule.map(|r| r.name().to_owned()),
        resource: resolution.rule.and_then(resource_of),
        denied,
        retry_after,
        enforced,
        shadow,
    }
}
