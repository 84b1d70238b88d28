//! Load-aware throttling: the worker samples its own CPU and memory and the p99 of the
//! Redis checks it makes (`latency.rs`); under pressure held
//! for a while it tightens chosen policies (a tier's or a rule's) by a factor, and relaxes
//! once the pressure has stayed away for a while (see `machine.rs`). Tightening is a
//! second, smaller bucket a request must also fit (`limiter.rs`): exact, and nothing is
//! reset. Visible in `/health/ready`, `/metrics`, the fleet's list of workers and the
//! reason of the denials it causes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use limiter_core::{Decision, Policy, RateLimiter};
use parking_lot::Mutex;
use serde_json::{Value, json};

mod latency;
mod limiter;
mod machine;

use crate::config::ThrottleSection;
use latency::Latencies;
use machine::{Bands, Machine, Sample};

/// The throttle of one worker: its switch, its policy, what it last saw.
#[derive(Debug)]
pub(crate) struct Throttle {
    config: ThrottleSection,
    active: Arc<AtomicBool>,
    last: Mutex<Sample>,
    /// The Redis checks' latencies since the last sample.
    latencies: Arc<Latencies>,
}

impl Throttle {
    pub(crate) fn new(config: &ThrottleSection) -> Self {
        Self {
            config: config.clone(),
            active: Arc::new(AtomicBool::new(false)),
            last: Mutex::new(Sample::default()),
            latencies: Arc::new(Latencies::default()),
        }
    }

    /// The switch, shared with whatever reports it.
    pub(crate) fn switch(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.active)
    }

    /// `limiter`, tightened while throttling for the policies named in `keep_percent`.
    pub(crate) fn wrap(&self, limiter: Arc<dyn RateLimiter>) -> Arc<dyn RateLimiter> {
        let factors: HashMap<String, f64> = self
            .config
            .keep_percent
            .iter()
            .map(|(name, keep)| (name.clone(), f64::from(*keep) / 100.0))
            .collect();
        Arc::new(limiter::Throttled::new(
            limiter,
            self.switch(),
            factors,
            Arc::clone(&self.latencies),
        ))
    }

    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether `decision`, a denial under `policy`, is throttling's: it reports the
    /// tighter bucket (its capacity), not the policy's own.
    pub(crate) fn denied(&self, policy: &Policy, decision: &Decision) -> bool {
        if decision.allowed || !self.active() {
            return false;
        }
        let Some(keep) = self.config.keep_percent.get(policy.name()) else {
            return false;
        };
        let Some(tight) = limiter::tighten(policy, f64::from(*keep) / 100.0) else {
            return false;
        };
        let i = decision.quota.unwrap_or(0);
        match (tight.quotas().get(i), policy.quotas().get(i)) {
            (Some(t), Some(own)) => {
                decision.limit == t.capacity() && t.capacity() != own.capacity()
            }
            _ => false,
        }
    }

    /// For `/health/ready`.
    pub(crate) fn health(&self) -> Value {
        let last = *self.last.lock();
        json!({
            "active": self.active(),
            "cpu_percent": (last.cpu * 1000.0).round() / 10.0,
            "memory_percent": (last.memory * 1000.0).round() / 10.0,
            "redis_p99_ms": last.redis_ms,
        })
    }

    fn bands(&self) -> Bands {
        let c = &self.config;
        let share = |p: u8| f64::from(p) / 100.0;
        let ms = |m: u64| (c.redis_p99_ms > 0).then_some(m as f64);
        Bands {
            cpu_above: share(c.cpu_percent),
            memory_above: share(c.memory_percent),
            redis_ms_above: ms(c.redis_p99_ms),
            cpu_below: share(c.relax_cpu_percent),
            memory_below: share(c.relax_memory_percent),
            redis_ms_below: ms(c.relax_redis_p99_ms),
            hold: Duration::from_millis(c.hold_ms),
            relax: Duration::from_millis(c.relax_ms),
        }
    }

    /// Samples every `sample_ms` and flips the switch as the bands say, until dropped.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut machine = Machine::new(self.bands());
        let mut sampler = match Sampler::new() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot sample this process's CPU and memory: throttling stays off");
                return;
            }
        };
        metrics::gauge!("ratelimit_throttle_active").set(0.0);
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.sample_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (back, sample) = match tokio::task::spawn_blocking(move || {
                let sample = sampler.sample();
                (sampler, sample)
            })
            .await
            {
                Ok(done) => done,
                Err(_) => return,
            };
            sampler = back;
            let sample = Sample {
                redis_ms: self.latencies.take_p99_ms(),
                ..sample
            };
            *self.last.lock() = sample;
            if let Some(on) = machine.observe(Instant::now(), &sample) {
                self.active.store(on, Ordering::Relaxed);
                metrics::gauge!("ratelimit_throttle_active").set(if on { 1.0 } else { 0.0 });
                metrics::counter!("ratelimit_throttle_transitions_total", "to" => if on { "on" } else { "off" })
                    .increment(1);
                tracing::warn!(
                    throttling = on,
                    cpu_percent = sample.cpu * 100.0,
                    memory_percent = sample.memory * 100.0,
                    "load-aware throttling {}",
                    if on { "on" } else { "off" }
                );
            }
        }
    }
}

/// This process's CPU (over the last interval) and memory, from the OS (sysinfo).
struct Sampler {
    system: sysinfo::System,
    pid: sysinfo::Pid,
    cores: f64,
}

impl Sampler {
    fn new() -> Result<Self, String> {
        let pid = sysinfo::get_current_pid().map_err(|e| e.to_string())?;
        let mut system = sysinfo::System::new().map_err(|e| e.to_string())?;
        system.refresh_memory();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let mut sampler = Self { system, pid, cores };
        // CPU use is a difference between two refreshes: the first one sets the start.
        let _ = sampler.sample();
        Ok(sampler)
    }

    fn sample(&mut self) -> Sample {
        let refresh = sysinfo::ProcessRefreshKind::nothing()
            .with_cpu()
            .with_memory();
        self.system.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::Some(&[self.pid]),
            true,
            refresh,
        );
        // Inside a container, the cgroup's limit is the memory there is.
        let total = self
            .system
            .cgroup_limits()
            .map_or_else(|| self.system.total_memory(), |c| c.total_memory);
        match self.system.process(self.pid) {
            Some(p) => Sample {
                cpu: f64::from(p.cpu_usage()) / 100.0 / self.cores,
                memory: if total == 0 {
                    0.0
                } else {
                    p.memory() as f64 / total as f64
                },
                redis_ms: None,
            },
            None => Sample::default(),
        }
    }
}
