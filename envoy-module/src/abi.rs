//! The part of Envoy's dynamic-module C ABI (`v0.2.0`, Envoy 1.40) this filter
//! uses, and [`Stream`], a safe handle on one HTTP stream's Envoy side.
//!
//! Envoy's own Rust SDK is not published on crates.io, so the declarations are
//! written here from the ABI header; every callback named is exported by the
//! pinned Envoy binary (Envoy loads modules with `RTLD_NOW`, so a name it does
//! not export fails the load, never a request).
#![allow(unsafe_code)]

use std::ffi::c_void;

/// The ABI version this module is written against (Envoy 1.40's).
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// Bytes Envoy owns, valid until the hook returns or the object they belong to
/// changes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl EnvoyBuffer {
    const EMPTY: Self = Self {
        ptr: std::ptr::null(),
        length: 0,
    };

    /// The bytes.
    ///
    /// # Safety
    /// `ptr` points at `length` readable bytes for the returned lifetime (Envoy
    /// guarantees that until the current hook returns).
    pub unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: the caller's guarantee.
        unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
    }
}

/// Bytes the module owns; Envoy copies them during the call.
#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }
}

/// A header, either side's: both of the ABI's header structs have this layout.
#[repr(C)]
#[derive(Clone, Copy)]
struct Header {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

impl Header {
    const EMPTY: Self = Self {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    };
}

/// `envoy_dynamic_module_type_http_header_type`.
const REQUEST_HEADER: u32 = 0;
/// `envoy_dynamic_module_type_http_body_type`.
const RECEIVED_REQUEST_BODY: u32 = 0;
const BUFFERED_REQUEST_BODY: u32 = 1;
/// `envoy_dynamic_module_type_attribute_id`: the downstream peer, `ip:port`.
const ATTRIBUTE_SOURCE_ADDRESS: u32 = 24;

unsafe extern "C" {
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: *mut c_void, kind: u32)
    -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        kind: u32,
        out: *mut Header,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        kind: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *mut Header,
        headers_len: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_get_body_size(filter: *mut c_void, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: *mut c_void,
        kind: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: *mut c_void,
        kind: u32,
        out: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_received_buffered_request_body(
        filter: *mut c_void,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
        filter: *mut c_void,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        value: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        attribute: u32,
        out: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
}

/// Envoy's side of one HTTP stream, for the duration of one hook: every
/// method calls into Envoy on the stream's worker thread.
#[derive(Clone, Copy)]
pub struct Stream(*mut c_void);

impl Stream {
    /// # Safety
    /// `ptr` is the `filter_envoy_ptr` Envoy passed to the running hook, and the
    /// handle is used only on this thread until the hook returns.
    pub unsafe fn new(ptr: *mut c_void) -> Self {
        Self(ptr)
    }

    /// Every request header as (lower-case name, value), in order; a repeated
    /// name appears once per value.
    pub fn request_headers(&self) -> Vec<(String, String)> {
        // SAFETY: a valid filter pointer during its hook (see `new`).
        let size =
            unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, REQUEST_HEADER) };
        let mut raw = vec![Header::EMPTY; size];
        // SAFETY: `raw` holds exactly the `size` entries Envoy fills.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_headers(self.0, REQUEST_HEADER, raw.as_mut_ptr())
        };
        if !ok {
            return Vec::new();
        }
        raw.iter()
            .map(|h| {
                // SAFETY: Envoy's header map outlives this hook; nothing changes it here.
                let (key, value) = unsafe {
                    (
                        EnvoyBuffer {
                            ptr: h.key_ptr,
                            length: h.key_length,
                        }
                        .bytes(),
                        EnvoyBuffer {
                            ptr: h.value_ptr,
                            length: h.value_length,
                        }
                        .bytes(),
                    )
                };
                (
                    String::from_utf8_lossy(key).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                )
            })
            .collect()
    }

    /// Sets a request header, replacing every value it had.
    pub fn set_request_header(&self, key: &str, value: &str) {
        // SAFETY: valid filter pointer; Envoy copies both buffers during the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                REQUEST_HEADER,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            );
        }
    }

    /// Removes a request header (Envoy's `set_header` with no value removes).
    pub fn remove_request_header(&self, key: &str) {
        // SAFETY: as in `set_request_header`; an empty value is the ABI's removal.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                REQUEST_HEADER,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer {
                    ptr: std::ptr::null(),
                    length: 0,
                },
            );
        }
    }

    /// The request body so far: what this filter had Envoy buffer, then the
    /// chunk of the running `on_request_body` hook.
    pub fn request_body(&self) -> Vec<u8> {
        let mut body = Vec::new();
        // SAFETY: valid filter pointer.
        let buffered_upstream =
            unsafe { envoy_dynamic_module_callback_http_received_buffered_request_body(self.0) };
        // When an earlier filter buffered the body, the received chunk is that
        // buffer: reading both would count it twice.
        let kinds: &[u32] = if buffered_upstream {
            &[RECEIVED_REQUEST_BODY]
        } else {
            &[BUFFERED_REQUEST_BODY, RECEIVED_REQUEST_BODY]
        };
        for &kind in kinds {
            // SAFETY: valid filter pointer.
            let count =
                unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, kind) };
            if count == 0 {
                continue;
            }
            let mut chunks = vec![EnvoyBuffer::EMPTY; count];
            // SAFETY: `chunks` holds exactly the `count` entries Envoy fills.
            let ok = unsafe {
                envoy_dynamic_module_callback_http_get_body_chunks(
                    self.0,
                    kind,
                    chunks.as_mut_ptr(),
                )
            };
            if ok {
                for chunk in chunks {
                    // SAFETY: the body buffer is Envoy's and unchanged during this hook.
                    body.extend_from_slice(unsafe { chunk.bytes() });
                }
            }
        }
        body
    }

    /// How many bytes the running `on_request_body` hook received.
    pub fn received_request_body_len(&self) -> usize {
        // SAFETY: valid filter pointer.
        unsafe { envoy_dynamic_module_callback_http_get_body_size(self.0, RECEIVED_REQUEST_BODY) }
    }

    /// The downstream peer's address (`ip:port`, `[v6]:port`), if Envoy knows it.
    pub fn source_address(&self) -> Option<String> {
        let mut out = EnvoyBuffer::EMPTY;
        // SAFETY: valid filter pointer; `out` is written by Envoy.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.0,
                ATTRIBUTE_SOURCE_ADDRESS,
                &mut out,
            )
        };
        // SAFETY: Envoy's stream info outlives this hook.
        ok.then(|| String::from_utf8_lossy(unsafe { out.bytes() }).into_owned())
    }

    /// Sets `key` in dynamic metadata namespace `namespace`.
    pub fn set_metadata(&self, namespace: &str, key: &str, value: &str) {
        // SAFETY: valid filter pointer; Envoy copies every buffer.
        unsafe {
            envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
                self.0,
                ModuleBuffer::of(namespace.as_bytes()),
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            );
        }
    }

    /// Has Envoy pick the route again (request headers it routes on changed).
    pub fn clear_route_cache(&self) {
        // SAFETY: valid filter pointer.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.0) }
    }

    /// Resumes a request this filter held.
    pub fn continue_decoding(&self) {
        // SAFETY: valid filter pointer.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    /// Answers the request here; `details` becomes the response code details.
    pub fn send_response(
        &self,
        status: u16,
        headers: &[(String, String)],
        body: &str,
        details: &str,
    ) {
        let mut raw: Vec<Header> = headers
            .iter()
            .map(|(k, v)| Header {
                key_ptr: k.as_ptr(),
                key_length: k.len(),
                value_ptr: v.as_ptr(),
                value_length: v.len(),
            })
            .collect();
        // SAFETY: valid filter pointer; `raw`, `body` and `details` outlive the
        // call, and Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                u32::from(status),
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(body.as_bytes()),
                ModuleBuffer::of(details.as_bytes()),
            );
        }
    }

    /// A way back onto this stream's worker thread from any thread.
    pub fn scheduler(&self) -> Scheduler {
        // SAFETY: valid filter pointer, on the worker thread during a hook.
        Scheduler(unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(self.0) })
    }
}

/// Envoy's scheduler for one stream: [`Scheduler::commit`] from any thread
/// leads to `on_http_filter_scheduled` on the stream's worker (or to nothing,
/// once the stream is gone). Deleted when dropped.
pub struct Scheduler(*mut c_void);

// SAFETY: Envoy documents `scheduler_commit` as callable from any thread, and
// the object is deleted exactly once, by its one owner.
unsafe impl Send for Scheduler {}

impl Scheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: a live scheduler (deleted only in `drop`).
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event_id) }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: allocated by Envoy for this module, deleted once.
            unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
        }
    }
}
