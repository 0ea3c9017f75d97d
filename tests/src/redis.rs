//! A Redis server for tests of what replicas share (Debian's `redis-server`,
//! installed by `cargo xtask setup`): on a free loopback port, in memory only,
//! stopped when dropped.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::Process;

/// A running `redis-server`.
pub struct RedisServer {
    process: Process,
    port: u16,
}

impl RedisServer {
    /// Starts one on a free port, logging to `dir/redis.log`; ready when it
    /// answers PING.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("redis-server is missing: run `cargo xtask setup` (it installs Debian's redis-server)")?;
        let port = crate::stack::free_port()?;
        let mut command = Command::new(binary);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir);
        let process = Process::spawn("redis", command, &dir.join("redis.log"))?;
        let mut server = Self { process, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.ping().await.is_err() {
            server.process.ensure_running()?;
            if Instant::now() > deadline {
                bail!("redis-server did not answer PING within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it at once, as an outage would.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.process.kill().map(|_| ())
    }

    async fn ping(&self) -> anyhow::Result<()> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await?;
        if &reply != b"+PONG\r\n" {
            bail!(
                "unexpected reply to PING: {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
        Ok(())
    }
}
