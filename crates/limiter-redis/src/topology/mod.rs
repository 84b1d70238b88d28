//! Where the Redis is: one server, a cluster, or a master found through Sentinel; read from
//! the URL's scheme. And the connection each kind hands out.

use std::fmt;

use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster::ClusterClient;
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::sentinel::SentinelClient;
use deadpool_redis::redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value,
};
use limiter_core::Error;

use crate::config::split_userinfo;
use crate::{RedisConfig, redacted};

mod cluster;
mod sentinel;

pub(crate) use cluster::Slots;
pub use cluster::hash_slot;

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
pub(crate) struct Nodes<'a> {
    pub(crate) urls: Vec<String>,
    pub(crate) userinfo: Option<&'a str>,
    pub(crate) path: &'a str,
}

pub(crate) fn nodes(url: &str) -> Result<Nodes<'_>, Error> {
    let bad = |why: &str| Error::config(format_args!("url {}: {why}", redacted(url)));
    let (_, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let (userinfo, rest) = match split_userinfo(url) {
        Some((_, userinfo, rest)) => (Some(userinfo), rest),
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
                        .map_err(|e| {
                            Error::config(format_args!("url {}: {e}", redacted(&config.url)))
                        })?;
                let pool = deadpool_redis::Pool::builder(manager)
                    .max_size(config.connections)
                    .wait_timeout(Some(config.pool_wait_timeout))
                    .create_timeout(Some(config.connect_timeout))
                    .recycle_timeout(Some(config.response_timeout))
                    .runtime(deadpool_redis::Runtime::Tokio1)
                    .build()
                    .map_err(|e| Error::config(format_args!("connection pool: {e}")))?;
                Ok(Source::Single(pool))
            }
            Topology::Cluster => cluster::source(config),
            Topology::Sentinel => sentinel::source(config, connection),
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
}
