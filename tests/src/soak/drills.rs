//! Faults under load, each with what clients must see and what they did see.
//!
//! A drill breaks one part of the running stack while the soak's traffic goes on,
//! heals it, waits for things to settle, then judges every answer sent in its
//! window: counts by status, time to recover after the part served again,
//! sessions lost (404) and moved (answered by another backend). Expectations are
//! checked here, so a regression fails the soak: a drill's `failures` says which.
//!
//! Long on purpose: one function per drill, each with the fault, the healing
//! and the expectations it is judged by, side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::json;

use super::traffic::{Kind, Outcome, THROWAWAY, Traffic, Verdict, soak_client};
use crate::dev_idp::DevClaims;
use crate::mcp::{self, RawSession};
use crate::stack::{Stack, random_session_key};

/// A fault the soak can drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drill {
    ExtAuthzKilled,
    ExtProcKilled,
    IdpOutage,
    BackendKilled,
    BackendsChanged,
    KeysAndRules,
    EnvoyDrained,
}

impl Drill {
    /// Every drill, in the order a full soak runs them (Envoy's drain ends it).
    pub const ALL: [Drill; 7] = [
        Drill::ExtAuthzKilled,
        Drill::ExtProcKilled,
        Drill::IdpOutage,
        Drill::BackendKilled,
        Drill::BackendsChanged,
        Drill::KeysAndRules,
        Drill::EnvoyDrained,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Drill::ExtAuthzKilled => "ext-authz-killed",
            Drill::ExtProcKilled => "ext-proc-killed",
            Drill::IdpOutage => "idp-outage",
            Drill::BackendKilled => "backend-killed",
            Drill::BackendsChanged => "backends-changed",
            Drill::KeysAndRules => "keys-and-rules",
            Drill::EnvoyDrained => "envoy-drained",
        }
    }

    /// What clients must see, in a sentence.
    pub fn expectation(self) -> &'static str {
        match self {
            Drill::ExtAuthzKilled => {
                "ext-authz SIGKILLed for 3 s: only 503 while it is down (or a reset for a call in flight at the crash), never a result for a denied call, recovered within 2 s of serving again, 0 sessions lost"
            }
            Drill::ExtProcKilled => {
                "ext-proc SIGKILLed for 3 s: 0 sessions lost, only 503 while it is down (or a reset for a call in flight at the crash), recovered within 2 s of serving again"
            }
            Drill::IdpOutage => {
                "the IdP down: tokens signed with known keys keep passing, a token with a new kid gets 401, and passes within the unknown-kid interval after the IdP returns"
            }
            Drill::BackendKilled => {
                "a backend SIGKILLed: only its sessions get 404 (503 until Envoy's health check drops it) and their clients start new ones elsewhere; no other client sees anything"
            }
            Drill::BackendsChanged => {
                "a backend added, then one retired (out of EDS, stopped 5 s later): 0 sessions moved; only the retired backend's sessions end, with 404, after it stops"
            }
            Drill::KeysAndRules => {
                "a session key added with rolling sidecar restarts (both within 5 s), and the rules rewritten in place 8 times: 0 sessions lost, only 503 during restarts, a call the rules deny never passes"
            }
            Drill::EnvoyDrained => {
                "Envoy drained then SIGTERMed: SSE streams in flight end with every event, new connections are refused, every part exits 0"
            }
        }
    }

    pub fn parse(name: &str) -> Option<Drill> {
        Drill::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// What one drill saw.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub name: &'static str,
    pub expectation: &'static str,
    /// When it started, on the traffic's clock.
    pub started_s: f64,
    pub seconds: f64,
    /// Answers to the session clients in its window, by status (and JSON-RPC code).
    pub answers: BTreeMap<String, u64>,
    /// From the part serving again to the last answer that was not the healthy one.
    pub recovery_s: Option<f64>,
    pub sessions_lost: u64,
    pub sessions_moved: u64,
    /// Figures particular to this drill.
    pub figures: BTreeMap<String, serde_json::Value>,
    /// Expectations that did not hold (empty: the drill passed).
    pub failures: Vec<String>,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What a drill needs.
pub struct Context<'a> {
    pub stack: &'a mut Stack,
    pub traffic: &'a Traffic,
    /// How long the IdP stays down in [`Drill::IdpOutage`].
    pub idp_outage: Duration,
    /// The gateway config's unknown-kid refetch interval.
    pub unknown_kid_interval: Duration,
}

/// Time after a drill's fault is healed before its window closes.
const SETTLE: Duration = Duration::from_secs(8);
/// How long a killed sidecar stays down.
const DOWN: Duration = Duration::from_secs(3);
/// Longest a gateway may take to serve as before once a part serves again.
const RECOVERY: Duration = Duration::from_secs(2);

/// Runs `drill` and judges it.
pub async fn run(drill: Drill, cx: &mut Context<'_>) -> anyhow::Result<DrillReport> {
    let started = cx.traffic.now();
    let mut report = DrillReport {
        name: drill.name(),
        expectation: drill.expectation(),
        started_s: started.as_secs_f64(),
        seconds: 0.0,
        answers: BTreeMap::new(),
        recovery_s: None,
        sessions_lost: 0,
        sessions_moved: 0,
        figures: BTreeMap::new(),
        failures: Vec::new(),
    };
    match drill {
        Drill::ExtAuthzKilled | Drill::ExtProcKilled => {
            sidecar_killed(drill, cx, &mut report).await?
        }
        Drill::IdpOutage => idp_outage(cx, &mut report).await?,
        Drill::BackendKilled => backend_killed(cx, &mut report).await?,
        Drill::BackendsChanged => backends_changed(cx, &mut report).await?,
        Drill::KeysAndRules => keys_and_rules(cx, &mut report).await?,
        Drill::EnvoyDrained => envoy_drained(cx, &mut report).await?,
    }
    let ended = cx.traffic.now();
    report.seconds = (ended - started).as_secs_f64();
    let window = window(cx.traffic, started, ended).await;
    report.answers = window.answers();
    report.sessions_lost = window.count(Verdict::SessionLost);
    report.sessions_moved = window.count(Verdict::Moved);
    if report.sessions_moved > 0 {
        report
            .failures
            .push(format!("{} sessions moved", report.sessions_moved));
    }
    let skipped = window.count(Verdict::RulesSkipped);
    if skipped > 0 {
        report
            .failures
            .push(format!("{skipped} calls the rules deny got a result"));
    }
    Ok(report)
}

/// ext-authz or ext-proc SIGKILLed for [`DOWN`], then started again.
async fn sidecar_killed(
    drill: Drill,
    cx: &mut Context<'_>,
    report: &mut DrillReport,
) -> anyhow::Result<()> {
    let fault = cx.traffic.now();
    if drill == Drill::ExtAuthzKilled {
        cx.stack.kill_ext_authz()?;
    } else {
        cx.stack.kill_ext_proc()?;
    }
    tokio::time::sleep(DOWN).await;
    if drill == Drill::ExtAuthzKilled {
        cx.stack.restart_ext_authz().await?;
    } else {
        cx.stack.restart_ext_proc().await?;
    }
    let healed = cx.traffic.now();
    tokio::time::sleep(SETTLE).await;
    let window = window(cx.traffic, fault, cx.traffic.now()).await;
    judge_outage(&window, fault, healed, report);
    report
        .figures
        .insert("down_s".to_owned(), json!((healed - fault).as_secs_f64()));
    Ok(())
}

/// What every outage of one part must look like: nothing but 503 while it was
/// down (a call in flight at the crash may be reset instead), none after it
/// served again plus [`RECOVERY`], no session lost, and at least one 503 (else
/// the fault never met the traffic and proves nothing).
fn judge_outage(window: &Window, fault: Duration, healed: Duration, report: &mut DrillReport) {
    // A call in flight through the part when it crashed may have had its answer
    // under way already: Envoy can only reset it. Counted, not failed.
    let (cut, bad): (Vec<&Outcome>, Vec<&Outcome>) = window
        .unexpected()
        .partition(|o| o.status == 0 && o.sent < fault);
    report
        .figures
        .insert("cut_in_flight".to_owned(), json!(cut.len()));
    let not_503: BTreeSet<String> = bad
        .iter()
        .filter(|o| o.status != 503)
        .map(|o| format!("{:?} {}", o.kind, o.label()))
        .collect();
    if !not_503.is_empty() {
        report
            .failures
            .push(format!("answers other than 503: {not_503:?}"));
    }
    let last_bad = bad.iter().map(|o| o.answered()).max();
    let recovery = last_bad.map_or(Duration::ZERO, |last| last.saturating_sub(healed));
    report.recovery_s = Some(recovery.as_secs_f64());
    if recovery > RECOVERY {
        report.failures.push(format!(
            "not recovered {:.1} s after serving again (limit {} s)",
            recovery.as_secs_f64(),
            RECOVERY.as_secs()
        ));
    }
    let lost = window.count(Verdict::SessionLost);
    if lost > 0 {
        report.failures.push(format!("{lost} sessions lost"));
    }
    if !bad.iter().any(|o| o.status == 503) {
        report
            .failures
            .push("no call met the fault (no 503): the drill proves nothing".to_owned());
    }
}

/// The IdP down for `idp_outage`; a key added meanwhile, published when it returns.
async fn idp_outage(cx: &mut Context<'_>, report: &mut DrillReport) -> anyhow::Result<()> {
    let keys = cx.stack.issuer_keys();
    let known = keys.signer(None)?;
    let http = soak_client()?;
    let url = cx.stack.url();
    let issuer = cx.stack.issuer_url();
    let claims = |subject: &str| DevClaims::new(&issuer, &url, subject, "mcp:tools");
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut count = |what: &str, status: u16| {
        *statuses.entry(format!("{what} {status}")).or_default() += 1;
    };

    let fault = cx.traffic.now();
    cx.stack.stop_issuer()?;
    let new_kid = cx.stack.issuer_keys().add_key()?;
    let new = cx.stack.issuer_keys().signer(Some(&new_kid))?;
    let deadline = tokio::time::Instant::now() + cx.idp_outage;
    let mut probe = 0u64;
    while tokio::time::Instant::now() < deadline {
        probe += 1;
        // A token never seen, signed with a key the gateway fetched before.
        let token = known.sign(&claims(&format!("soak-idp-known-{probe}")))?;
        let status = initialize_status(&http, &url, &token).await;
        count("known key:", status);
        if status != 200 {
            report.failures.push(format!(
                "a token signed with a cached key got {status} during the outage"
            ));
        }
        let token = new.sign(&claims(&format!("soak-idp-new-{probe}")))?;
        let status = initialize_status(&http, &url, &token).await;
        count("new kid:", status);
        if status != 401 {
            report.failures.push(format!(
                "a token with a kid the gateway cannot know got {status} during the outage (expected 401)"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    cx.stack.start_issuer().await?;
    let healed = cx.traffic.now();
    let limit = cx.unknown_kid_interval + Duration::from_secs(5);
    let mut recovered = None;
    while cx.traffic.now() < healed + limit {
        probe += 1;
        let token = new.sign(&claims(&format!("soak-idp-new-{probe}")))?;
        let status = initialize_status(&http, &url, &token).await;
        count("new kid after:", status);
        if status == 200 {
            recovered = Some(cx.traffic.now() - healed);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    match recovered {
        Some(after) => report.recovery_s = Some(after.as_secs_f64()),
        None => report.failures.push(format!(
            "a token with the new kid still refused {} s after the IdP returned",
            limit.as_secs()
        )),
    }
    let window = window(cx.traffic, fault, cx.traffic.now()).await;
    let bad: BTreeSet<String> = window.unexpected().map(|o| o.label()).collect();
    if !bad.is_empty() {
        report.failures.push(format!(
            "the session clients (their token verified before) saw {bad:?}"
        ));
    }
    report
        .figures
        .insert("outage_s".to_owned(), json!((healed - fault).as_secs_f64()));
    report.figures.insert("probes".to_owned(), json!(statuses));
    Ok(())
}

/// The status of an `initialize` with `token` (0 if no answer came).
async fn initialize_status(http: &reqwest::Client, url: &str, token: &str) -> u16 {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": mcp::PROTOCOL_VERSION, "capabilities": {},
                   "clientInfo": {"name": "soak-probe", "version": "0"}}});
    match mcp::post(http, url, token, None, &init).await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// The backend holding the most sessions right now, and which clients are on it.
fn busiest_backend(traffic: &Traffic) -> Option<(u8, BTreeSet<u32>)> {
    let now = traffic.now();
    let recent = traffic.outcomes(now.saturating_sub(Duration::from_secs(5)), now);
    let mut latest: BTreeMap<u32, u8> = BTreeMap::new();
    for outcome in recent {
        if let Some(backend) = outcome.backend
            && outcome.client & THROWAWAY == 0
        {
            latest.insert(outcome.client, backend);
        }
    }
    let mut per_backend: BTreeMap<u8, BTreeSet<u32>> = BTreeMap::new();
    for (client, backend) in latest {
        per_backend.entry(backend).or_default().insert(client);
    }
    per_backend
        .into_iter()
        .max_by_key(|(_, clients)| clients.len())
}

/// A backend SIGKILLed: its clients lose their sessions and start new ones elsewhere.
async fn backend_killed(cx: &mut Context<'_>, report: &mut DrillReport) -> anyhow::Result<()> {
    let Some((backend, victims)) = busiest_backend(cx.traffic) else {
        anyhow::bail!("no session has a known backend: is the traffic running?");
    };
    let fault = cx.traffic.now();
    cx.stack.kill_backend(usize::from(backend)).await?;
    let removed = cx.traffic.now();
    tokio::time::sleep(SETTLE).await;
    let window = window(cx.traffic, fault, cx.traffic.now()).await;
    judge_departure(&window, backend, &victims, fault, removed, report);
    report.figures.insert(
        "health_check_removed_s".to_owned(),
        json!((removed - fault).as_secs_f64()),
    );
    Ok(())
}

/// What losing `backend` must look like: calls in its sessions (and only
/// those) fail: 404 (the session is gone), 503 until Envoy dropped the backend
/// (`removed`), or no answer for calls in flight when it `stopped`; every client that
/// lost a session works again on another backend; everyone else sees nothing.
/// `victims` are the clients whose session was on it when it began to leave:
/// each must lose it (a client may also have opened one there since, while the
/// backend was still in the pool, and lose that).
fn judge_departure(
    window: &Window,
    backend: u8,
    victims: &BTreeSet<u32>,
    stopped: Duration,
    removed: Duration,
    report: &mut DrillReport,
) {
    let mut losers: BTreeSet<u32> = BTreeSet::new();
    let mut others_saw: BTreeSet<String> = BTreeSet::new();
    let mut its_sessions_saw: BTreeSet<String> = BTreeSet::new();
    for outcome in window.unexpected() {
        let describe = || {
            format!(
                "{:?} {} {:?}",
                outcome.kind,
                outcome.label(),
                outcome.verdict
            )
        };
        // A new session's `initialize` in flight on the backend when it stopped
        // is cut like that session's calls (which backend had it is unknown):
        // reset, or 503 from Envoy (the connection ended under it: not retried,
        // the backend may have acted on it).
        let cut_opening = outcome.kind == Kind::Initialize
            && matches!(outcome.status, 0 | 503)
            && outcome.sent < stopped
            && outcome.answered() <= stopped + Duration::from_secs(1);
        if outcome.backend != Some(backend) && !cut_opening {
            others_saw.insert(describe());
            continue;
        }
        match outcome.verdict {
            Verdict::SessionLost => {
                losers.insert(outcome.client);
            }
            // Cut in flight when it went.
            Verdict::Failed if outcome.status == 0 && outcome.answered() <= stopped + RECOVERY => {}
            Verdict::Failed
                if outcome.status == 503 && outcome.answered() <= removed + RECOVERY => {}
            _ => {
                its_sessions_saw.insert(describe());
            }
        }
    }
    if !others_saw.is_empty() {
        report.failures.push(format!(
            "calls in sessions of other backends (or opening one) got {others_saw:?}"
        ));
    }
    if !its_sessions_saw.is_empty() {
        report.failures.push(format!(
            "calls in sessions of the backend that left got {its_sessions_saw:?}"
        ));
    }
    for victim in victims {
        if !losers.contains(victim) {
            report.failures.push(format!(
                "client {victim} never learned that its session was gone"
            ));
        }
    }
    for client in &losers {
        let back = window.judged().any(|o| {
            o.client == *client
                && o.kind == Kind::Call
                && o.verdict == Verdict::Expected
                && o.backend.is_some_and(|b| b != backend)
        });
        if !back {
            report.failures.push(format!(
                "client {client} did not work again on another backend"
            ));
        }
    }
    report
        .figures
        .insert("sessions_on_backend".to_owned(), json!(victims.len()));
    report
        .figures
        .insert("clients_that_lost_one".to_owned(), json!(losers.len()));
    if losers.is_empty() {
        report
            .failures
            .push("no session was lost: the drill proves nothing".to_owned());
    }
}

/// A backend added, then one retired gracefully.
async fn backends_changed(cx: &mut Context<'_>, report: &mut DrillReport) -> anyhow::Result<()> {
    let start = cx.traffic.now();
    let added = cx.stack.add_backend().await?;
    let joined = cx.traffic.now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Nothing but the healthy answer while the pool grew.
    let joining = window(cx.traffic, start, cx.traffic.now()).await;
    let bad: BTreeSet<String> = joining.unexpected().map(|o| o.label()).collect();
    if !bad.is_empty() {
        report
            .failures
            .push(format!("while a backend joined, clients saw {bad:?}"));
    }
    let Some((backend, victims)) = busiest_backend(cx.traffic) else {
        anyhow::bail!("no session has a known backend: is the traffic running?");
    };
    let retiring = cx.traffic.now();
    let linger = Duration::from_secs(5);
    cx.stack
        .retire_backend(usize::from(backend), linger)
        .await?;
    let removed = cx.traffic.now();
    tokio::time::sleep(SETTLE).await;
    // Out of EDS but alive, it keeps serving its sessions: every call answered
    // before it stops is answered as before.
    let stopping = retiring + linger;
    let lingering = window(cx.traffic, retiring, stopping).await;
    let early: BTreeSet<String> = lingering
        .unexpected()
        .filter(|o| o.answered() < stopping)
        .map(|o| o.label())
        .collect();
    if !early.is_empty() {
        report.failures.push(format!(
            "while the retired backend was out of EDS but alive, clients saw {early:?}"
        ));
    }
    let window = window(cx.traffic, retiring, cx.traffic.now()).await;
    judge_departure(&window, backend, &victims, stopping, removed, report);
    report
        .figures
        .insert("linger_s".to_owned(), json!(linger.as_secs_f64()));
    report
        .figures
        .insert("added".to_owned(), json!(crate::stack::backend_name(added)));
    report.figures.insert(
        "retired".to_owned(),
        json!(crate::stack::backend_name(usize::from(backend))),
    );
    report
        .figures
        .insert("join_s".to_owned(), json!((joined - start).as_secs_f64()));
    Ok(())
}

/// A session key added (rolling restarts), then the rules rewritten in place.
async fn keys_and_rules(cx: &mut Context<'_>, report: &mut DrillReport) -> anyhow::Result<()> {
    // Keys: the new one first, the old one still listed; each sidecar restarted
    // gracefully in turn, as a rolling deploy does: ext-authz (which opens
    // sessions) first, so that it knows the new key before ext-proc seals with it.
    let fault = cx.traffic.now();
    let old = cx.stack.session_keys()?;
    cx.stack
        .set_session_keys(&format!("{}{old}", random_session_key(ROTATED)?))?;
    cx.stack.restart_ext_authz_gracefully().await?;
    cx.stack.restart_ext_proc().await?;
    let healed = cx.traffic.now();
    let http = soak_client()?;
    let token = cx.stack.token("soak-rotation", "mcp:tools").await?;
    let fresh = RawSession::initialize(&http, &cx.stack.url(), &token).await?;
    match sealing_key(&fresh.session_id) {
        Some(key) if key == ROTATED => {}
        other => report.failures.push(format!(
            "a session opened after the rotation is sealed with key {other:?}, not {ROTATED}"
        )),
    }
    fresh.call_tool("whoami", json!({})).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = window(cx.traffic, fault, cx.traffic.now()).await;
    let bad: Vec<&Outcome> = window.unexpected().collect();
    let not_503: BTreeSet<String> = bad
        .iter()
        .filter(|o| o.status != 503)
        .map(|o| o.label())
        .collect();
    if !not_503.is_empty() {
        report.failures.push(format!(
            "during the rolling restarts, answers other than 503: {not_503:?}"
        ));
    }
    if let Some(late) = bad.iter().find(|o| o.answered() > healed + RECOVERY) {
        report
            .failures
            .push(format!("not recovered after the restarts: {late:?}"));
    }
    // Each sidecar stops once its calls in flight are done, not at the end of
    // its grace period (10 s, every call refused meanwhile): both restarts
    // together take a few seconds at most.
    if healed - fault > Duration::from_secs(5) {
        report.failures.push(format!(
            "the two rolling restarts took {:.1} s",
            (healed - fault).as_secs_f64()
        ));
    }
    report.figures.insert(
        "restarts_503".to_owned(),
        json!(bad.iter().filter(|o| o.status == 503).count()),
    );
    report.figures.insert(
        "restarts_s".to_owned(),
        json!((healed - fault).as_secs_f64()),
    );

    rules_rewritten(cx, report).await
}

/// The id of the key added by the rotation.
const ROTATED: &str = "soak-rotated";

/// The id of the key a session id was sealed with (from its third byte; see
/// `gateway_core::session`): readable, not secret.
fn sealing_key(session_id: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(session_id)
        .ok()?;
    let len = usize::from(*bytes.get(1)?);
    String::from_utf8(bytes.get(2..2 + len)?.to_vec()).ok()
}

/// The rules file rewritten in place, as an editor or `cat >` does: the text up
/// to its last rule first, the rest a moment later. Both versions end with a rule
/// that denies `whoami` to the subject `soak-probe`; without it the demo rules
/// allow that call. A probe calls `whoami` as `soak-probe` every 100 ms: if the
/// first half of a write were ever loaded, it would pass.
async fn rules_rewritten(cx: &mut Context<'_>, report: &mut DrillReport) -> anyhow::Result<()> {
    const REWRITES: usize = 8;
    let path = cx.stack.rules_path();
    let original = std::fs::read_to_string(&path)?;
    let deny_probe = "  - name: soak-deny-probe\n    effect: deny\n    methods: [tools/call]\n    tools: [whoami]\n    when: auth.subject == \"soak-probe\"\n";
    let version = |n: usize| format!("{original}\n  # rewrite {n} of the soak's rules drill\n");
    // Atomically first, as the README says to: the probe is denied from then on.
    let temp = path.with_extension("soak-new");
    std::fs::write(&temp, format!("{}{deny_probe}", version(0)))?;
    std::fs::rename(&temp, &path)?;
    let token = cx.stack.token("soak-probe", "mcp:tools").await?;
    let http = soak_client()?;
    let session = RawSession::initialize(&http, &cx.stack.url(), &token).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if probe_denied(&session).await? == Some(true) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the rules that deny the probe were not loaded within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reloads_before = cx.stack.ext_authz_log().matches("rules reloaded").count();

    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let prober = tokio::spawn(async move {
        let mut passed = 0u64;
        let mut denied = 0u64;
        let mut other = 0u64;
        loop {
            match probe_denied(&session).await {
                Ok(Some(true)) => denied += 1,
                Ok(Some(false)) => passed += 1,
                _ => other += 1,
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stopped.changed() => return (denied, passed, other),
            }
        }
    });
    for n in 1..=REWRITES {
        let text = version(n);
        std::fs::write(&path, &text)?;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut file = std::fs::OpenOptions::new().append(true).open(&path)?;
        std::io::Write::write_all(&mut file, deny_probe.as_bytes())?;
        drop(file);
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let _ = stop.send(true);
    let (denied, passed, other) = prober.await?;
    let reloads = cx
        .stack
        .ext_authz_log()
        .matches("rules reloaded")
        .count()
        .saturating_sub(reloads_before);
    if passed > 0 {
        report.failures.push(format!(
            "the probe passed {passed} times: a half-written rules file was loaded"
        ));
    }
    if other > 0 {
        report
            .failures
            .push(format!("{other} probe calls got no JSON-RPC answer"));
    }
    // Each rewrite is loaded within about 2 s of its last write; on a busy
    // machine one may still be settling when the next begins, and is skipped.
    if reloads < REWRITES / 2 {
        report.failures.push(format!(
            "ext-authz reloaded the rules {reloads} times for {REWRITES} rewrites"
        ));
    }
    report
        .figures
        .insert("rules_reloads".to_owned(), json!(reloads));
    report
        .figures
        .insert("probe_denied".to_owned(), json!(denied));
    // The rules as they were.
    std::fs::write(&temp, original)?;
    std::fs::rename(&temp, &path)?;
    Ok(())
}

/// `Some(true)` when the probe's `whoami` was denied (-32001), `Some(false)`
/// when it got a result, `None` for anything else.
async fn probe_denied(session: &RawSession) -> anyhow::Result<Option<bool>> {
    let id = session.next_id();
    let response = session
        .post(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                      "params": {"name": "whoami", "arguments": {}}}))
        .await?;
    if response.status() != 200 {
        return Ok(None);
    }
    let text = response.text().await?;
    let reply = mcp::messages(&text)?
        .into_iter()
        .find(|m| m.get("id") == Some(&json!(id)));
    Ok(match reply {
        Some(m) if m.get("result").is_some() => Some(false),
        Some(m) if m["error"]["code"] == -32001 => Some(true),
        _ => None,
    })
}

/// Envoy drained with SSE streams in flight, then every part stopped.
async fn envoy_drained(cx: &mut Context<'_>, report: &mut DrillReport) -> anyhow::Result<()> {
    const STREAMS: usize = 4;
    const EVENTS: u64 = 10;
    let token = cx.stack.token("soak-drain", "mcp:tools").await?;
    let http = soak_client()?;
    let mut streams = Vec::new();
    let (started, mut streaming) = tokio::sync::mpsc::channel(STREAMS);
    for _ in 0..STREAMS {
        let session = RawSession::initialize(&http, &cx.stack.url(), &token).await?;
        let started = started.clone();
        streams.push(tokio::spawn(async move {
            let id = session.next_id();
            let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": "ticks", "arguments": {"count": EVENTS, "interval_ms": 300},
                           "_meta": {"progressToken": id}}});
            let response = session.post(&call).await?;
            let status = response.status();
            let _ = started.send(()).await;
            let text = response.text().await?;
            let messages = mcp::messages(&text)?;
            let progress = messages
                .iter()
                .filter(|m| m["method"] == "notifications/progress")
                .count() as u64;
            let result = messages
                .iter()
                .any(|m| m.get("id") == Some(&json!(id)) && m.get("result").is_some());
            anyhow::Ok((status.as_u16(), progress, result))
        }));
    }
    // The streams are under way (headers and a first event sent) when the
    // drain starts; the other clients, as a load balancer would have them,
    // send nothing new (their calls in flight finish).
    drop(started);
    for _ in 0..STREAMS {
        tokio::time::timeout(Duration::from_secs(10), streaming.recv())
            .await
            .context("the SSE streams did not start within 10 s")?;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    cx.traffic.pause();
    let shutdown = cx.stack.shut_down(Duration::from_secs(20)).await?;
    let mut complete = 0;
    for stream in streams {
        match stream.await? {
            Ok((200, progress, true)) if progress == EVENTS => complete += 1,
            Ok(other) => report.failures.push(format!(
                "an SSE stream in flight ended as (status, progress events, result) {other:?}"
            )),
            Err(err) => report
                .failures
                .push(format!("an SSE stream in flight broke: {err:#}")),
        }
    }
    match shutdown.refused_after {
        Some(after) => {
            report
                .figures
                .insert("refused_after_s".to_owned(), json!(after.as_secs_f64()));
        }
        None => report
            .failures
            .push("new connections were still accepted 2 s into the drain".to_owned()),
    }
    if shutdown.in_flight_at_drain < STREAMS as u64 {
        report.failures.push(format!(
            "only {} requests in flight when the drain began: the streams had ended",
            shutdown.in_flight_at_drain
        ));
    }
    if shutdown.active_at_sigterm > 0 {
        report.failures.push(format!(
            "{} requests still in flight at SIGTERM",
            shutdown.active_at_sigterm
        ));
    }
    for (name, status, took) in &shutdown.exits {
        if !status.success() {
            report
                .failures
                .push(format!("{name} exited with {status} after {took:?}"));
        }
    }
    report
        .figures
        .insert("streams_complete".to_owned(), json!(complete));
    report.figures.insert(
        "in_flight_at_drain".to_owned(),
        json!(shutdown.in_flight_at_drain),
    );
    report.figures.insert(
        "drained_in_s".to_owned(),
        json!(shutdown.drained_in.as_secs_f64()),
    );
    report.figures.insert(
        "exits".to_owned(),
        json!(shutdown
            .exits
            .iter()
            .map(|(name, status, took)| json!({"process": name, "status": status.code(), "seconds": took.as_secs_f64()}))
            .collect::<Vec<_>>()),
    );
    Ok(())
}

/// The outcomes a fault at `from` could touch, up to `to`, once all are in.
async fn window(traffic: &Traffic, from: Duration, to: Duration) -> Window {
    Window::new(traffic.settled_outcomes(from, to).await)
}

/// The session clients' outcomes in a drill's window (SDK runs are judged in
/// the steady phase, not here: a run that spans a fault fails as a whole).
struct Window {
    outcomes: Vec<Outcome>,
}

impl Window {
    fn new(mut outcomes: Vec<Outcome>) -> Self {
        outcomes.retain(|o| o.kind != Kind::Sdk);
        Self { outcomes }
    }

    fn judged(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter()
    }

    /// Every answer but the healthy one (a lost session included).
    fn unexpected(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes
            .iter()
            .filter(|o| o.verdict != Verdict::Expected)
    }

    fn count(&self, verdict: Verdict) -> u64 {
        self.outcomes
            .iter()
            .filter(|o| o.verdict == verdict)
            .count() as u64
    }

    fn answers(&self) -> BTreeMap<String, u64> {
        let mut answers = BTreeMap::new();
        for outcome in &self.outcomes {
            *answers.entry(outcome.label()).or_default() += 1;
        }
        answers
    }
}
