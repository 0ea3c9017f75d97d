//! The hooks Envoy calls, exported unmangled: each turns Envoy's pointers back
//! into the objects this module gave it and hands over to [`crate::stream`].
//!
//! Envoy 1.40 resolves all thirty HTTP-filter hooks when it loads a filter
//! config, so the ones this filter has no use for are here too, doing nothing.
//! No panic crosses into Envoy: a hook that panics answers 500 where it can
//! and leaves the request held (fail closed), never forwarded.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::abi::{ABI_VERSION, EnvoyBuffer, Stream};
use crate::host::Host;
use crate::stream::{Filter, Next};

// Envoy's status codes for the hooks' answers.
const HEADERS_CONTINUE: u32 = 0;
const HEADERS_STOP_ITERATION: u32 = 1;
const BODY_CONTINUE: u32 = 0;
const BODY_STOP_ITERATION_AND_BUFFER: u32 = 1;
const BODY_STOP_ITERATION_NO_BUFFER: u32 = 3;
const TRAILERS_CONTINUE: u32 = 0;
const TRAILERS_STOP_ITERATION: u32 = 1;

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    crate::init_logging();
    ABI_VERSION.as_ptr().cast()
}

/// # Safety
/// Envoy passes buffers valid for the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config_envoy_ptr: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: valid for the call (Envoy's contract); copied before it returns.
    let (name, config) = unsafe { (name.bytes().to_vec(), config.bytes().to_vec()) };
    let loaded = catch_unwind(|| Host::load(&config));
    match loaded {
        Ok(Ok(host)) => {
            tracing::info!(filter = %String::from_utf8_lossy(&name), "mcp_gateway filter loaded");
            Arc::into_raw(Arc::new(host)).cast()
        }
        Ok(Err(err)) => {
            // Envoy refuses the config: the gateway never runs without its check.
            tracing::error!(error = format!("{err:#}"), "bad config");
            std::ptr::null()
        }
        Err(_) => {
            tracing::error!("loading the mcp_gateway filter config panicked");
            std::ptr::null()
        }
    }
}

/// # Safety
/// `config_ptr` is what `config_new` returned, destroyed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config_ptr: *const c_void,
) {
    if !config_ptr.is_null() {
        // SAFETY: from `Arc::into_raw` in `config_new`; Envoy destroys it once.
        drop(unsafe { Arc::from_raw(config_ptr.cast::<Host>()) });
    }
}

/// # Safety
/// `config_ptr` is a live config from `config_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config_ptr: *const c_void,
    _filter_envoy_ptr: *mut c_void,
) -> *const c_void {
    let host = config_ptr.cast::<Host>();
    // SAFETY: the config outlives its filters; a new strong count for this one.
    let host = unsafe {
        Arc::increment_strong_count(host);
        Arc::from_raw(host)
    };
    Box::into_raw(Box::new(Filter::new(host))).cast()
}

/// # Safety
/// `filter_ptr` is what `filter_new` returned and is not destroyed yet.
unsafe fn filter<'a>(filter_ptr: *const c_void) -> &'a Filter {
    // SAFETY: the caller's guarantee; Envoy calls hooks only between new and destroy.
    unsafe { &*filter_ptr.cast::<Filter>() }
}

/// Runs a request hook; a panic is a 500 and the request held.
fn guarded(envoy: Stream, hook: impl FnOnce() -> Next) -> Next {
    match catch_unwind(AssertUnwindSafe(hook)) {
        Ok(next) => next,
        Err(_) => {
            tracing::error!("the mcp_gateway filter panicked; the request is refused");
            envoy.send_response(500, &[], "internal error\n", "mcp_gateway_panic");
            Next::Hold
        }
    }
}

/// # Safety
/// Envoy's pointers for a live stream, on its worker thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy_ptr: *mut c_void,
    filter_ptr: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: as the hook's contract says.
    let (envoy, filter) = unsafe { (Stream::new(filter_envoy_ptr), filter(filter_ptr)) };
    match guarded(envoy, || filter.on_request_headers(envoy, end_of_stream)) {
        Next::Continue => HEADERS_CONTINUE,
        Next::Hold | Next::Buffer => HEADERS_STOP_ITERATION,
    }
}

/// # Safety
/// Envoy's pointers for a live stream, on its worker thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter_envoy_ptr: *mut c_void,
    filter_ptr: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: as the hook's contract says.
    let (envoy, filter) = unsafe { (Stream::new(filter_envoy_ptr), filter(filter_ptr)) };
    match guarded(envoy, || filter.on_request_body(envoy, end_of_stream)) {
        Next::Continue => BODY_CONTINUE,
        Next::Buffer => BODY_STOP_ITERATION_AND_BUFFER,
        Next::Hold => BODY_STOP_ITERATION_NO_BUFFER,
    }
}

/// Trailers wait for the verdict like the body does.
///
/// # Safety
/// Envoy's pointers for a live stream, on its worker thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter_envoy_ptr: *mut c_void,
    filter_ptr: *const c_void,
) -> u32 {
    // SAFETY: as the hook's contract says.
    let (envoy, filter) = unsafe { (Stream::new(filter_envoy_ptr), filter(filter_ptr)) };
    // A request with trailers ends with them: judge what came.
    match guarded(envoy, || filter.on_request_body(envoy, true)) {
        Next::Continue => TRAILERS_CONTINUE,
        Next::Hold | Next::Buffer => TRAILERS_STOP_ITERATION,
    }
}

/// # Safety
/// Envoy's pointers for a live stream, on its worker thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter_envoy_ptr: *mut c_void,
    filter_ptr: *const c_void,
    event_id: u64,
) {
    // SAFETY: as the hook's contract says.
    let (envoy, filter) = unsafe { (Stream::new(filter_envoy_ptr), filter(filter_ptr)) };
    guarded(envoy, || {
        filter.on_scheduled(envoy, event_id);
        Next::Continue
    });
}

/// # Safety
/// Envoy's pointers for a live stream, on its worker thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy_ptr: *mut c_void,
    filter_ptr: *const c_void,
) {
    // SAFETY: as the hook's contract says.
    let filter = unsafe { filter(filter_ptr) };
    if catch_unwind(AssertUnwindSafe(|| filter.on_stream_complete())).is_err() {
        tracing::error!("releasing a caller's stream panicked");
    }
}

/// # Safety
/// `filter_ptr` is what `filter_new` returned; Envoy destroys it once, last.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter_ptr: *const c_void) {
    if !filter_ptr.is_null() {
        // SAFETY: from `Box::into_raw` in `filter_new`, destroyed once.
        drop(unsafe { Box::from_raw(filter_ptr.cast_mut().cast::<Filter>()) });
    }
}

// The response passes untouched: ext-proc and Envoy's routes handle answers.

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _: *mut c_void,
    _: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    HEADERS_CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _: *mut c_void,
    _: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    BODY_CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _: *mut c_void,
    _: *const c_void,
) -> u32 {
    TRAILERS_CONTINUE
}

// Hooks for what this filter never starts (callouts, streams of its own,
// per-route configs) or does not watch (write watermarks).

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    tracing::error!("the mcp_gateway filter takes no per-route config");
    std::ptr::null()
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_: *const c_void) {}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _: *mut c_void,
    _: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *mut c_void,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _: *mut c_void,
    _: *const c_void,
    _stream_id: u64,
    _headers: *mut c_void,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _: *mut c_void,
    _: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _: *mut c_void,
    _: *const c_void,
    _stream_id: u64,
    _trailers: *mut c_void,
    _trailers_size: usize,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _: *mut c_void,
    _: *const c_void,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _: *mut c_void,
    _: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _: *mut c_void,
    _: *const c_void,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _: *mut c_void,
    _: *const c_void,
) {
}
