//! The Redis backend, standalone or Cluster, with the `redis` crate.
//!
//! Standalone: every trait call is one pipeline. Cluster: a pipeline must stay in one slot, and
//! the seed's keys spread over all slots, so each call sends its commands concurrently as single-key
//! commands (one wave, one round trip of latency) and never uses a cross-slot multi-key command.
//! Connections are made lazily and re-made after failures, so a Redis that is down at start or
//! restarts later is picked up without restarting Enclava.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, Value, cmd};
use tokio::sync::Mutex;

use crate::schema::{INFO_TTL_SECS, PRESENCE_TTL_SECS};
use crate::{Index, Keys, Probe, Registry, RegistryError, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections to a standalone Redis.
const POOL: usize = 4;
/// SCAN batch size for the sweeper.
const SCAN_COUNT: usize = 1000;

/// One reply of a batch: its value, or the server's refusal of that command alone.
type Reply = std::result::Result<Value, String>;

struct ClusterConn {
    client: ClusterClient,
    conn: Mutex<Option<ClusterConnection>>,
}

enum Conn {
    /// A few multiplexed connections, used in turn: replies are parsed by each connection's own
    /// task, so large index reads do not queue behind one another on one core.
    Single(Vec<ConnectionManager>),
    Cluster(Box<ClusterConn>),
}

/// A registry on Redis or Redis Cluster.
pub struct RedisRegistry {
    keys: Keys,
    conn: Conn,
    /// Where we connect, without credentials, for messages.
    target: String,
    round_trips: AtomicU64,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegistry").field("target", &self.target).field("keys", &self.keys).finish()
    }
}

/// `redis://user:pass@host:port` → `redis://host:port`: never print credentials.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl RedisRegistry {
    /// A registry on one Redis server; connects on first use.
    pub fn standalone(url: &str, keys: Keys) -> Result<RedisRegistry> {
        let target = redact(url);
        let client =
            redis::Client::open(url).map_err(|e| RegistryError::Invalid(format!("bad Redis URL {target}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        let managers = (0..POOL)
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RegistryError::Invalid(format!("cannot set up Redis client for {target}: {e}")))?;
        Ok(RedisRegistry { keys, conn: Conn::Single(managers), target, round_trips: AtomicU64::new(0) })
    }

    /// A registry on a Redis Cluster, from seed nodes (`redis://host:port` each).
    pub fn cluster(nodes: &[String], keys: Keys) -> Result<RedisRegistry> {
        let target = format!(
            "redis+cluster://{}",
            nodes.iter().map(|n| redact(n).trim_start_matches("redis://").to_owned()).collect::<Vec<_>>().join(",")
        );
        let client = ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(200)
            .build()
            .map_err(|e| RegistryError::Invalid(format!("bad Redis Cluster nodes {target}: {e}")))?;
        Ok(RedisRegistry {
            keys,
            conn: Conn::Cluster(Box::new(ClusterConn { client, conn: Mutex::new(None) })),
            target,
            round_trips: AtomicU64::new(0),
        })
    }

    /// The next pooled connection, in turn.
    fn manager(&self, pool: &[ConnectionManager]) -> ConnectionManager {
        let n = self.round_trips.load(Ordering::Relaxed) as usize;
        pool[n % pool.len()].clone()
    }

    fn unavailable(&self, e: RedisError) -> RegistryError {
        RegistryError::Unavailable { target: self.target.clone(), reason: e.to_string() }
    }

    async fn cluster_conn(&self) -> Result<ClusterConnection> {
        let Conn::Cluster(cluster) = &self.conn else {
            return Err(RegistryError::Invalid("not a cluster".into()));
        };
        let ClusterConn { client, conn } = cluster.as_ref();
        let mut guard = conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection())
            .await
            .map_err(|_| RegistryError::Unavailable {
                target: self.target.clone(),
                reason: "timed out connecting to the cluster".into(),
            })?
            .map_err(|e| self.unavailable(e))?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Whether `e` means the store could not be reached or answered in time (rather than refusing
    /// one command, as WRONGTYPE does).
    fn is_transport(e: &RedisError) -> bool {
        e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_cluster_error()
    }

    /// Runs independent commands in one round trip and returns their replies in order. A command
    /// the server refuses (a key of the wrong type written by someone else) fails alone; only a
    /// store that cannot be reached fails the whole batch.
    async fn batch(&self, cmds: Vec<Cmd>) -> Result<Vec<Reply>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let one = |r: Result<Value, RedisError>| match r {
            Ok(Value::ServerError(e)) => Ok(Err(e.to_string())),
            Ok(v) => Ok(Ok(v)),
            Err(e) if Self::is_transport(&e) => Err(self.unavailable(e)),
            Err(e) => Ok(Err(e.to_string())),
        };
        match &self.conn {
            Conn::Single(pool) if cmds.len() == 1 => {
                let c = cmds.into_iter().next().unwrap_or_else(|| cmd("PING"));
                Ok(vec![one(c.query_async::<Value>(&mut self.manager(pool)).await)?])
            }
            Conn::Single(pool) => {
                let mut pipe = Pipeline::with_capacity(cmds.len());
                pipe.ignore_errors();
                for c in cmds {
                    pipe.add_command(c);
                }
                let replies: Vec<Value> =
                    pipe.query_async(&mut self.manager(pool)).await.map_err(|e| self.unavailable(e))?;
                replies.into_iter().map(|v| one(Ok(v))).collect()
            }
            Conn::Cluster(_) => {
                let conn = self.cluster_conn().await?;
                join_all(cmds.into_iter().map(|c| {
                    let mut conn = conn.clone();
                    async move { c.query_async::<Value>(&mut conn).await }
                }))
                .await
                .into_iter()
                .map(one)
                .collect()
            }
        }
    }

    /// Decodes a reply; a refused command or an unreadable reply is a backend error.
    fn decode<T: FromRedisValue>(&self, r: Reply) -> Result<T> {
        let v = r.map_err(|reason| RegistryError::Backend { target: self.target.clone(), reason })?;
        T::from_redis_value(v)
            .map_err(|e| RegistryError::Backend { target: self.target.clone(), reason: e.to_string() })
    }

    /// SCAN one node (or the only server) for keys matching `pattern`.
    async fn scan(&self, pattern: &str, node: Option<(String, u16)>) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut c = cmd("SCAN");
            c.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(SCAN_COUNT);
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            let reply: Value = match (&self.conn, &node) {
                (Conn::Single(pool), _) => {
                    c.query_async(&mut self.manager(pool)).await.map_err(|e| self.unavailable(e))?
                }
                (Conn::Cluster(_), Some((host, port))) => {
                    let routing =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port: *port });
                    self.cluster_conn().await?.route_command(c, routing).await.map_err(|e| self.unavailable(e))?
                }
                (Conn::Cluster(_), None) => {
                    return Err(RegistryError::Invalid("SCAN needs a node".into()));
                }
            };
            let (next, keys): (u64, Vec<String>) = self.decode(Ok(reply))?;
            out.extend(keys);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// The primaries of the cluster, from `CLUSTER NODES`.
    async fn primaries(&self) -> Result<Vec<(String, u16)>> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.cluster_conn().await?;
        let text: String = cmd("CLUSTER").arg("NODES").query_async(&mut conn).await.map_err(|e| self.unavailable(e))?;
        Ok(parse_cluster_primaries(&text))
    }
}

/// Compare-and-set of a document kept as a hash `{v: version, d: bytes}`: writes only if the
/// version is still the expected one (0: absent). One key, so it runs on a Cluster too.
const DOC_PUT: &str = "local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0') \
    if v ~= tonumber(ARGV[1]) then return 0 end \
    redis.call('HSET', KEYS[1], 'v', v + 1, 'd', ARGV[2]) return 1";

/// Host and port of each connected primary in `CLUSTER NODES` output.
fn parse_cluster_primaries(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = f.get(2)?;
            if !flags.split(',').any(|x| x == "master") || flags.contains("fail") {
                return None;
            }
            // ip:port@cport[,hostname]
            let addr = f.get(1)?.split('@').next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// Escapes Redis glob characters so a namespace is matched literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[async_trait]
impl Registry for RedisRegistry {
    fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn heartbeat(&self, id: &str) -> Result<bool> {
        // The seed's `SETEX presence id 3`, written as `SET … EX 3 GET`: same key, value and TTL,
        // and the old value tells in the same command whether the registry had lost us.
        let mut c = cmd("SET");
        c.arg(self.keys.presence(id)).arg(id).arg("EX").arg(PRESENCE_TTL_SECS).arg("GET");
        let mut replies = self.batch(vec![c]).await?;
        let old: Option<String> = self.decode(replies.pop().unwrap_or(Ok(Value::Nil)))?;
        Ok(old.is_some())
    }

    async fn publish(&self, id: &str, info_json: &str, entries: &[(Index, String)]) -> Result<()> {
        let mut cmds = Vec::with_capacity(entries.len() + 1);
        let mut c = cmd("SETEX");
        c.arg(self.keys.info(id)).arg(INFO_TTL_SECS).arg(info_json);
        cmds.push(c);
        for (index, value) in entries {
            let mut c = cmd("HSET");
            c.arg(self.keys.index(index)).arg(id).arg(value);
            cmds.push(c);
        }
        self.batch(cmds).await?.into_iter().try_for_each(|r| self.decode::<Value>(r).map(drop))
    }

    async fn withdraw(&self, id: &str, entries: &[Index]) -> Result<()> {
        let mut cmds = Vec::with_capacity(entries.len() + 2);
        // One DEL per key: a two-key DEL would cross slots on a Cluster.
        for key in [self.keys.presence(id), self.keys.info(id)] {
            let mut c = cmd("DEL");
            c.arg(key);
            cmds.push(c);
        }
        for index in entries {
            let mut c = cmd("HDEL");
            c.arg(self.keys.index(index)).arg(id);
            cmds.push(c);
        }
        self.batch(cmds).await.map(drop)
    }

    async fn index(&self, index: &Index) -> Result<Vec<(String, String)>> {
        let mut c = cmd("HGETALL");
        c.arg(self.keys.index(index));
        let mut replies = self.batch(vec![c]).await?;
        self.decode(replies.pop().unwrap_or(Ok(Value::Nil)))
    }

    async fn sample(&self, index: &Index, count: usize) -> Result<Vec<(String, String)>> {
        let mut c = cmd("HRANDFIELD");
        c.arg(self.keys.index(index)).arg(count.max(1)).arg("WITHVALUES");
        let mut replies = self.batch(vec![c]).await?;
        self.decode(replies.pop().unwrap_or(Ok(Value::Nil)))
    }

    async fn scan_index(&self, index: &Index, cursor: u64, count: usize) -> Result<(u64, Vec<(String, String)>)> {
        let mut c = cmd("HSCAN");
        c.arg(self.keys.index(index)).arg(cursor).arg("COUNT").arg(count.max(1));
        let mut replies = self.batch(vec![c]).await?;
        self.decode(replies.pop().unwrap_or(Ok(Value::Nil)))
    }

    async fn probe(&self, ids: &[String], with_info: bool) -> Result<Vec<Probe>> {
        let per = if with_info { 2 } else { 1 };
        let mut cmds = Vec::with_capacity(ids.len() * per);
        for id in ids {
            let mut c = cmd("PTTL");
            c.arg(self.keys.presence(id));
            cmds.push(c);
            if with_info {
                let mut c = cmd("GET");
                c.arg(self.keys.info(id));
                cmds.push(c);
            }
        }
        let replies = self.batch(cmds).await?;
        let mut it = replies.into_iter();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            // -2: no such key. -1: a key without a TTL, which no node writes (someone else's, or
            // of the wrong type): it would count as live forever, so it counts as absent.
            let pttl = it.next().and_then(|r| r.ok()).and_then(|v| i64::from_redis_value(v).ok());
            let presence_ttl = match pttl {
                Some(ms) if ms > 0 => Some(Duration::from_millis(ms.unsigned_abs().min(PRESENCE_TTL_SECS * 1000))),
                _ => None,
            };
            let info = if with_info {
                match it.next() {
                    Some(Ok(v)) => Option::<String>::from_redis_value(v).unwrap_or_else(|e| {
                        tracing::warn!(instance = %enclava_core::text::quote(id), error = %e, "unreadable enclave info");
                        Some(String::new())
                    }),
                    Some(Err(e)) => {
                        tracing::warn!(instance = %enclava_core::text::quote(id), error = %e, "enclave info refused by the store");
                        Some(String::new())
                    }
                    None => None,
                }
            } else {
                None
            };
            out.push(Probe { presence_ttl, info });
        }
        Ok(out)
    }

    async fn remove(&self, entries: &[(Index, String)]) -> Result<()> {
        let cmds = entries
            .iter()
            .map(|(index, id)| {
                let mut c = cmd("HDEL");
                c.arg(self.keys.index(index)).arg(id);
                c
            })
            .collect();
        // A refused HDEL (a key someone replaced with another type) leaves that entry; the rest go.
        for r in self.batch(cmds).await? {
            if let Err(e) = r {
                tracing::warn!(error = %e, "an index entry could not be removed");
            }
        }
        Ok(())
    }

    async fn indexes(&self) -> Result<Vec<Index>> {
        let pattern = format!("{}by*", glob_escape(&self.keys.index_prefix()));
        let keys = match &self.conn {
            Conn::Single(_) => self.scan(&pattern, None).await?,
            Conn::Cluster(_) => {
                let mut all = Vec::new();
                for node in self.primaries().await? {
                    all.extend(self.scan(&pattern, Some(node)).await?);
                }
                all
            }
        };
        let mut out: Vec<Index> = keys.iter().filter_map(|k| self.keys.parse_index(k)).collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn doc_get(&self, name: &str) -> Result<Option<(u64, Vec<u8>)>> {
        let mut c = cmd("HMGET");
        c.arg(self.keys.doc(name)).arg("v").arg("d");
        let mut replies = self.batch(vec![c]).await?;
        let (version, doc): (Option<u64>, Option<Vec<u8>>) = self.decode(replies.pop().unwrap_or(Ok(Value::Nil)))?;
        Ok(version.zip(doc))
    }

    async fn doc_put(&self, name: &str, expect: u64, value: &[u8]) -> Result<bool> {
        let mut c = cmd("EVAL");
        c.arg(DOC_PUT).arg(1).arg(self.keys.doc(name)).arg(expect).arg(value);
        let mut replies = self.batch(vec![c]).await?;
        let written: i64 = self.decode(replies.pop().unwrap_or(Ok(Value::Nil)))?;
        Ok(written == 1)
    }

    async fn doc_delete(&self, name: &str) -> Result<bool> {
        let mut c = cmd("DEL");
        c.arg(self.keys.doc(name));
        let mut replies = self.batch(vec![c]).await?;
        let removed: i64 = self.decode(replies.pop().unwrap_or(Ok(Value::Nil)))?;
        Ok(removed > 0)
    }

    async fn ping(&self) -> Result<()> {
        let mut replies = self.batch(vec![cmd("PING")]).await?;
        self.decode::<Value>(replies.pop().unwrap_or(Ok(Value::Nil))).map(drop)
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_printed() {
        assert_eq!(redact("redis://user:secret@h:1/0"), "redis://h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn cluster_nodes_parse() {
        let text = "a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                    b 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922\n\
                    c 127.0.0.1:7002@17002 slave a 0 0 1 connected\n\
                    d 127.0.0.1:7003@17003 master,fail - 0 0 3 disconnected\n";
        assert_eq!(parse_cluster_primaries(text), vec![("127.0.0.1".to_owned(), 7000), ("127.0.0.1".to_owned(), 7001)]);
    }

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
