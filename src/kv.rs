//! Redis as one server or as a cluster, behind one handle. On one server a batch of
//! commands is one pipelined round trip; on a cluster a pipeline must stay within one
//! hash slot, so a batch goes out as one pipeline per slot, all at once: commands on
//! one key keep their order (a TTL after the write it refreshes).

use std::time::Duration;

use anyhow::Context;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisResult, Value};

/// A state failure: the store is unreachable or answered nonsense; the pipeline and
/// the delivery queues pause and retry.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state store unavailable: {0}")]
pub struct StateError(pub String);

impl From<::redis::RedisError> for StateError {
    fn from(e: ::redis::RedisError) -> Self {
        StateError(e.to_string())
    }
}

impl From<::redis::ParsingError> for StateError {
    fn from(e: ::redis::ParsingError) -> Self {
        StateError(format!("unexpected reply: {e}"))
    }
}

/// A connection to Redis or to a Redis Cluster.
#[derive(Clone)]
pub enum Redis {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Redis {
    /// Connects with timeouts, so that an unreachable server is an error, not a hang.
    /// With `cluster`, `url` lists seed nodes separated by commas.
    pub async fn connect(url: &str, cluster: bool) -> anyhow::Result<Self> {
        let attempt = async {
            if cluster {
                let nodes: Vec<&str> = url.split(',').map(str::trim).collect();
                let client = redis::cluster::ClusterClient::builder(nodes)
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(5))
                    .build()
                    .with_context(|| format!("bad redis.url {url}"))?;
                let conn = client
                    .get_async_connection()
                    .await
                    .with_context(|| format!("cannot connect to the redis cluster at {url}"))?;
                Ok(Redis::Cluster(conn))
            } else {
                let client =
                    redis::Client::open(url).with_context(|| format!("bad redis.url {url}"))?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_number_of_retries(2);
                let conn = client
                    .get_connection_manager_with_config(config)
                    .await
                    .with_context(|| format!("cannot connect to redis at {url}"))?;
                Ok(Redis::Single(conn))
            }
        };
        tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .with_context(|| format!("redis at {url} did not answer in time"))?
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Redis::Single(c) => cmd.query_async(&mut c.clone()).await,
            Redis::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }

    /// Runs commands, one reply each in order.
    pub async fn run(&self, cmds: Vec<Cmd>) -> RedisResult<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Redis::Single(c) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query_async(&mut c.clone()).await
            }
            Redis::Cluster(c) => {
                use redis::cluster_routing::{Route, SlotAddr};
                let n = cmds.len();
                let mut groups: Vec<(Route, redis::Pipeline, Vec<usize>)> = Vec::new();
                for (i, cmd) in cmds.into_iter().enumerate() {
                    let route = Route::with_key(first_key(&cmd), SlotAddr::Master);
                    let at = match groups.iter().position(|(r, ..)| *r == route) {
                        Some(at) => at,
                        None => {
                            groups.push((route, redis::pipe(), Vec::new()));
                            groups.len() - 1
                        }
                    };
                    groups[at].1.add_command(cmd);
                    groups[at].2.push(i);
                }
                let answers =
                    futures_util::future::try_join_all(groups.iter().map(|(_, pipe, _)| {
                        let mut c = c.clone();
                        async move { pipe.query_async::<Vec<Value>>(&mut c).await }
                    }))
                    .await?;
                let mut out = vec![Value::Nil; n];
                for ((_, _, slots), values) in groups.into_iter().zip(answers) {
                    for (i, v) in slots.into_iter().zip(values) {
                        out[i] = v;
                    }
                }
                Ok(out)
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Redis::Cluster(_))
    }
}

/// The first key of a command as touchline builds them: after the key count for
/// `EVAL`/`EVALSHA`, else the first argument.
fn first_key(cmd: &Cmd) -> Vec<u8> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(b) => Some(b),
            _ => None,
        })
        .collect();
    let script = args.first().is_some_and(|name| {
        name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL")
    });
    let at = if script { 3 } else { 1 };
    args.get(at).map(|k| k.to_vec()).unwrap_or_default()
}

/// So that single commands and scripts run on either kind as they are.
impl redis::aio::ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Redis::Single(c) => c.req_packed_command(cmd),
            Redis::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Redis::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Redis::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Redis::Single(c) => c.get_db(),
            Redis::Cluster(c) => c.get_db(),
        }
    }
}
