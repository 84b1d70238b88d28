//! Real Redis topologies for tests: a 3-master cluster with one replica each, or a master,
//! a replica and three sentinels, as `redis-server` processes on loopback ports, started by
//! `scripts/redis-topology.sh` (the script users run) and stopped when dropped.
//!
//! The script installs Debian's redis-server when it is missing; if that cannot be done the
//! test fails and says so: nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::REDIS_SERVER_HELP as HELP;

/// A running topology; every process is stopped when this is dropped.
#[derive(Debug)]
pub struct Topology {
    /// The URL to give the limiter.
    pub url: String,
    /// The data ports: the cluster's six nodes, or Sentinel's master and replica.
    pub ports: Vec<u16>,
    dir: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/redis-topology.sh")
}

impl Topology {
    /// A cluster on ports `base .. base + 5`: the first three masters, the rest replicas.
    pub fn cluster(base: u16) -> Self {
        Self::start("cluster", base, (0..6).map(|i| base + i).collect())
    }

    /// Sentinel: master on `base`, replica on `base + 1`, sentinels on `base + 10 ..= 12`.
    pub fn sentinel(base: u16) -> Self {
        Self::start("sentinel", base, vec![base, base + 1])
    }

    fn start(kind: &str, base: u16, ports: Vec<u16>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("limiter-{kind}-{base}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut topology = Self {
            url: String::new(),
            ports,
            dir,
        };
        let out = Command::new("bash")
            .arg(script())
            .arg(kind)
            .arg(&topology.dir)
            .arg(base.to_string())
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/redis-topology.sh: {e}. {HELP}"));
        assert!(
            out.status.success(),
            "scripts/redis-topology.sh {kind} failed: {}{}\n{HELP}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        topology.url = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("the script prints the URL last")
            .to_owned();
        topology
    }

    /// `redis-cli -p port args…`, its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("redis-cli: {e}. {HELP}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the process on `port` at once (SIGKILL): a crash, not a shutdown.
    pub fn kill(&self, port: u16) {
        let pid = std::fs::read_to_string(self.dir.join(port.to_string()).join("redis.pid"))
            .expect("the node's pid file");
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -9 {pid}");
    }

    /// The cluster's masters as (port, slot count), from `CLUSTER NODES` asked of `via`.
    pub fn masters(&self, via: u16) -> Vec<(u16, usize)> {
        let nodes = self.cli(via, &["cluster", "nodes"]);
        nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                let port = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("host:port@bus");
                let slots = fields[8..]
                    .iter()
                    .filter(|r| !r.starts_with('['))
                    .map(|r| match r.split_once('-') {
                        Some((a, b)) => {
                            b.parse::<usize>().expect("slot") - a.parse::<usize>().expect("slot")
                                + 1
                        }
                        None => 1,
                    })
                    .sum();
                (port, slots)
            })
            .collect()
    }

    /// Waits until `check` holds, or panics naming `what` after `within`.
    pub fn wait_until(&self, what: &str, within: Duration, check: impl FnMut() -> bool) {
        crate::wait_until(what, within, check);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
