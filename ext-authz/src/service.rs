//! The gRPC adapter: `envoy.service.auth.v3.Authorization/Check` onto [`Authorizer`].

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, OkHttpResponse, check_response::HttpResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status;
use tonic::{Request, Response};

use crate::check::{Authorizer, HttpRequest, Verdict};

/// Fully qualified name of the gRPC service, as the health service reports it.
pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";

/// The Authorization gRPC service.
#[derive(Debug, Clone)]
pub struct AuthzService {
    authorizer: Arc<Authorizer>,
}

impl AuthzService {
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        Self { authorizer }
    }

    /// The tonic server for this service, accepting messages up to `max_message_bytes`.
    pub fn into_server(self, max_message_bytes: usize) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self).max_decoding_message_size(max_message_bytes)
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, tonic::Status> {
        let request = request.into_inner();
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let view = match http {
            Some(http) => HttpRequest {
                method: &http.method,
                path: &http.path,
                // `pack_as_bytes: true` fills raw_body; fall back for configs without it.
                body: if http.raw_body.is_empty() {
                    http.body.as_bytes()
                } else {
                    &http.raw_body
                },
            },
            None => HttpRequest::default(),
        };
        let verdict = self.authorizer.check(&view);
        tracing::debug!(
            method = view.method,
            path = view.path,
            rpc_method = verdict.call.rpc_method.as_deref(),
            tool = verdict.call.tool.as_deref(),
            allowed = verdict.allowed,
            "check"
        );
        Ok(Response::new(to_response(&verdict)))
    }
}

fn to_response(verdict: &Verdict) -> CheckResponse {
    let mut fields = BTreeMap::new();
    let mut put = |key: &str, value: &Option<String>| {
        if let Some(v) = value {
            fields.insert(key.to_owned(), string_value(v));
        }
    };
    put("rpc_method", &verdict.call.rpc_method);
    put("tool", &verdict.call.tool);
    let allowed = verdict.allowed;
    CheckResponse {
        status: Some(Status {
            code: if allowed {
                tonic::Code::Ok
            } else {
                tonic::Code::PermissionDenied
            } as i32,
            ..Default::default()
        }),
        http_response: allowed.then(|| HttpResponse::OkResponse(OkHttpResponse::default())),
        dynamic_metadata: Some(Struct {
            fields: fields.into_iter().collect(),
        }),
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}
