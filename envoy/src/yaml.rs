//! Finding and setting things in Envoy's YAML, with errors that name the path.

use std::net::IpAddr;

use serde_yaml_ng::{Mapping, Value};

use crate::{BootstrapError, Endpoint};

/// Points a cluster at `endpoints`: STATIC for IP addresses, STRICT_DNS for names.
pub(crate) fn set_cluster(
    cluster: &mut Value,
    endpoints: &[Endpoint],
) -> Result<(), BootstrapError> {
    if endpoints.is_empty() {
        return Err(BootstrapError::Profile(
            "a cluster needs at least one endpoint".into(),
        ));
    }
    let all_ip = endpoints.iter().all(|e| e.host.parse::<IpAddr>().is_ok());
    at(cluster, &[])?
        .as_mapping_mut()
        .ok_or_else(|| missing("cluster is not a mapping"))?
        .insert(
            "type".into(),
            if all_ip { "STATIC" } else { "STRICT_DNS" }.into(),
        );
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            let mut address = Value::Mapping(Mapping::new());
            set_socket_address(&mut address, e);
            let mut endpoint = Mapping::new();
            endpoint.insert("address".into(), address);
            let mut lb = Mapping::new();
            lb.insert("endpoint".into(), Value::Mapping(endpoint));
            Value::Mapping(lb)
        })
        .collect();
    let locality = at(cluster, &["load_assignment", "endpoints"])?
        .get_mut(0)
        .ok_or_else(|| missing("cluster has no locality"))?;
    *at(locality, &["lb_endpoints"])? = Value::Sequence(lb_endpoints);
    Ok(())
}

pub(crate) fn strings(items: &[String]) -> Value {
    Value::Sequence(items.iter().map(|s| Value::from(s.as_str())).collect())
}

pub(crate) fn set_socket_address(address: &mut Value, endpoint: &Endpoint) {
    let mut socket = Mapping::new();
    socket.insert("address".into(), endpoint.host.clone().into());
    socket.insert("port_value".into(), u64::from(endpoint.port).into());
    let mut wrapper = Mapping::new();
    wrapper.insert("socket_address".into(), Value::Mapping(socket));
    *address = Value::Mapping(wrapper);
}

/// The value at `path`, which must exist in the source.
pub(crate) fn at<'a>(value: &'a mut Value, path: &[&str]) -> Result<&'a mut Value, BootstrapError> {
    let mut current = value;
    for key in path {
        current = current
            .get_mut(*key)
            .ok_or_else(|| missing(&format!("no `{}`", path.join("."))))?;
    }
    Ok(current)
}

/// The element of a sequence whose `name` is `name`.
pub(crate) fn named<'a>(seq: &'a mut Value, name: &str) -> Result<&'a mut Value, BootstrapError> {
    seq.as_sequence_mut()
        .and_then(|s| {
            s.iter_mut()
                .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        })
        .ok_or_else(|| missing(&format!("nothing named `{name}`")))
}

pub(crate) fn missing(what: &str) -> BootstrapError {
    BootstrapError::Source(what.to_owned())
}
