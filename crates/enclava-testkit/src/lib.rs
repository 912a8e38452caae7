//! Real services for tests and benchmarks: a `redis-server` on a free loopback port, a real
//! 3-master Redis Cluster made with `redis-cli --cluster create`, and a throwaway PostgreSQL cluster
//! with fresh databases. Each one lives in its own temporary folder and is killed on drop. No fixed
//! ports; every wait is bounded; the machine's own services are never used or changed.
//!
//! # Layout
//! - [`RedisServer`]: one server, restartable on the same port (to test recovery).
//! - [`RedisCluster`]: three primaries, no replicas.
//! - [`free_port`]: a loopback port nobody listens on.
//! - [`PgCluster`]: a throwaway PostgreSQL cluster (`initdb`, `postgres`) on a free port.
//! - [`PgDatabase`]: a new database on the test PostgreSQL server, dropped when done.
//! - [`collateral::CollateralServer`]: Intel PCS- and AMD KDS-style collateral over HTTP.

pub mod collateral;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer PING after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A loopback TCP port that is free right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A port `p` with `p` and `p + 10000` (the cluster bus) both free.
fn free_cluster_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher, RandomState};
    for attempt in 0u32..500 {
        // Below the ephemeral range, so that p + 10000 stays a valid port.
        let p = 15_000 + (RandomState::new().hash_one(attempt) % 30_000) as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return Ok(p);
        }
    }
    Err(std::io::Error::other("no free port pair for a cluster node"))
}

fn which(bin: &str) -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("{bin} not found on PATH: install it (Debian: apt-get install redis-server redis-tools)")
        })
}

/// Sends one inline command and returns the raw reply (enough for PING and CLUSTER INFO).
fn raw_command(port: u16, command: &str) -> std::io::Result<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("timed out waiting for {what}"))
}

/// One `redis-server`, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free loopback port.
    pub fn start() -> Result<RedisServer, String> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Result<RedisServer, String> {
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let port = free_port().map_err(|e| e.to_string())?;
            let mut s = RedisServer { port, dir, child: None, extra: extra.iter().map(|s| s.to_string()).collect() };
            match s.spawn() {
                Ok(()) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(format!("redis-server did not start on any of 5 free ports: {last}"))
    }

    fn spawn(&mut self) -> Result<(), String> {
        self.child = Some(spawn_redis(self.port, self.dir.path(), &self.extra)?);
        let port = self.port;
        wait_until("redis-server", || raw_command(port, "PING").is_ok_and(|r| r.starts_with("+PONG")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL); its data is lost.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_redis(port: u16, dir: &Path, extra: &[String]) -> Result<Child, String> {
    Command::new(which("redis-server")?)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server: {e}"))
}

/// A real Redis Cluster of three primaries, killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them with `redis-cli --cluster create`.
    pub fn start() -> Result<RedisCluster, String> {
        let cli = which("redis-cli")?;
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let port = free_cluster_port().map_err(|e| e.to_string())?;
            let extra =
                ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
                    .map(String::from)
                    .to_vec();
            let mut s = RedisServer { port, dir, child: None, extra };
            s.spawn()?;
            nodes.push(s);
        }
        let mut create = Command::new(cli);
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!("redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout)));
        }
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        wait_until("cluster_state:ok on every node", || {
            ports.iter().all(|p| raw_command(*p, "CLUSTER INFO").is_ok_and(|r| r.contains("cluster_state:ok")))
        })?;
        Ok(RedisCluster { nodes })
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// `redis://127.0.0.1:P` of each primary.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// The PostgreSQL server tests use: `ENCLAVA_TEST_POSTGRES` when set (a server of one's own),
/// else a throwaway cluster this process starts once ([`PgCluster`]) and that stops when the
/// process exits. The machine's own PostgreSQL is never touched.
pub fn postgres_admin_url() -> Result<String, String> {
    if let Ok(url) = std::env::var("ENCLAVA_TEST_POSTGRES") {
        return Ok(url);
    }
    static SHARED: std::sync::OnceLock<Result<PgCluster, String>> = std::sync::OnceLock::new();
    SHARED.get_or_init(PgCluster::start).as_ref().map(PgCluster::admin_url).map_err(Clone::clone)
}

/// A throwaway PostgreSQL cluster (`initdb` + `postgres` from the installed server) in a temporary
/// folder on a free loopback port. It runs under a small shell that stops it and removes the folder
/// when this process's end of a pipe closes, so even a cluster kept in a `static` goes away when
/// the test binary exits or is killed. As root, it runs as the `postgres` user (PostgreSQL refuses
/// root).
#[derive(Debug)]
pub struct PgCluster {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

/// The newest installed PostgreSQL's `bin` folder (`/usr/lib/postgresql/N/bin`), or the one on PATH.
fn pg_bin() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").is_file())
        .collect();
    versions.sort();
    if let Some((_, p)) = versions.pop() {
        return Ok(p);
    }
    which("initdb").map(|p| p.parent().map(Path::to_owned).unwrap_or_default()).map_err(|_| {
        "PostgreSQL's initdb not found: install the server (Debian: apt-get install postgresql) or set ENCLAVA_TEST_POSTGRES"
            .to_owned()
    })
}

/// The uid and gid of `user` from /etc/passwd.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user)).then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

/// Whether this process runs as root (owner of `/proc/self`).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

impl PgCluster {
    /// Makes and starts a new cluster (about two seconds).
    pub fn start() -> Result<PgCluster, String> {
        let bin = pg_bin()?;
        let base = std::env::temp_dir().join(format!("enclava-pg-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        let as_postgres = is_root();
        if as_postgres {
            let (uid, gid) =
                user_ids("postgres").ok_or("running as root, but there is no postgres user to run PostgreSQL as")?;
            std::os::unix::fs::chown(&base, Some(uid), Some(gid))
                .map_err(|e| format!("cannot chown {}: {e}", base.display()))?;
        }
        let data = base.join("data");
        let mut initdb = pg_command(&bin.join("initdb"), as_postgres);
        initdb.arg("-D").arg(&data).args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "-N", "--no-instructions"]);
        let out = initdb.stdin(Stdio::null()).output().map_err(|e| format!("cannot run initdb: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&base);
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port().map_err(|e| e.to_string())?;
            let mut c = PgCluster { port, dir: base.clone(), bin: bin.clone(), child: None };
            match c.spawn(as_postgres) {
                Ok(()) => return Ok(c),
                Err(e) => last = e,
            }
        }
        let _ = std::fs::remove_dir_all(&base);
        Err(format!("PostgreSQL did not start on any of 5 free ports: {last}"))
    }

    fn spawn(&mut self, as_postgres: bool) -> Result<(), String> {
        // The shell starts postgres, waits for its stdin (our pipe) to close, then stops it fast
        // and removes the cluster's folder.
        let script = r#"dir="$1"; shift; "$@" & pid=$!; cat >/dev/null; kill -INT "$pid" 2>/dev/null; wait "$pid"; rm -rf "$dir""#;
        let mut cmd = pg_command(Path::new("/bin/sh"), as_postgres);
        cmd.arg("-c").arg(script).arg("sh").arg(&self.dir).arg(self.bin.join("postgres"));
        cmd.arg("-D").arg(self.dir.join("data"));
        cmd.args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"]).arg(&self.dir);
        // A test server: durability is the tests' business, not this cluster's.
        for setting in ["fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=300"] {
            cmd.args(["-c", setting]);
        }
        // The log sits in the cluster's folder, which goes with it.
        let log = std::fs::File::create(self.dir.join("postgres.log")).map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start postgres: {e}"))?;
        self.child = Some(child);
        // Listening is not enough: it refuses logins while it starts up. pg_isready says when.
        let (port, isready) = (self.port.to_string(), self.bin.join("pg_isready"));
        let started = wait_until("PostgreSQL to accept connections", || {
            Command::new(&isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if started.is_err() {
            self.stop();
        }
        started
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server fast and removes its folder.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pg_command(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A fresh, uniquely named database on the test PostgreSQL server; [`PgDatabase::drop_db`]
/// removes it.
#[derive(Debug)]
pub struct PgDatabase {
    pub url: String,
    name: String,
    admin: String,
}

impl PgDatabase {
    pub async fn create() -> Result<PgDatabase, String> {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let admin = postgres_admin_url()?;
        let mut conn = sqlx::AnyConnection::connect(&admin).await.map_err(|e| {
            format!("cannot reach the test PostgreSQL at {admin}: {e}. Unset ENCLAVA_TEST_POSTGRES to use a throwaway cluster")
        })?;
        let name = format!("enclava_test_{}_{}", std::process::id(), unique());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("cannot create database {name}: {e}"))?;
        let _ = conn.close().await;
        let base = admin.split('?').next().unwrap_or(&admin);
        let (server, _) = base.rsplit_once('/').ok_or("ENCLAVA_TEST_POSTGRES has no database path")?;
        Ok(PgDatabase { url: format!("{server}/{name}"), name, admin })
    }

    pub async fn drop_db(self) {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::AnyConnection::connect(&self.admin).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                .execute(&mut conn)
                .await;
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    (u64::from(t) << 16) ^ N.fetch_add(1, Ordering::Relaxed)
}
