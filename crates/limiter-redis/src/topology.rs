//! Where the Redis is: one server, a cluster, or a master found through Sentinel; read from
//! the URL's scheme. And the connection each kind hands out.

use std::fmt;

use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster::{ClusterClient, ClusterClientBuilder};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use deadpool_redis::redis::sentinel::{
    SentinelClient, SentinelNodeConnectionInfo, SentinelServerType,
};
use deadpool_redis::redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value,
};
use limiter_core::{ClientKey, Error};

use crate::{RedisConfig, invalid, redacted};

/// The kind of Redis deployment a [`RedisConfig::url`] names, by its scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// `redis://[user:password@]host:port[/db]`: one server (with replicas or not).
    Single,
    /// `redis+cluster://[user:password@]host:port[,host:port…]`: seed nodes of a Redis
    /// Cluster; the rest of the cluster is discovered from them.
    Cluster,
    /// `redis+sentinel://[user:password@]host:port[,host:port…]/<master>[/db]`: sentinels,
    /// and the name of the master they watch. The credentials are for the master; the
    /// sentinels are asked without.
    Sentinel,
}

impl Topology {
    /// The topology `url` names.
    pub fn of(url: &str) -> Self {
        match url.split_once("://").map(|(scheme, _)| scheme) {
            Some("redis+cluster") => Topology::Cluster,
            Some("redis+sentinel") => Topology::Sentinel,
            _ => Topology::Single,
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Topology::Single => "single",
            Topology::Cluster => "cluster",
            Topology::Sentinel => "sentinel",
        })
    }
}

/// The parts of a cluster or Sentinel URL: one `redis://` URL per listed node, the
/// credentials and the path.
struct Nodes<'a> {
    urls: Vec<String>,
    userinfo: Option<&'a str>,
    path: &'a str,
}

fn nodes(url: &str) -> Result<Nodes<'_>, Error> {
    let bad = |why: &str| invalid(format_args!("url {}: {why}", redacted(url)));
    let (_, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let urls: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|host| match userinfo {
            Some(user) => format!("redis://{user}@{host}"),
            None => format!("redis://{host}"),
        })
        .collect();
    if urls.is_empty() {
        return Err(bad("no host:port listed"));
    }
    for node in &urls {
        node.as_str()
            .into_connection_info()
            .map_err(|e| bad(&e.to_string()))?;
    }
    Ok(Nodes {
        urls,
        userinfo,
        path,
    })
}

/// Opens connections of one topology.
pub(crate) enum Source {
    Single(deadpool_redis::Pool),
    Cluster(ClusterClient),
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        connection: AsyncConnectionConfig,
    },
}

impl Source {
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, Error> {
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout));
        match Topology::of(&config.url) {
            Topology::Single => {
                let manager =
                    deadpool_redis::Manager::new_with_config(config.url.as_str(), connection)
                        .map_err(|e| invalid(format_args!("url {}: {e}", redacted(&config.url))))?;
                let pool = deadpool_redis::Pool::builder(manager)
                    .max_size(config.connections)
                    .wait_timeout(Some(config.pool_wait_timeout))
                    .create_timeout(Some(config.connect_timeout))
                    .recycle_timeout(Some(config.response_timeout))
                    .runtime(deadpool_redis::Runtime::Tokio1)
                    .build()
                    .map_err(|e| invalid(format_args!("connection pool: {e}")))?;
                Ok(Source::Single(pool))
            }
            Topology::Cluster => {
                let nodes = nodes(&config.url)?;
                if !nodes.path.is_empty() {
                    return Err(invalid(format_args!(
                        "url {}: a cluster has no database number or path",
                        redacted(&config.url)
                    )));
                }
                let client = ClusterClientBuilder::new(nodes.urls)
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.response_timeout)
                    // Redirections (MOVED, ASK) and reconnections are retried by the client,
                    // briefly: every check is bounded by `timeout` anyway, and a fallback
                    // answers sooner than a long retry would.
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(CLUSTER_MIN_RETRY_WAIT_MS)
                    .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS)
                    .build()
                    .map_err(|e| invalid(format_args!("url {}: {e}", redacted(&config.url))))?;
                Ok(Source::Cluster(client))
            }
            Topology::Sentinel => {
                let listed = nodes(&config.url)?;
                let (master, db) = listed.path.split_once('/').unwrap_or((listed.path, ""));
                if master.is_empty() {
                    return Err(invalid(format_args!(
                        "url {}: name the master after the sentinels: …/<master>[/db]",
                        redacted(&config.url)
                    )));
                }
                // The master's credentials and database, read as one URL would state them.
                let target = match listed.userinfo {
                    Some(user) => format!("redis://{user}@sentinel-master/{db}"),
                    None => format!("redis://sentinel-master/{db}"),
                };
                let target = target
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| invalid(format_args!("url {}: {e}", redacted(&config.url))))?;
                let node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(target.redis_settings().clone());
                let sentinels: Vec<String> = match listed.userinfo {
                    // The sentinels are asked without the master's credentials.
                    Some(_) => nodes(&strip_userinfo(&config.url))?.urls,
                    None => listed.urls,
                };
                let client = SentinelClient::build(
                    sentinels,
                    master.to_owned(),
                    Some(node),
                    SentinelServerType::Master,
                )
                .map_err(|e| invalid(format_args!("url {}: {e}", redacted(&config.url))))?;
                Ok(Source::Sentinel {
                    client: tokio::sync::Mutex::new(client),
                    connection,
                })
            }
        }
    }

    /// A new connection. Errors are classified by the caller.
    pub(crate) async fn connect(&self) -> Result<Conn, Connect> {
        match self {
            Source::Single(pool) => {
                let pooled = pool.get().await.map_err(Connect::Pool)?;
                Ok(Conn::Single(deadpool_redis::Connection::take(pooled)))
            }
            Source::Cluster(client) => client
                .get_async_connection()
                .await
                .map(Conn::Cluster)
                .map_err(Connect::Redis),
            Source::Sentinel { client, connection } => {
                // Asks the sentinels for the master now: after a failover, the new one.
                let mut client = client.lock().await;
                client
                    .get_async_connection_with_config(connection)
                    .await
                    .map(Conn::Single)
                    .map_err(Connect::Redis)
            }
        }
    }

    /// Whether a connection that failed should be dropped and reopened. A cluster
    /// connection reconnects to each node by itself and follows the cluster's changes:
    /// dropping it would disturb the clients of every healthy node.
    pub(crate) fn replaces_failed(&self) -> bool {
        !matches!(self, Source::Cluster(_))
    }

    pub(crate) fn status(&self) -> String {
        match self {
            Source::Single(pool) => format!("{:?}", pool.status()),
            Source::Cluster(_) => "cluster".to_owned(),
            Source::Sentinel { .. } => "sentinel".to_owned(),
        }
    }
}

fn strip_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Retries of a cluster command (redirections, reconnections).
const CLUSTER_RETRIES: u32 = 3;
/// Backoff bounds between those retries, in milliseconds.
const CLUSTER_MIN_RETRY_WAIT_MS: u64 = 10;
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 100;

pub(crate) enum Connect {
    Pool(deadpool_redis::PoolError),
    Redis(deadpool_redis::redis::RedisError),
}

/// A connection of any topology. Cloning shares it (both kinds are multiplexed).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Hash slots of a Redis Cluster.
pub(crate) const SLOTS: usize = 16384;

/// The key a probe of `slot` runs the script on: no client's (clients' tags are 32 hex
/// digits), and it lives a millisecond.
pub(crate) fn slot_probe_key(slot: u16) -> String {
    format!("rl:{{{}}}:probe", slot_tag(slot))
}

/// A hash tag whose slot is `slot`: the smallest number, in hex, that CRC16 maps there.
fn slot_tag(slot: u16) -> String {
    static TAGS: std::sync::OnceLock<Box<[u32]>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        // About 170,000 CRC16s of short strings until every slot is hit: a few ms, once.
        let mut tags = vec![u32::MAX; SLOTS];
        let mut missing = SLOTS;
        let mut n = 0u32;
        while missing > 0 {
            let tag = format!("{n:x}");
            let s = usize::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % 16384);
            if tags[s] == u32::MAX {
                tags[s] = n;
                missing -= 1;
            }
            n += 1;
        }
        tags.into_boxed_slice()
    });
    format!("{:x}", tags[usize::from(slot) % SLOTS])
}

impl Conn {
    /// `CLUSTER SLOTS` as (first slot, last slot, master "host:port"), asked of a random node,
    /// up to three of them; `None` if none answers or this is not a cluster.
    pub(crate) async fn slot_owners(self) -> Option<Vec<(usize, usize, String)>> {
        let Conn::Cluster(mut conn) = self else {
            return None;
        };
        for _ in 0..3 {
            let mut cmd = deadpool_redis::redis::cmd("CLUSTER");
            cmd.arg("SLOTS");
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
            if let Ok(Value::Array(ranges)) = conn.route_command(cmd, route).await {
                return Some(ranges.iter().filter_map(slot_range).collect());
            }
        }
        None
    }
}

/// One entry of `CLUSTER SLOTS`: `[start, end, [host, port, id…], replicas…]`.
fn slot_range(entry: &Value) -> Option<(usize, usize, String)> {
    let Value::Array(fields) = entry else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(n) => usize::try_from(*n).ok(),
        _ => None,
    };
    let (start, end) = (int(fields.first()?)?, int(fields.get(1)?)?);
    let Value::Array(master) = fields.get(2)? else {
        return None;
    };
    let host = match master.first()? {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    Some((start, end, format!("{host}:{}", int(master.get(1)?)?)))
}

/// The slot ranges owned by the master of `slot`, from `CLUSTER SLOTS` entries.
pub(crate) fn colocated(
    owners: &[(usize, usize, String)],
    slot: usize,
) -> Option<Vec<std::ops::Range<usize>>> {
    let (_, _, master) = owners.iter().find(|(a, b, _)| (*a..=*b).contains(&slot))?;
    Some(
        owners
            .iter()
            .filter(|(_, _, m)| m == master)
            .map(|(a, b, _)| *a..*b + 1)
            .collect(),
    )
}

/// The Redis Cluster hash slot of every key of `client`: CRC16 (XMODEM) of the hash tag's
/// content, the client's hex hash, modulo 16384.
pub fn hash_slot(client: &ClientKey) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(&client.hex_digits()) % 16384
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_name_the_topology() {
        assert_eq!(Topology::of("redis://h:6379"), Topology::Single);
        assert_eq!(Topology::of("redis+cluster://a:1,b:2"), Topology::Cluster);
        assert_eq!(Topology::of("redis+sentinel://a:1/m"), Topology::Sentinel);
    }

    #[test]
    fn node_lists_are_read_and_checked() {
        let n = nodes("redis+cluster://u:p@a:1, b:2,").unwrap();
        assert_eq!(n.urls, ["redis://u:p@a:1", "redis://u:p@b:2"]);
        assert!(nodes("redis+cluster://").is_err());
        assert!(nodes("redis+cluster://a:notaport").is_err());
        let n = nodes("redis+sentinel://a:1,b:2/mymaster/3").unwrap();
        assert_eq!(n.path, "mymaster/3");
    }

    #[test]
    fn bad_urls_are_config_errors_without_the_password() {
        for url in [
            "redis+cluster://u:secret@a:1/0",
            "redis+sentinel://u:secret@a:1",
            "redis+sentinel://u:secret@a:1/",
        ] {
            let e = Source::new(&RedisConfig::from_url(url)).err().unwrap();
            assert!(e.to_string().contains("url"), "{e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn colocated_slots_are_every_range_of_the_same_master() {
        let owners = vec![
            (0, 100, "a:1".to_owned()),
            (101, 200, "b:2".to_owned()),
            (201, 300, "a:1".to_owned()),
        ];
        assert_eq!(colocated(&owners, 250), Some(vec![0..101, 201..301]));
        assert_eq!(
            colocated(&owners, 150),
            Some(std::iter::once(101..201).collect())
        );
        assert_eq!(colocated(&owners, 400), None, "an unowned slot");
    }

    #[test]
    fn every_slot_has_a_tag_of_its_own() {
        let slot = |s: &str| crc16::State::<crc16::XMODEM>::calculate(s.as_bytes()) % 16384;
        for s in [0u16, 1, 5460, 5461, 10922, 16383] {
            assert_eq!(slot(&slot_tag(s)), s);
        }
    }

    #[test]
    fn slots_are_redis_cluster_keyslots() {
        // The values `CLUSTER KEYSLOT` gives, from Redis's documentation.
        let slot = |s: &str| crc16::State::<crc16::XMODEM>::calculate(s.as_bytes()) % 16384;
        assert_eq!(slot("somekey"), 11058);
        assert_eq!(slot("hash_tag"), 2515);
        let key = ClientKey::from(1);
        assert_eq!(hash_slot(&key), slot(&key.to_string()));
    }
}
