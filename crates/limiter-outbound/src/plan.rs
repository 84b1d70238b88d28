//! [`Plan`]: the configuration compiled into policies and bucket keys per host and role.

use std::collections::HashMap;
use std::time::Duration;

use limiter_core::{ClientKey, ClientKeyHasher, Error, Policy};

use crate::config::{Aimd, HostConfig, OutboundConfig};

/// What one request to a host, in a role, is checked against (the plan's policies,
/// borrowed: nothing is copied per request).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target<'a> {
    /// The host's bucket: shared by every role of the host, fleet-wide.
    pub(crate) host: (ClientKey, &'a Policy),
    /// The role's bucket, when the role has quotas of its own.
    pub(crate) role: Option<(ClientKey, &'a Policy)>,
    pub(crate) max_delay: Duration,
    /// The host's in-flight cap.
    pub(crate) in_flight: Option<u32>,
    /// The host's AIMD bounds, when its rate adapts.
    pub(crate) aimd: Option<Aimd>,
}

impl<'a> Target<'a> {
    /// The buckets a turn takes a token from: the role's, then the host's (an AIMD host's
    /// pace comes after them).
    pub(crate) fn buckets(&self) -> impl Iterator<Item = (ClientKey, &'a Policy)> + use<'a> {
        self.role.into_iter().chain(std::iter::once(self.host))
    }
}

#[derive(Debug)]
struct HostPlan {
    policy: Policy,
    max_delay: Duration,
    in_flight: Option<u32>,
    aimd: Option<Aimd>,
    roles: HashMap<String, (Policy, Duration)>,
    /// Path prefixes that name a role, longest first.
    paths: Vec<(String, String)>,
}

/// The compiled configuration.
#[derive(Debug)]
pub(crate) struct Plan {
    defaults: (Policy, Duration),
    default_in_flight: Option<u32>,
    hosts: HashMap<String, HostPlan>,
    hasher: ClientKeyHasher,
}

/// Bucket keys are the same on every worker: hosts are not secrets, so the "secret" is a
/// constant that only keeps outbound keys apart from any client's.
const KEY_SECRET: &[u8] = b"limiter-outbound: per host and role";

impl Plan {
    pub(crate) fn new(config: &OutboundConfig) -> Result<Self, Error> {
        let defaults = (
            Policy::new("outbound", config.defaults.quotas.iter().copied())?,
            config.defaults.max_delay,
        );
        let mut hosts = HashMap::new();
        for host in &config.hosts {
            hosts.insert(host.host.to_ascii_lowercase(), host_plan(host, &defaults)?);
        }
        Ok(Self {
            defaults,
            default_in_flight: config.defaults.in_flight,
            hosts,
            hasher: ClientKeyHasher::new(KEY_SECRET)?,
        })
    }

    /// The configured entry for `authority` (`host:port` first, then `host`).
    fn host(&self, authority: &str) -> Option<&HostPlan> {
        self.hosts.get(authority).or_else(|| {
            let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
            self.hosts.get(host)
        })
    }

    /// The AIMD bounds of `authority`, if its rate adapts.
    pub(crate) fn aimd(&self, authority: &str) -> Option<Aimd> {
        self.host(authority)?.aimd
    }

    /// The role a request for `path` has when it names none.
    pub(crate) fn classify(&self, authority: &str, path: &str) -> Option<&str> {
        self.host(authority)?
            .paths
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, role)| role.as_str())
    }

    /// What a request to `authority` in `role` is checked against.
    pub(crate) fn target(&self, authority: &str, role: Option<&str>) -> Target<'_> {
        let host_key = self.hasher.hash(format!("host|{authority}"));
        let Some(plan) = self.host(authority) else {
            return Target {
                host: (host_key, &self.defaults.0),
                role: None,
                max_delay: self.defaults.1,
                in_flight: self.default_in_flight,
                aimd: None,
            };
        };
        let role_plan = role.and_then(|r| Some((r, plan.roles.get(r)?)));
        Target {
            host: (host_key, &plan.policy),
            role: role_plan.map(|(name, (policy, _))| {
                (self.hasher.hash(format!("role|{authority}|{name}")), policy)
            }),
            max_delay: role_plan.map_or(plan.max_delay, |(_, (_, delay))| *delay),
            in_flight: plan.in_flight,
            aimd: plan.aimd,
        }
    }
}

fn host_plan(host: &HostConfig, defaults: &(Policy, Duration)) -> Result<HostPlan, Error> {
    let policy = if host.quotas.is_empty() {
        defaults.0.clone()
    } else {
        Policy::new("outbound", host.quotas.iter().copied())?
    };
    let max_delay = host.max_delay.unwrap_or(defaults.1);
    let mut roles = HashMap::new();
    let mut paths = Vec::new();
    for role in &host.roles {
        let name = format!("outbound.{}", role.role);
        roles.insert(
            role.role.clone(),
            (
                Policy::new(name, role.quotas.iter().copied())?,
                role.max_delay.unwrap_or(max_delay),
            ),
        );
        paths.extend(role.paths.iter().map(|p| (p.clone(), role.role.clone())));
    }
    paths.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
    Ok(HostPlan {
        policy,
        max_delay,
        in_flight: host.in_flight,
        aimd: host.aimd,
        roles,
        paths,
    })
}
