//! The soak's traffic: MCP sessions calling tools at a steady rate through the
//! gateway, and a record of what every call got.
//!
//! Each client holds one session (raw streamable HTTP, 2025-06-18) and sends, in
//! a fixed cycle of twenty: fourteen `whoami` (the hot path: one sidecar hop),
//! three `add` with `a` = -5 (a rewrite clamps it to 0: through ext-proc), two
//! `ticks` (an SSE answer with three progress notifications), and one
//! `initialize` of a session it calls once and abandons (ext-proc seals its id),
//! as clients come and go. Every answer is checked: `whoami` must name the backend
//! the session started on (else the session *moved*), `add` must show the clamp,
//! `ticks` must stream every event. A 404 means the session was lost: the client
//! opens a new one, as the spec tells clients to. Besides, one client sends a call
//! the rules deny (`add` with `a` = 5000) twice a second: it must never get a result.
//!
//! Long on purpose: the clients' loop and every check an answer must pass are
//! one contract, read in one place.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::mcp::{self, RawSession, Refused};

/// What a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `tools/call whoami` in a session: the hot path.
    Call,
    /// `tools/call add`: rewritten (clamped) on its way, through ext-proc.
    Rewritten,
    /// `tools/call ticks`: an SSE answer with progress notifications.
    Stream,
    /// A call the rules deny: must get JSON-RPC error -32001, never a result.
    Denied,
    /// `initialize` (and `notifications/initialized`) of a new session.
    Initialize,
    /// One run of an official SDK client (see [`super::sdk`]).
    Sdk,
}

/// How an answer compared with what the client expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The answer a healthy gateway gives.
    Expected,
    /// 404: the session is gone (its backend left); the client starts another.
    SessionLost,
    /// `whoami` named another backend than the session's: it moved.
    Moved,
    /// A call the rules deny got a result.
    RulesSkipped,
    /// Any other status, a wrong body, or no answer at all.
    Failed,
}

/// One request and its answer.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// When it was sent, since the traffic started.
    pub sent: Duration,
    pub latency: Duration,
    pub client: u32,
    pub kind: Kind,
    /// HTTP status; 0 when no answer came (refused, reset, timed out).
    pub status: u16,
    /// The JSON-RPC error code of the answer, if it was one.
    pub code: Option<i64>,
    pub verdict: Verdict,
    /// The backend the client's session was on when it sent this (index of
    /// `mcp-a`, `mcp-b`, ...), if known.
    pub backend: Option<u8>,
}

impl Outcome {
    /// When the answer came (or the request failed), since the traffic started.
    pub fn answered(&self) -> Duration {
        self.sent + self.latency
    }

    /// `200`, `503`, `200 -32001`, `none`: how answers are counted in reports.
    pub fn label(&self) -> String {
        let status = match self.status {
            0 => "none".to_owned(),
            s => s.to_string(),
        };
        match self.code {
            Some(code) => format!("{status} {code}"),
            None => status,
        }
    }
}

/// How to run the traffic.
#[derive(Debug, Clone)]
pub struct TrafficOptions {
    /// The gateway's MCP endpoint.
    pub url: String,
    /// Bearer token of the session clients.
    pub token: String,
    /// Session clients (each one session at a time, one call in flight).
    pub clients: u32,
    /// Calls per second over all clients; 0 for as fast as answers come.
    pub rate: f64,
}

/// The traffic while it runs. Stopped (every task aborted) when dropped.
pub struct Traffic {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    url: String,
    token: String,
    http: reqwest::Client,
    clients: u32,
    started: Instant,
    /// Calls per second, as `f64` bits (0: unpaced).
    rate: AtomicU64,
    /// No new calls while set (calls in flight finish).
    paused: std::sync::atomic::AtomicBool,
    /// Calls sent and not yet answered: when each was sent, by ticket.
    in_flight: Mutex<BTreeMap<u64, Duration>>,
    tickets: AtomicU64,
    log: Mutex<Vec<Outcome>>,
    /// Details of answers that were neither expected nor a lost session: a few
    /// examples of each kind (the text without its time), with their count.
    oddities: Mutex<BTreeMap<String, (u64, Vec<String>)>>,
}

/// Marks the client id of a session opened, called once and abandoned: its
/// outcomes are not those of the client's own session.
pub const THROWAWAY: u32 = 1 << 31;

/// Examples kept verbatim of each kind of oddity (all are counted).
const EXAMPLES_KEPT: usize = 3;

impl Traffic {
    /// Starts every client; they open their sessions as they go.
    pub fn start(options: &TrafficOptions) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            url: options.url.clone(),
            token: options.token.clone(),
            http: soak_client()?,
            clients: options.clients.max(1),
            started: Instant::now(),
            rate: AtomicU64::new(options.rate.to_bits()),
            paused: Default::default(),
            in_flight: Mutex::new(BTreeMap::new()),
            tickets: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            oddities: Mutex::new(BTreeMap::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for client in 0..shared.clients {
            tasks.push(tokio::spawn(run_client(
                shared.clone(),
                client,
                stopped.clone(),
            )));
        }
        tasks.push(tokio::spawn(run_denied_prober(
            shared.clone(),
            shared.clients,
            stopped,
        )));
        Ok(Self {
            shared,
            stop,
            tasks,
        })
    }

    /// Changes the rate (calls per second over all clients; 0: unpaced).
    pub fn set_rate(&self, rate: f64) {
        self.shared.rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Sends no new calls (those in flight finish), as clients do once a load
    /// balancer stops sending them to a gateway that drains.
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::Relaxed);
    }

    /// Time since the traffic started: the clock of every [`Outcome`].
    pub fn now(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Records an outcome observed elsewhere (an SDK run, a drill's own probe).
    pub fn record(&self, outcome: Outcome) {
        self.shared.record(outcome);
    }

    /// Notes an answer that needs explaining in the report.
    pub fn note(&self, text: String) {
        self.shared.note(text);
    }

    /// Every outcome answered from `from` on and sent before `to`: what a fault
    /// at `from` could touch, the calls then in flight included. Waits until
    /// every call sent before `to` is answered (or timed out) first.
    pub async fn settled_outcomes(&self, from: Duration, to: Duration) -> Vec<Outcome> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && self.shared.oldest_in_flight().is_some_and(|t| t < to) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.shared
            .log
            .lock()
            .map(|log| {
                log.iter()
                    .filter(|o| o.answered() >= from && o.sent < to)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every outcome sent in `[from, to)`.
    pub fn outcomes(&self, from: Duration, to: Duration) -> Vec<Outcome> {
        self.shared
            .log
            .lock()
            .map(|log| {
                log.iter()
                    .filter(|o| o.sent >= from && o.sent < to)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every outcome so far.
    pub fn all_outcomes(&self) -> Vec<Outcome> {
        self.shared
            .log
            .lock()
            .map(|log| log.clone())
            .unwrap_or_default()
    }

    /// The oddities noted so far: a few examples of each kind, and how many.
    pub fn oddities(&self) -> Vec<String> {
        let Ok(oddities) = self.shared.oddities.lock() else {
            return Vec::new();
        };
        oddities
            .values()
            .flat_map(|(count, examples)| {
                examples
                    .iter()
                    .map(move |example| format!("{example} [{count} like it]"))
            })
            .collect()
    }

    /// Stops every client and waits for them (calls in flight are abandoned).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Shared {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Notes a call about to be sent; returns its ticket and send time.
    fn send(&self) -> (u64, Duration) {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let sent = self.now();
        if let Ok(mut in_flight) = self.in_flight.lock() {
            in_flight.insert(ticket, sent);
        }
        (ticket, sent)
    }

    fn answered(&self, ticket: u64) {
        if let Ok(mut in_flight) = self.in_flight.lock() {
            in_flight.remove(&ticket);
        }
    }

    fn oldest_in_flight(&self) -> Option<Duration> {
        self.in_flight
            .lock()
            .ok()
            .and_then(|in_flight| in_flight.values().min().copied())
    }

    /// Waits while the traffic is paused; false once it should stop.
    async fn unpaused(&self, stop: &mut watch::Receiver<bool>) -> bool {
        while self.paused.load(Ordering::Relaxed) {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop.changed() => return false,
            }
        }
        !*stop.borrow()
    }

    fn record(&self, outcome: Outcome) {
        if let Ok(mut log) = self.log.lock() {
            log.push(outcome);
        }
    }

    /// Notes `text` (which starts with its time, `12.3s `).
    fn note(&self, text: String) {
        let kind = text
            .split_once("s ")
            .map_or(text.as_str(), |(_, rest)| rest)
            .chars()
            .take(120)
            .collect::<String>();
        if let Ok(mut oddities) = self.oddities.lock() {
            let (count, examples) = oddities.entry(kind).or_default();
            *count += 1;
            if examples.len() < EXAMPLES_KEPT {
                examples.push(text);
            }
        }
    }

    /// How long one client waits between calls at the current rate.
    fn period(&self) -> Option<Duration> {
        let rate = f64::from_bits(self.rate.load(Ordering::Relaxed));
        (rate > 0.0).then(|| Duration::from_secs_f64(f64::from(self.clients) / rate))
    }
}

/// An HTTPS client for the soak: the dev CA, HTTP/2 when offered, and a timeout
/// short enough that a call lost in a fault is counted, not waited on.
pub fn soak_client() -> anyhow::Result<reqwest::Client> {
    let ca = std::fs::read(crate::paths::certs_dir().join("ca.pem"))?;
    Ok(reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// The session a client holds: the session and the backend it is on.
struct Held {
    session: RawSession,
    backend: Option<u8>,
}

async fn run_client(shared: Arc<Shared>, client: u32, mut stop: watch::Receiver<bool>) {
    let mut held: Option<Held> = None;
    // Clients start spread over one period, not all at once.
    let mut next = Instant::now()
        + shared
            .period()
            .map(|p| p.mul_f64(f64::from(client) / f64::from(shared.clients)))
            .unwrap_or_default();
    let mut turn: u64 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        if let Some(period) = shared.period() {
            next += period;
            let now = Instant::now();
            // Fallen behind by more than a period (a slow answer, a fault): start
            // the schedule again from now rather than send a burst.
            if next + period < now {
                next = now;
            }
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                _ = stop.changed() => return,
            }
        }
        if !shared.unpaused(&mut stop).await {
            return;
        }
        let Some(current) = held.as_mut() else {
            held = open_session(&shared, client).await;
            if held.is_none() {
                // Not paced when unpaced: do not spin on a gateway that refuses.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        let kind = match turn % 20 {
            4 | 11 | 17 => Kind::Rewritten,
            9 | 15 => Kind::Stream,
            19 => Kind::Initialize,
            _ => Kind::Call,
        };
        turn += 1;
        if kind == Kind::Initialize {
            drop(open_session(&shared, client | THROWAWAY).await);
            continue;
        }
        let outcome = call(&shared, client, current, kind).await;
        shared.record(outcome);
        if outcome.verdict == Verdict::SessionLost {
            held = None;
        }
    }
}

/// Opens a session and learns its backend; records both requests.
async fn open_session(shared: &Shared, client: u32) -> Option<Held> {
    let (ticket, sent) = shared.send();
    let started = Instant::now();
    let opened = RawSession::initialize(&shared.http, &shared.url, &shared.token).await;
    shared.answered(ticket);
    let mut outcome = Outcome {
        sent,
        latency: started.elapsed(),
        client,
        kind: Kind::Initialize,
        status: 200,
        code: None,
        verdict: Verdict::Expected,
        backend: None,
    };
    let session = match opened {
        Ok(session) => session,
        Err(err) => {
            outcome.verdict = Verdict::Failed;
            outcome.status = err.downcast_ref::<Refused>().map_or(0, |r| r.status);
            shared.note(format!("{:.1}s initialize: {err:#}", sent.as_secs_f64()));
            shared.record(outcome);
            return None;
        }
    };
    shared.record(outcome);
    // The demo backends name themselves in `serverInfo`: the session is theirs
    // from its first call, even one that fails.
    let backend = session.server_info["name"].as_str().and_then(backend_index);
    let mut held = Held { session, backend };
    let first = call(shared, client, &mut held, Kind::Call).await;
    shared.record(first);
    (first.verdict == Verdict::Expected).then_some(held)
}

/// Sends one call of `kind` in the held session and judges the answer.
async fn call(shared: &Shared, client: u32, held: &mut Held, kind: Kind) -> Outcome {
    let id = held.session.next_id();
    let body = match kind {
        Kind::Rewritten => json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": -5, "b": 2}}}),
        Kind::Stream => json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "ticks", "arguments": {"count": 3, "interval_ms": 5},
                       "_meta": {"progressToken": id}}}),
        Kind::Denied => json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": 5000, "b": 1}}}),
        _ => json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}}}),
    };
    let (ticket, sent) = shared.send();
    let started = Instant::now();
    let answer = match held.session.post(&body).await {
        Ok(response) => {
            let status = response.status().as_u16();
            response
                .text()
                .await
                .map(|text| (status, text))
                .map_err(anyhow::Error::from)
        }
        Err(err) => Err(err),
    };
    let latency = started.elapsed();
    shared.answered(ticket);
    let mut outcome = Outcome {
        sent,
        latency,
        client,
        kind,
        status: 0,
        code: None,
        verdict: Verdict::Failed,
        backend: held.backend,
    };
    let (status, text) = match answer {
        Ok(answer) => answer,
        Err(err) => {
            shared.note(format!(
                "{:.1}s {kind:?} (backend {:?}): {err:#}",
                sent.as_secs_f64(),
                held.backend
            ));
            return outcome;
        }
    };
    outcome.status = status;
    let messages = mcp::messages(&text).unwrap_or_default();
    let reply = messages.iter().find(|m| m.get("id") == Some(&json!(id)));
    outcome.code = reply.and_then(|m| m["error"]["code"].as_i64());
    outcome.verdict = match (status, kind) {
        (404, _) => Verdict::SessionLost,
        (200, Kind::Denied) => match reply {
            Some(m) if m.get("result").is_some() => Verdict::RulesSkipped,
            Some(_) if outcome.code == Some(-32001) => Verdict::Expected,
            _ => Verdict::Failed,
        },
        (200, _) => judge(kind, reply, &messages, held),
        _ => Verdict::Failed,
    };
    if !matches!(outcome.verdict, Verdict::Expected | Verdict::SessionLost) {
        let shown: String = text.chars().take(300).collect();
        shared.note(format!(
            "{:.1}s {kind:?} (backend {:?}): HTTP {status} {:?}: {shown}",
            sent.as_secs_f64(),
            held.backend,
            outcome.verdict
        ));
    }
    outcome
}

/// Whether a 200 answer to a call of `kind` is the right one; `whoami` also
/// pins the held session to the backend it names the first time.
fn judge(kind: Kind, reply: Option<&Value>, messages: &[Value], held: &mut Held) -> Verdict {
    let Some(result) = reply.and_then(|m| m.get("result")) else {
        return Verdict::Failed;
    };
    let text = result["content"][0]["text"].as_str().unwrap_or_default();
    match kind {
        Kind::Call => {
            let Some(backend) = backend_index(text) else {
                return Verdict::Failed;
            };
            match held.backend {
                None => {
                    held.backend = Some(backend);
                    Verdict::Expected
                }
                Some(own) if own == backend => Verdict::Expected,
                // Named by `serverInfo` and by `whoami` differently: moved.
                Some(_) => Verdict::Moved,
            }
        }
        // -5 + 2 unless the clamp made it 0 + 2.
        Kind::Rewritten => match text.parse::<f64>() {
            Ok(2.0) => Verdict::Expected,
            _ => Verdict::Failed,
        },
        Kind::Stream => {
            let progress = messages
                .iter()
                .filter(|m| m["method"] == "notifications/progress")
                .count();
            if progress == 3 && text == "3" {
                Verdict::Expected
            } else {
                Verdict::Failed
            }
        }
        _ => Verdict::Failed,
    }
}

/// `mcp-a` → 0, `mcp-b` → 1, ...
pub fn backend_index(name: &str) -> Option<u8> {
    let letter = name.strip_prefix("mcp-")?;
    match letter.as_bytes() {
        [b] if b.is_ascii_lowercase() => Some(b - b'a'),
        _ => None,
    }
}

/// Twice a second, a call the rules deny, in a session of its own.
async fn run_denied_prober(shared: Arc<Shared>, client: u32, mut stop: watch::Receiver<bool>) {
    let mut held: Option<Held> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if !shared.unpaused(&mut stop).await {
            return;
        }
        let Some(current) = held.as_mut() else {
            held = open_session(&shared, client).await;
            // Its calls never reach a backend (the rules deny them first), so
            // its session never learns that its backend left: not counted on one.
            if let Some(held) = held.as_mut() {
                held.backend = None;
            }
            continue;
        };
        let outcome = call(&shared, client, current, Kind::Denied).await;
        shared.record(outcome);
        if outcome.verdict == Verdict::SessionLost {
            held = None;
        }
    }
}
