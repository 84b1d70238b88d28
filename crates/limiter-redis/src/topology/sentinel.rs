//! Redis with Sentinel: every new connection asks the sentinels for the master, so a
//! failover is followed by reconnecting.

use deadpool_redis::redis::sentinel::{
    SentinelClient, SentinelNodeConnectionInfo, SentinelServerType,
};
use deadpool_redis::redis::{AsyncConnectionConfig, IntoConnectionInfo};
use limiter_core::Error;

use super::{Source, nodes};
use crate::config::split_userinfo;
use crate::{RedisConfig, redacted};

/// A sentinel client for the sentinels and master named by `config.url`.
pub(super) fn source(
    config: &RedisConfig,
    connection: AsyncConnectionConfig,
) -> Result<Source, Error> {
    let listed = nodes(&config.url)?;
    let (master, db) = listed.path.split_once('/').unwrap_or((listed.path, ""));
    if master.is_empty() {
        return Err(Error::config(format_args!(
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
        .map_err(|e| Error::config(format_args!("url {}: {e}", redacted(&config.url))))?;
    let node = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(target.redis_settings().clone());
    let sentinels: Vec<String> = match listed.userinfo {
        // The sentinels are asked without the master's credentials.
        Some(_) => nodes(&without_userinfo(&config.url))?.urls,
        None => listed.urls,
    };
    let client = SentinelClient::build(
        sentinels,
        master.to_owned(),
        Some(node),
        SentinelServerType::Master,
    )
    .map_err(|e| Error::config(format_args!("url {}: {e}", redacted(&config.url))))?;
    Ok(Source::Sentinel {
        client: tokio::sync::Mutex::new(client),
        connection,
    })
}

/// `url` without its user information: the sentinels are asked without the master's.
fn without_userinfo(url: &str) -> String {
    match split_userinfo(url) {
        Some((scheme, _, rest)) => format!("{scheme}://{rest}"),
        None => url.to_owned(),
    }
}
