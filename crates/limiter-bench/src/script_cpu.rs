//! Redis's CPU per decision: the time Redis spent in the limiter's script calls, from its own
//! `INFO commandstats`, read before and after a run on one Redis.

use limiter_redis::redis;

/// Script calls Redis has run and the CPU time they took (`EVALSHA` and `EVAL`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ScriptCpu {
    calls: u64,
    usec: u64,
}

impl ScriptCpu {
    /// Redis's counts so far.
    pub(crate) async fn read(conn: &mut redis::aio::MultiplexedConnection) -> Result<Self, String> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(conn)
            .await
            .map_err(|e| format!("INFO commandstats: {e}"))?;
        Ok(Self::parse(&info))
    }

    /// `cmdstat_evalsha:calls=…,usec=…,…` and `cmdstat_eval:…`, summed.
    fn parse(info: &str) -> Self {
        let mut total = Self::default();
        for line in info.lines() {
            let Some(fields) = line
                .strip_prefix("cmdstat_evalsha:")
                .or_else(|| line.strip_prefix("cmdstat_eval:"))
            else {
                continue;
            };
            for field in fields.split(',') {
                match field.split_once('=') {
                    Some(("calls", n)) => total.calls += n.trim().parse().unwrap_or(0),
                    Some(("usec", n)) => total.usec += n.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        total
    }

    /// Microseconds of Redis CPU per decision and decisions per call, for `checks` decided
    /// between `before` and `self`; `None` if no script ran.
    pub(crate) fn per_check(self, before: Self, checks: u64) -> Option<(f64, f64)> {
        let calls = self.calls.checked_sub(before.calls).filter(|&c| c > 0)?;
        let usec = self.usec.saturating_sub(before.usec);
        #[allow(clippy::cast_precision_loss, reason = "ratios of counts")]
        Some((
            usec as f64 / checks.max(1) as f64,
            checks as f64 / calls as f64,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_script_calls_and_time() {
        let info = "# Commandstats\r\ncmdstat_get:calls=9,usec=9,usec_per_call=1.00\r\n\
            cmdstat_evalsha:calls=100,usec=4400,usec_per_call=44.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_eval:calls=1,usec=60,usec_per_call=60.00\r\n";
        let after = ScriptCpu::parse(info);
        assert_eq!((after.calls, after.usec), (101, 4460));
        let before = ScriptCpu { calls: 1, usec: 60 };
        assert_eq!(after.per_check(before, 4000), Some((1.1, 40.0)));
        assert_eq!(before.per_check(before, 10), None);
    }
}
