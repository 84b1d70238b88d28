//! When to throttle: pressure above its thresholds for `hold` turns throttling on; below
//! the (lower) relax thresholds for `relax` turns it off. Between the two bands nothing
//! changes, so a worker hovering at a threshold does not flap.

use std::time::{Duration, Instant};

/// One look at the worker's load, each a share of its capacity (0 to 1).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Sample {
    /// CPU used by the process, as a share of every core.
    pub(crate) cpu: f64,
    /// Memory used by the process, as a share of the machine's.
    pub(crate) memory: f64,
    /// The p99 of this worker's Redis checks since the last sample, in milliseconds;
    /// `None` when it made none.
    pub(crate) redis_ms: Option<f64>,
}

/// The thresholds, as shares (0 to 1) and milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Bands {
    pub(crate) cpu_above: f64,
    pub(crate) memory_above: f64,
    /// `None`: Redis latency is not a pressure.
    pub(crate) redis_ms_above: Option<f64>,
    pub(crate) cpu_below: f64,
    pub(crate) memory_below: f64,
    pub(crate) redis_ms_below: Option<f64>,
    pub(crate) hold: Duration,
    pub(crate) relax: Duration,
}

impl Bands {
    fn over(&self, s: &Sample) -> bool {
        let slow =
            matches!((s.redis_ms, self.redis_ms_above), (Some(ms), Some(above)) if ms > above);
        s.cpu > self.cpu_above || s.memory > self.memory_above || slow
    }

    fn under(&self, s: &Sample) -> bool {
        // No Redis check since the last sample says nothing against relaxing.
        let slow =
            matches!((s.redis_ms, self.redis_ms_below), (Some(ms), Some(below)) if ms >= below);
        s.cpu < self.cpu_below && s.memory < self.memory_below && !slow
    }
}

/// The switch and how long the pressure has been on its side of a band.
#[derive(Debug)]
pub(crate) struct Machine {
    bands: Bands,
    active: bool,
    /// Since when the samples have been over (while off) or under (while on).
    since: Option<Instant>,
}

impl Machine {
    pub(crate) fn new(bands: Bands) -> Self {
        Self {
            bands,
            active: false,
            since: None,
        }
    }

    /// Takes `sample` seen at `now`; answers the new state when it changes.
    pub(crate) fn observe(&mut self, now: Instant, sample: &Sample) -> Option<bool> {
        let leaning = if self.active {
            self.bands.under(sample)
        } else {
            self.bands.over(sample)
        };
        if !leaning {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert(now);
        let needed = if self.active {
            self.bands.relax
        } else {
            self.bands.hold
        };
        if now.duration_since(since) >= needed {
            self.active = !self.active;
            self.since = None;
            return Some(self.active);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bands() -> Bands {
        Bands {
            cpu_above: 0.8,
            memory_above: 0.9,
            redis_ms_above: Some(20.0),
            cpu_below: 0.5,
            memory_below: 0.8,
            redis_ms_below: Some(10.0),
            hold: Duration::from_secs(3),
            relax: Duration::from_secs(10),
        }
    }

    fn cpu(share: f64) -> Sample {
        Sample {
            cpu: share,
            ..Sample::default()
        }
    }

    /// Feeds one sample a second; answers the seconds at which the state changed.
    fn run(samples: &[Sample]) -> Vec<(usize, bool)> {
        let start = Instant::now();
        let mut m = Machine::new(bands());
        samples
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                m.observe(start + Duration::from_secs(i as u64), s)
                    .map(|on| (i, on))
            })
            .collect()
    }

    #[test]
    fn on_after_the_hold_off_after_the_relax_time() {
        let mut samples = vec![cpu(0.9); 5];
        samples.extend(vec![cpu(0.2); 12]);
        // Over from second 0: on at 3. Under from 5: off at 15.
        assert_eq!(run(&samples), vec![(3, true), (15, false)]);
    }

    #[test]
    fn a_dip_restarts_the_hold_and_the_band_between_changes_nothing() {
        let mut samples = vec![
            cpu(0.9),
            cpu(0.9),
            cpu(0.7),
            cpu(0.9),
            cpu(0.9),
            cpu(0.9),
            cpu(0.9),
        ];
        assert_eq!(
            run(&samples),
            vec![(6, true)],
            "the dip at 2 restarted the hold"
        );
        // On, then hovering between the bands (0.5..0.8) for a long time: stays on.
        samples.extend(vec![cpu(0.6); 60]);
        assert_eq!(run(&samples), vec![(6, true)]);
        // Under, but interrupted before the relax time: stays on; then long enough: off.
        samples.extend(vec![cpu(0.3); 5]);
        samples.push(cpu(0.6));
        samples.extend(vec![cpu(0.3); 11]);
        let changes = run(&samples);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(changes[1], (samples.len() - 1, false));
    }

    #[test]
    fn memory_counts_too_and_a_quiet_worker_never_throttles() {
        let mem = Sample {
            memory: 0.95,
            ..Sample::default()
        };
        assert_eq!(run(&[mem; 4]), vec![(3, true)]);
        assert_eq!(run(&[Sample::default(); 100]), vec![]);
    }

    #[test]
    fn slow_redis_checks_count_and_must_be_fast_again_to_relax() {
        let slow = Sample {
            redis_ms: Some(30.0),
            ..Sample::default()
        };
        let middling = Sample {
            redis_ms: Some(15.0),
            ..Sample::default()
        };
        let fast = Sample {
            redis_ms: Some(2.0),
            ..Sample::default()
        };
        let mut samples = vec![slow; 4];
        samples.extend(vec![middling; 20]);
        samples.extend(vec![fast; 11]);
        // On at 3; between the bands for 20 s: still on; fast from 24: off at 34.
        assert_eq!(run(&samples), vec![(3, true), (34, false)]);
    }
}
