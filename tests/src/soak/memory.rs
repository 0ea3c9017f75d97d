//! Memory that stays bounded: a flood of distinct tokens against ext-authz's
//! token cache, and sessions opened by the thousand and abandoned.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use serde::Serialize;
use serde_json::json;

use super::traffic::soak_client;
use crate::dev_idp::DevClaims;
use crate::mcp::{self, RawSession};
use crate::procfs;
use crate::stack::Stack;

/// One memory check: its figures and the expectations that did not hold.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryCheck {
    pub name: &'static str,
    pub expectation: String,
    pub figures: BTreeMap<String, serde_json::Value>,
    pub failures: Vec<String>,
}

impl MemoryCheck {
    fn figure(&mut self, name: &str, value: impl Serialize) {
        self.figures.insert(name.to_owned(), json!(value));
    }
}

/// `count` distinct valid tokens, each checked once by ext-authz (its gRPC
/// `Check`, as Envoy calls it). Its token cache must stay within `budget`
/// bytes (its own gauge, after evictions) and its resident memory grow by less
/// than twice that plus 16 MiB, where keeping every token would take ~1.5 KiB each.
pub async fn token_flood(stack: &Stack, count: usize, budget: u64) -> anyhow::Result<MemoryCheck> {
    let mut check = MemoryCheck {
        name: "token-flood",
        expectation: format!(
            "{count} distinct valid tokens: ext-authz's token cache stays within its {} MiB budget",
            budget / (1024 * 1024)
        ),
        figures: BTreeMap::new(),
        failures: Vec::new(),
    };
    let pid = pid_of(stack, "ext-authz")?;
    let rss_before = procfs::rss_bytes(pid)?;
    let signer = stack.issuer_keys().signer(None)?;
    let signing = Instant::now();
    let (issuer, url) = (stack.issuer_url(), stack.url());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let requests: Vec<CheckRequest> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (signer, issuer, url) = (&signer, &issuer, &url);
                scope.spawn(move || {
                    (t..count)
                        .step_by(threads)
                        .map(|n| {
                            let claims =
                                DevClaims::new(issuer, url, &format!("flood-{n}"), "mcp:tools");
                            Ok(initialize_check(&signer.sign(&claims)?))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| anyhow::anyhow!("a signing thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<Vec<_>>>>()
            .map(|parts| parts.into_iter().flatten().collect())
    })?;
    check.figure("signing_s", signing.elapsed().as_secs_f64());

    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://127.0.0.1:{}",
        stack.ports().ext_authz
    ))?
    .connect()
    .await?;
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..32 {
        let mut client = AuthorizationClient::new(channel.clone());
        let requests = requests.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut allowed = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = requests.get(i) else {
                    return allowed;
                };
                let ok = client
                    .check(request.clone())
                    .await
                    .is_ok_and(|r| r.into_inner().status.is_some_and(|s| s.code == 0));
                allowed += usize::from(ok);
            }
        }));
    }
    let mut allowed = 0;
    for worker in workers {
        allowed += worker.await?;
    }
    let took = started.elapsed();
    // The gauges are refreshed every 5 s, after pending evictions.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let metrics = stack.metrics("ext-authz").await?;
    let cached_bytes = metric(&metrics, "mcp_gateway_token_cache_bytes")?;
    let cached = metric(&metrics, "mcp_gateway_token_cache_entries")?;
    let rss_after = procfs::rss_bytes(pid)?;
    let growth = rss_after.saturating_sub(rss_before);
    check.figure("tokens", count);
    check.figure("allowed", allowed);
    check.figure("checks_per_s", count as f64 / took.as_secs_f64());
    check.figure("cache_bytes", cached_bytes);
    check.figure("cache_entries", cached);
    check.figure("budget_bytes", budget);
    check.figure("rss_before_mib", mib(rss_before));
    check.figure("rss_after_mib", mib(rss_after));
    if allowed != count {
        check.failures.push(format!(
            "{} of {count} valid tokens were not allowed",
            count - allowed
        ));
    }
    if cached_bytes > budget as f64 {
        check.failures.push(format!(
            "the token cache holds {cached_bytes} bytes, over its budget of {budget}"
        ));
    }
    if cached as usize >= count {
        check
            .failures
            .push("every token is still cached: the budget evicted nothing".to_owned());
    }
    let limit = 2 * budget + 16 * 1024 * 1024;
    if growth > limit {
        check.failures.push(format!(
            "ext-authz's resident memory grew by {:.1} MiB (limit {:.1})",
            mib(growth),
            mib(limit)
        ));
    }
    Ok(check)
}

/// `count` sessions opened through the gateway and never used again. ext-proc
/// seals each session id into the token the client holds and keeps nothing:
/// its resident memory after them is within 5 % (and 4 MiB) of before.
pub async fn abandoned_sessions(stack: &Stack, count: usize) -> anyhow::Result<MemoryCheck> {
    let mut check = MemoryCheck {
        name: "abandoned-sessions",
        expectation: format!(
            "{count} sessions opened and abandoned: ext-proc's memory unchanged (it keeps no per-session state)"
        ),
        figures: BTreeMap::new(),
        failures: Vec::new(),
    };
    let pid = pid_of(stack, "ext-proc")?;
    let rss_before = procfs::rss_bytes(pid)?;
    let token = stack.token("soak-abandoner", "mcp:tools").await?;
    let http = soak_client()?;
    let url = stack.url();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (http, url, token, next) = (http.clone(), url.clone(), token.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut opened = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < count {
                if RawSession::initialize(&http, &url, &token).await.is_ok() {
                    opened += 1;
                }
            }
            opened
        }));
    }
    let mut opened = 0;
    for worker in workers {
        opened += worker.await?;
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = procfs::rss_bytes(pid)?;
    check.figure("opened", opened);
    check.figure("sessions_per_s", opened as f64 / took.as_secs_f64());
    check.figure("rss_before_mib", mib(rss_before));
    check.figure("rss_after_mib", mib(rss_after));
    if opened != count {
        check
            .failures
            .push(format!("only {opened} of {count} sessions opened"));
    }
    let limit = rss_before + (rss_before / 20).max(4 * 1024 * 1024);
    if rss_after > limit {
        check.failures.push(format!(
            "ext-proc grew from {:.1} to {:.1} MiB",
            mib(rss_before),
            mib(rss_after)
        ));
    }
    // Still serving: one more session works end to end.
    let session = RawSession::initialize(&http, &url, &token).await?;
    session.call_tool("whoami", json!({})).await?;
    Ok(check)
}

fn pid_of(stack: &Stack, name: &str) -> anyhow::Result<u32> {
    stack
        .gateway_pids()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, pid)| pid)
        .ok_or_else(|| anyhow::anyhow!("{name} is not running"))
}

/// The value of an unlabelled sample in Prometheus text.
fn metric(text: &str, name: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .ok_or_else(|| anyhow::anyhow!("no metric {name}"))?
        .trim()
        .parse()
        .map_err(|err| anyhow::anyhow!("metric {name}: {err}"))
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A Check for an `initialize` with `token`, shaped as Envoy sends it.
fn initialize_check(token: &str) -> CheckRequest {
    let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": mcp::PROTOCOL_VERSION, "capabilities": {},
                   "clientInfo": {"name": "soak-flood", "version": "0"}}});
    crate::envoy_check::mcp_post("localhost", token, body.to_string())
}
