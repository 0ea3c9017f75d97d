//! How many MCP streams each caller holds open at once.
//!
//! A GET event stream or a long tool call holds an upstream connection for as
//! long as it lasts; without a cap one caller could hold every connection the
//! backend pool allows (its circuit breaker) and lock everyone else out. Each
//! exchange takes a [`StreamPermit`] when its request headers arrive and gives
//! it back when Envoy ends the ext_proc stream, which (see
//! [`crate::exchange::ResponsePlan::watch_end`]) lasts as long as the response.
//!
//! The count is per ext-proc process: with N replicas behind one Envoy, a caller
//! may hold up to N times the cap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use gateway_core::session::SubjectDigest;

/// Open streams per caller, capped.
#[derive(Debug)]
pub struct CallerStreams {
    limit: u32,
    open: Mutex<HashMap<SubjectDigest, u32>>,
}

/// One open stream of one caller; dropping it closes the stream's slot.
#[derive(Debug)]
pub struct StreamPermit {
    streams: Arc<CallerStreams>,
    caller: SubjectDigest,
}

impl CallerStreams {
    /// At most `limit` open streams per caller.
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more stream of `caller`, or `None` when it holds `limit`.
    pub fn try_open(self: &Arc<Self>, caller: SubjectDigest) -> Option<StreamPermit> {
        let mut open = self.lock();
        let count = open.entry(caller).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(StreamPermit {
            streams: Arc::clone(self),
            caller,
        })
    }

    /// How many streams `caller` holds open now.
    pub fn open_for(&self, caller: &SubjectDigest) -> u32 {
        self.lock().get(caller).copied().unwrap_or(0)
    }

    /// The cap per caller.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// A panic elsewhere while holding the lock leaves the counts consistent
    /// (each update is one statement), so a poisoned lock is still usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SubjectDigest, u32>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.streams.lock();
        if let Some(count) = open.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Callers come and go; the map holds only those with open streams.
                open.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_at_most_the_limit_and_a_closed_stream_frees_its_slot() {
        let streams = CallerStreams::new(2);
        let alice = [1; 32];
        let first = streams.try_open(alice).expect("first");
        let _second = streams.try_open(alice).expect("second");
        assert!(streams.try_open(alice).is_none());
        drop(first);
        assert_eq!(streams.open_for(&alice), 1);
        assert!(streams.try_open(alice).is_some());
    }

    #[test]
    fn callers_are_counted_apart_and_forgotten_when_idle() {
        let streams = CallerStreams::new(1);
        let alice = streams.try_open([1; 32]).expect("alice");
        let bob = streams.try_open([2; 32]).expect("bob is not alice");
        drop(alice);
        drop(bob);
        assert!(streams.lock().is_empty());
    }
}
