//! A stand-in OTLP/HTTP collector that keeps every trace export it is sent, for
//! tests asking what spans the sidecars emit.

use std::sync::{Arc, Mutex};

use anyhow::Context;

/// An OTLP/HTTP collector on a free loopback port; stopped when dropped.
pub struct OtlpCollector {
    url: String,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl OtlpCollector {
    /// Starts the collector; it answers every `POST /v1/traces` with an empty
    /// protobuf success.
    pub async fn start() -> anyhow::Result<Self> {
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    if let Ok(mut bodies) = sink.lock() {
                        bodies.push(body.to_vec());
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the OTLP collector")?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            url,
            received,
            server,
        })
    }

    /// Where exporters send spans (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every export body received so far, in order.
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .map(|bodies| bodies.clone())
            .unwrap_or_default()
    }
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        self.server.abort();
    }
}
