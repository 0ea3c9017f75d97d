//! The MCP gateway's own protobuf messages, generated from `proto/*.proto`.

/// `mcp_gateway.session.v1`: the payload sealed into a client-visible session id.
pub mod session {
    include!(concat!(env!("OUT_DIR"), "/mcp_gateway.session.v1.rs"));
}

#[cfg(test)]
mod tests {
    use super::session::SessionPayload;
    use prost::Message;

    #[test]
    fn payload_round_trips() {
        let payload = SessionPayload {
            backend_session_id: "abc".into(),
            upstream_host: "127.0.0.1:9001".into(),
            subject_digest: vec![7; 32],
            issued_at: 1_800_000_000,
            kind: 1,
        };
        let bytes = payload.encode_to_vec();
        assert_eq!(SessionPayload::decode(bytes.as_slice()).ok(), Some(payload));
    }
}
