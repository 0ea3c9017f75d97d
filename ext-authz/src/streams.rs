//! How many MCP streams each caller holds open at once, counted in ext-authz.
//!
//! A GET event stream or a long tool call holds an upstream connection for as
//! long as it lasts; without a cap one caller could hold every connection the
//! backend pool allows (its circuit breaker) and lock everyone else out.
//!
//! ext-authz sees every request begin (its Check) but not end: a plain call
//! opens no other sidecar stream. Envoy tells it through its gRPC access log
//! ([`AccessLogSink`]): each request ext-authz allowed carries a ticket in its
//! dynamic metadata, the log entry at its end closes the ticket, and long
//! streams are logged periodically, which renews theirs. Envoy batches entries
//! (one gRPC message per few requests), so a closed stream is released a few
//! milliseconds late; and an entry lost with a broken log stream is forgotten
//! once its lease runs out, so no caller is locked out for good.
//!
//! The count is per ext-authz process: with N replicas behind one Envoy, a
//! caller may hold up to N times the cap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::data::accesslog::v3::AccessLogType;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use gateway_core::handoff::{NAMESPACE, key};
use gateway_core::session::SubjectDigest;

/// How long a caller at its cap waits for Envoy's next batch of ends before it
/// is refused: twice the bootstrap's `buffer_flush_interval`.
pub const GRACE: Duration = Duration::from_millis(100);

/// How long a stream counts without news of it. Envoy logs open streams every
/// 30 s (the bootstrap's `access_log_flush_interval`): three missed entries.
pub const LEASE: Duration = Duration::from_secs(95);

/// Open streams per caller, capped.
#[derive(Debug)]
pub struct CallerStreams {
    limit: u32,
    lease: Duration,
    next_ticket: AtomicU64,
    state: Mutex<State>,
    /// Woken whenever Envoy's log reports streams ended.
    closed: tokio::sync::Notify,
    /// Whether Envoy's access log has reported anything since start.
    heard: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    open: HashMap<SubjectDigest, u32>,
    tickets: HashMap<u64, Ticket>,
}

#[derive(Debug)]
struct Ticket {
    caller: SubjectDigest,
    renewed: Instant,
}

impl CallerStreams {
    /// At most `limit` open streams per caller, each counted until Envoy logs
    /// its end or `lease` passes without news of it.
    pub fn new(limit: u32, lease: Duration) -> Arc<Self> {
        // Tickets from before a restart must not close new ones: start anywhere.
        let mut seed = [0u8; 8];
        let start = match openssl::rand::rand_bytes(&mut seed) {
            Ok(()) => u64::from_le_bytes(seed),
            Err(_) => 0,
        };
        Arc::new(Self {
            limit,
            lease,
            next_ticket: AtomicU64::new(start),
            state: Mutex::new(State::default()),
            closed: tokio::sync::Notify::new(),
            heard: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Counts one more stream for `caller`: its ticket, or `None` if the caller
    /// is still at its cap after `grace`. Envoy reports ends in batches (up to
    /// 50 ms late), so a caller that seems to be at its cap may have ended a
    /// stream already: it waits for the next batch before being refused.
    pub async fn open(&self, caller: SubjectDigest, grace: Duration) -> Option<u64> {
        if let Some(ticket) = self.try_open(caller) {
            return Some(ticket);
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            // Registered before looking, so an end reported in between wakes it.
            closed.as_mut().enable();
            if let Some(ticket) = self.try_open(caller) {
                return Some(ticket);
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return self.try_open(caller);
            }
        }
    }

    /// Counts one more stream for `caller`: its ticket, or `None` at the cap.
    pub fn try_open(&self, caller: SubjectDigest) -> Option<u64> {
        let mut state = self.lock();
        let open = state.open.entry(caller).or_insert(0);
        if *open >= self.limit {
            return None;
        }
        *open += 1;
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        state.tickets.insert(
            ticket,
            Ticket {
                caller,
                renewed: Instant::now(),
            },
        );
        Some(ticket)
    }

    /// The stream with `ticket` is still open.
    pub fn renew(&self, ticket: u64) {
        if let Some(t) = self.lock().tickets.get_mut(&ticket) {
            t.renewed = Instant::now();
        }
    }

    /// The stream with `ticket` ended (unknown tickets are ignored).
    pub fn close(&self, ticket: u64) {
        let mut state = self.lock();
        if let Some(t) = state.tickets.remove(&ticket) {
            release(&mut state.open, &t.caller);
        }
    }

    /// The stream with `ticket` ended, seen in process (Envoy's in-process
    /// filter): closes it and wakes callers waiting for a slot.
    pub fn ended(&self, ticket: u64) {
        self.close(ticket);
        self.closed_some();
    }

    /// Wakes callers waiting for a slot (after a batch of ends).
    fn closed_some(&self) {
        self.heard.store(true, Ordering::Relaxed);
        self.closed.notify_waiters();
    }

    /// Whether Envoy's access log has reported anything since ext-authz started:
    /// without it, no stream is ever released before its lease runs out.
    pub fn heard_from_envoy(&self) -> bool {
        self.heard.load(Ordering::Relaxed)
    }

    /// Forgets streams whose lease ran out by `now`; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let mut state = self.lock();
        let lease = self.lease;
        let expired: Vec<(u64, SubjectDigest)> = state
            .tickets
            .iter()
            .filter(|(_, t)| now.duration_since(t.renewed) > lease)
            .map(|(id, t)| (*id, t.caller))
            .collect();
        for (id, caller) in &expired {
            state.tickets.remove(id);
            release(&mut state.open, caller);
        }
        expired.len()
    }

    /// How many streams `caller` holds now.
    pub fn open_for(&self, caller: &SubjectDigest) -> u32 {
        self.lock().open.get(caller).copied().unwrap_or(0)
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked mid-way: every
        // change is one insert or remove.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn release(open: &mut HashMap<SubjectDigest, u32>, caller: &SubjectDigest) {
    if let Some(n) = open.get_mut(caller) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            open.remove(caller);
        }
    }
}

/// Envoy's gRPC access log (`envoy.service.accesslog.v3.AccessLogService`):
/// the end of each request ext-authz counted.
#[derive(Clone)]
pub struct AccessLogSink {
    streams: Arc<CallerStreams>,
}

impl AccessLogSink {
    pub fn new(streams: Arc<CallerStreams>) -> Self {
        Self { streams }
    }

    pub fn into_server(self, max_message_bytes: usize) -> AccessLogServiceServer<Self> {
        AccessLogServiceServer::new(self).max_decoding_message_size(max_message_bytes)
    }

    /// Applies one batch of entries.
    pub fn apply(&self, message: &StreamAccessLogsMessage) {
        let Some(LogEntries::HttpLogs(entries)) = &message.log_entries else {
            return;
        };
        for entry in &entries.log_entry {
            let Some(common) = &entry.common_properties else {
                continue;
            };
            let Some(ticket) = common
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get(NAMESPACE))
                .and_then(|s| s.fields.get(key::STREAM))
                .and_then(|v| match &v.kind {
                    Some(Kind::StringValue(s)) => s.parse::<u64>().ok(),
                    _ => None,
                })
            else {
                continue;
            };
            let periodic = matches!(
                AccessLogType::try_from(common.access_log_type),
                Ok(AccessLogType::DownstreamPeriodic)
            );
            if periodic {
                self.streams.renew(ticket);
            } else {
                self.streams.close(ticket);
            }
        }
        self.streams.closed_some();
    }
}

#[tonic::async_trait]
impl AccessLogService for AccessLogSink {
    async fn stream_access_logs(
        &self,
        request: tonic::Request<tonic::Streaming<StreamAccessLogsMessage>>,
    ) -> Result<tonic::Response<StreamAccessLogsResponse>, tonic::Status> {
        let mut inbound = request.into_inner();
        let draining = gateway_core::server::draining();
        tokio::pin!(draining);
        loop {
            let message = tokio::select! {
                message = inbound.message() => message,
                // Envoy opens a new stream to whoever serves next.
                () = &mut draining => break,
            };
            match message {
                Ok(Some(message)) => self.apply(&message),
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(%status, "access log stream ended by Envoy");
                    break;
                }
            }
        }
        Ok(tonic::Response::new(StreamAccessLogsResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_holds_at_most_its_cap_and_closing_frees_a_slot() {
        let streams = CallerStreams::new(2, LEASE);
        let alice = [1; 32];
        let bob = [2; 32];
        let a1 = streams.try_open(alice).expect("first");
        let _a2 = streams.try_open(alice).expect("second");
        assert_eq!(streams.try_open(alice), None, "the third is refused");
        assert!(streams.try_open(bob).is_some(), "others are not affected");
        streams.close(a1);
        streams.close(a1);
        assert_eq!(streams.open_for(&alice), 1, "a ticket closes once");
        assert!(streams.try_open(alice).is_some());
        streams.close(12345);
        assert_eq!(
            streams.open_for(&alice),
            2,
            "unknown tickets change nothing"
        );
    }

    // Paused time: a waiter the end does not wake would sit out its whole grace.
    #[tokio::test(start_paused = true)]
    async fn a_caller_at_its_cap_gets_a_slot_that_ends_while_it_waits() {
        let streams = CallerStreams::new(1, LEASE);
        let alice = [1; 32];
        let held = streams.try_open(alice).expect("first");
        let started = tokio::time::Instant::now();
        let waiting = {
            let streams = streams.clone();
            tokio::spawn(async move { streams.open(alice, Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        streams.close(held);
        streams.closed_some();
        let ticket = waiting.await.expect("task");
        assert!(ticket.is_some(), "the slot ended while it waited");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "woken by the end, not by its deadline"
        );
        assert_eq!(
            streams.open(alice, Duration::ZERO).await,
            None,
            "still one at a time"
        );
    }

    #[test]
    fn a_stream_no_one_hears_of_is_forgotten_when_its_lease_runs_out() {
        let streams = CallerStreams::new(1, Duration::from_secs(60));
        let alice = [1; 32];
        let ticket = streams.try_open(alice).expect("first");
        assert_eq!(streams.try_open(alice), None);
        assert_eq!(streams.expire(Instant::now()), 0, "within its lease");
        let later = Instant::now() + Duration::from_secs(61);
        assert_eq!(streams.expire(later), 1);
        assert_eq!(streams.open_for(&alice), 0);
        streams.close(ticket);
        assert_eq!(streams.open_for(&alice), 0, "a late end changes nothing");
        let t = streams.try_open(alice).expect("a slot again");
        streams.renew(t);
        assert_eq!(
            streams.expire(Instant::now() + Duration::from_secs(30)),
            0,
            "a renewed stream stays counted"
        );
    }
}
