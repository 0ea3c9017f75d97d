//! The rate-limit service (Envoy's RLS v3 API) for limits counted across
//! replicas: Envoy's `ratelimit` filter asks it about each request ext-authz put
//! under a limit (`edge.rate_limits` with `redis_url`), and every replica's
//! ext-authz counts in the same Redis.
//!
//! Counting is Redis's own: one key per limit, caller and fixed window of the
//! limit's period, `INCR` and `EXPIRE` in one transaction, so replicas never
//! lose each other's hits. A window's count is exact; a caller can at most
//! spend two windows' worth across a window boundary, the usual price of fixed
//! windows (Envoy's own rate-limit service makes the same trade).
//!
//! Fails closed: without an answer from Redis the check is an error, and Envoy
//! (`failure_mode_deny`) refuses the request with 503.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use gateway_core::config::RateLimitsConfig;
use gateway_core::metrics::Labels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;
use tonic::{Request, Response, Status};

/// The domain Envoy's `ratelimit` filter names (the gateway's bootstrap).
pub const DOMAIN: &str = "mcp-gateway";

/// How long one Redis round trip may take before the check fails (Envoy waits
/// 0.5 s for the whole check).
const REDIS_TIMEOUT: Duration = Duration::from_millis(300);

/// The RLS gRPC service over [`SharedWindows`].
pub struct SharedRateLimits {
    windows: SharedWindows,
    /// Each limit by name.
    limits: HashMap<String, Limit>,
}

/// One limit, with its checks' counters looked up once.
struct Limit {
    requests: u64,
    period_secs: u64,
    ok: Counter,
    over: Counter,
    error: Counter,
}

impl SharedRateLimits {
    /// The service for `config`'s limits, counting in its `redis_url`; `None`
    /// when the limits are counted by each Envoy alone.
    pub fn from_config(
        config: &RateLimitsConfig,
        registry: &mut Registry,
    ) -> anyhow::Result<Option<Self>> {
        let Some(url) = &config.redis_url else {
            return Ok(None);
        };
        let client = redis::Client::open(url.as_str())
            .map_err(|e| anyhow::anyhow!("edge.rate_limits.redis_url: {e}"))?;
        let checks = Family::<Labels, Counter>::default();
        registry.register(
            "mcp_gateway_rate_limit_checks",
            "Checks of the shared rate-limit service, by limit and outcome (ok, over, error)",
            checks.clone(),
        );
        let counter = |limit: &str, outcome: &str| {
            checks
                .get_or_create(&vec![
                    ("limit", limit.to_owned()),
                    ("outcome", outcome.to_owned()),
                ])
                .clone()
        };
        let limits = config
            .limits
            .iter()
            .map(|l| {
                let limit = Limit {
                    requests: u64::from(l.requests.get()),
                    period_secs: l.period.as_secs(),
                    ok: counter(&l.name, "ok"),
                    over: counter(&l.name, "over"),
                    error: counter(&l.name, "error"),
                };
                (l.name.clone(), limit)
            })
            .collect();
        Ok(Some(Self {
            windows: SharedWindows {
                client,
                connection: OnceCell::new(),
            },
            limits,
        }))
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> RateLimitServiceServer<Self> {
        RateLimitServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl RateLimitService for SharedRateLimits {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        if request.domain != DOMAIN {
            return Err(Status::invalid_argument(format!(
                "unknown rate-limit domain {:?}",
                request.domain
            )));
        }
        let hits = u64::from(request.hits_addend.max(1));
        let mut statuses = Vec::new();
        let mut retry_after = None;
        for descriptor in &request.descriptors {
            let entry = |key: &str| {
                descriptor
                    .entries
                    .iter()
                    .find(|e| e.key == key)
                    .map(|e| e.value.as_str())
            };
            let (Some(name), Some(caller)) = (entry("limit"), entry("caller")) else {
                return Err(Status::invalid_argument(
                    "a descriptor without `limit` and `caller`",
                ));
            };
            let Some(limit) = self.limits.get(name) else {
                // A replica with other limits than this one: refuse rather
                // than let the request through uncounted.
                return Err(Status::invalid_argument(format!(
                    "unknown rate limit {name:?}"
                )));
            };
            if caller.is_empty()
                || caller.len() > 64
                || !caller.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(Status::invalid_argument("a malformed caller key"));
            }
            let window = match self
                .windows
                .hit(name, caller, hits, limit.period_secs)
                .await
            {
                Ok(window) => window,
                Err(err) => {
                    limit.error.inc();
                    tracing::warn!(limit = name, error = %err, "rate-limit store unavailable; refused");
                    return Err(Status::unavailable("the rate-limit store is unavailable"));
                }
            };
            let requests = limit.requests;
            let over = window.count > requests;
            if over { &limit.over } else { &limit.ok }.inc();
            if over {
                retry_after = retry_after.max(Some(window.resets_in));
            }
            statuses.push(DescriptorStatus {
                code: if over { Code::OverLimit } else { Code::Ok } as i32,
                limit_remaining: u32::try_from(requests.saturating_sub(window.count))
                    .unwrap_or(u32::MAX),
                duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: i64::try_from(window.resets_in).unwrap_or(i64::MAX),
                    nanos: 0,
                }),
                ..Default::default()
            });
        }
        let mut response = RateLimitResponse {
            overall_code: if retry_after.is_some() {
                Code::OverLimit
            } else {
                Code::Ok
            } as i32,
            statuses,
            ..Default::default()
        };
        if let Some(seconds) = retry_after {
            response.response_headers_to_add.push(HeaderValue {
                key: "retry-after".into(),
                value: seconds.to_string(),
                ..Default::default()
            });
        }
        Ok(Response::new(response))
    }
}

/// Fixed windows counted in Redis.
struct SharedWindows {
    client: redis::Client,
    /// Connected on first use (and reconnecting by itself after), so ext-authz
    /// starts while Redis is down and checks fail until it is back.
    connection: OnceCell<ConnectionManager>,
}

/// A caller's count in the current window of a limit.
struct Window {
    count: u64,
    /// Seconds until the window ends (at least 1).
    resets_in: u64,
}

impl SharedWindows {
    async fn hit(
        &self,
        limit: &str,
        caller: &str,
        hits: u64,
        period: u64,
    ) -> redis::RedisResult<Window> {
        let mut connection = self
            .connection
            .get_or_try_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(REDIS_TIMEOUT));
                self.client.get_connection_manager_with_config(config)
            })
            .await?
            .clone();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let period = period.max(1);
        let window = now / period;
        let key = format!("mcp-gateway:rate:{limit}:{caller}:{window}");
        let (count,): (u64,) = redis::pipe()
            .atomic()
            .incr(&key, hits)
            .expire(&key, i64::try_from(period + 1).unwrap_or(i64::MAX))
            .ignore()
            .query_async(&mut connection)
            .await?;
        Ok(Window {
            count,
            resets_in: ((window + 1) * period).saturating_sub(now).max(1),
        })
    }
}
