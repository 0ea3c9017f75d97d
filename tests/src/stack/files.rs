//! The configs a stack writes, from the dev stack's own: the gateway config
//! and rules, the backends' EDS file, and Envoy's bootstrap.

use std::path::PathBuf;

use anyhow::{Context, bail};
use envoy_bootstrap::{Endpoint, Profile, TlsFiles};
use serde_yaml_ng::Value;

use super::{Check, INSPECTOR_ORIGIN, Stack};
use crate::paths;

impl Stack {
    /// Writes the gateway config both sidecars read: dev/gateway.yaml pointed at
    /// this stack, trimmed as the builder says, then the builder's changes.
    pub(super) fn write_gateway_config(&self) -> anyhow::Result<()> {
        let source = paths::dev_script("gateway.yaml");
        let text =
            std::fs::read_to_string(&source).with_context(|| source.display().to_string())?;
        let mut config: Value = serde_yaml_ng::from_str(&text)?;
        let listen = |port: u16| Value::from(format!("127.0.0.1:{port}"));
        config["ext_authz"]["server"]["listen"] = listen(self.ports.ext_authz);
        config["ext_proc"]["server"]["listen"] = listen(self.ports.ext_proc);
        config["ext_authz"]["server"]["metrics_listen"] = listen(self.ports.ext_authz_metrics);
        config["ext_proc"]["server"]["metrics_listen"] = listen(self.ports.ext_proc_metrics);
        config["ext_proc"]["sessions"]["keys_file"] = self
            .work
            .join("session-keys.txt")
            .display()
            .to_string()
            .into();
        config["ext_authz"]["resource"] = self.url().into();
        if self.ports.stateless_backends.is_empty() {
            // No stateless pool: stateless requests are refused with -32022.
            config["protocol"]["eras"] = serde_yaml_ng::from_str("[session]")?;
        }
        // The gateway's own origin moves with its port; the Inspector's stays.
        config["edge"]["allowed_origins"] =
            serde_yaml_ng::from_str(&format!("[{}, {INSPECTOR_ORIGIN}]", self.base_url()))?;
        let issuer = &mut config["ext_authz"]["issuers"][0];
        issuer["issuer"] = self.issuer_url().into();
        issuer["ca_file"] = paths::certs_dir()
            .join("ca.pem")
            .display()
            .to_string()
            .into();
        // The rules file is copied next to the config, so a test may rewrite it.
        match &self.settings.rules {
            Some(text) => std::fs::write(self.rules_path(), text)?,
            None => {
                let rules = paths::dev_script("rules.yaml");
                std::fs::copy(&rules, self.rules_path())
                    .with_context(|| rules.display().to_string())?;
            }
        }
        config["ext_authz"]["rules_file"] = self.rules_path().display().to_string().into();
        self.adjust_upstream_credentials(&mut config)?;
        if !self.settings.rate_limits
            && let Some(edge) = config.get_mut("edge").and_then(Value::as_mapping_mut)
        {
            edge.remove("rate_limits");
        }
        match config.as_mapping_mut() {
            Some(section) if !self.settings.tool_pins => {
                section.remove("tool_pins");
            }
            _ => {
                config["tool_pins"]["state_file"] = self
                    .work
                    .join("tool-pins.json")
                    .display()
                    .to_string()
                    .into();
            }
        }
        for change in &self.settings.config_changes {
            change(&mut config);
        }
        std::fs::write(
            self.gateway_config_path(),
            serde_yaml_ng::to_string(&config)?,
        )?;
        Ok(())
    }

    /// Points dev/gateway.yaml's upstream credentials at this stack's provider
    /// and secrets, or drops them.
    pub(super) fn adjust_upstream_credentials(&self, config: &mut Value) -> anyhow::Result<()> {
        let Some(section) = config.as_mapping_mut() else {
            bail!("dev/gateway.yaml is not a mapping");
        };
        if !self.settings.upstream_credentials {
            section.remove("upstream_credentials");
            return Ok(());
        }
        let credentials = &mut config["upstream_credentials"];
        let exchange = &mut credentials["session"]["token_exchange"];
        exchange["token_endpoint"] = format!("{}/token", self.issuer_url()).into();
        exchange["ca_file"] = paths::certs_dir()
            .join("ca.pem")
            .display()
            .to_string()
            .into();
        exchange["client_secret_file"] = self
            .idp_dir()
            .join("idp-gateway-secret")
            .display()
            .to_string()
            .into();
        // The stateless pool's key: made once per work directory, like a secret
        // an operator would provision.
        let key_file = self.work.join("stateless-api-key");
        if !key_file.exists() {
            std::fs::write(&key_file, format!("{}\n", crate::random_hex(24)?))?;
        }
        credentials["stateless"]["static"]["value_file"] = key_file.display().to_string().into();
        Ok(())
    }

    /// The stateless pool's static key (when upstream credentials are on).
    pub fn stateless_api_key(&self) -> anyhow::Result<String> {
        let path = self.work.join("stateless-api-key");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| path.display().to_string())?
            .trim()
            .to_owned())
    }

    /// Where the provider keeps its keys and secrets.
    pub(super) fn idp_dir(&self) -> PathBuf {
        let keys = self.idp_keys.dir();
        keys.parent().unwrap_or(keys).to_owned()
    }

    /// The rules file ext-authz of this stack reads (a copy of dev/rules.yaml).
    pub fn rules_path(&self) -> PathBuf {
        self.work.join("rules.yaml")
    }

    pub(super) fn gateway_config_path(&self) -> PathBuf {
        self.work.join("gateway.yaml")
    }

    pub(super) fn eds_path(&self) -> PathBuf {
        self.work.join("eds.yaml")
    }

    /// Writes the backend pool for Envoy: to a temporary file, then renamed over
    /// the watched one, so Envoy never reads half a file.
    pub(super) fn write_eds(&self) -> anyhow::Result<()> {
        let endpoints: Vec<Endpoint> = self
            .ports
            .backends
            .iter()
            .enumerate()
            .filter(|(index, _)| !self.retired.contains(index))
            .map(|(_, port)| Endpoint {
                host: "127.0.0.1".to_owned(),
                port: *port,
            })
            .collect();
        let temp = self.work.join("eds.yaml.new");
        std::fs::write(&temp, envoy_bootstrap::eds_document(&endpoints))?;
        std::fs::rename(&temp, self.eds_path())?;
        Ok(())
    }

    pub(super) fn envoy_config_path(&self) -> PathBuf {
        self.work.join("envoy.yaml")
    }

    pub(super) fn write_envoy_config(&self) -> anyhow::Result<()> {
        let loopback = |port: u16| Endpoint {
            host: "127.0.0.1".to_owned(),
            port,
        };
        let certs = paths::certs_dir();
        let profile = Profile {
            listener: loopback(self.ports.listener),
            admin: loopback(self.ports.admin),
            tls: TlsFiles {
                certificate_chain: certs.join("server.pem").display().to_string(),
                private_key: certs.join("server.key").display().to_string(),
                ecdh_curves: None,
                cipher_suites: None,
            },
            ext_authz: loopback(self.ports.ext_authz),
            ext_proc: loopback(self.ports.ext_proc),
            backends: Vec::new(),
            backends_eds: Some(self.eds_path().display().to_string()),
            stateless_backends: self
                .ports
                .stateless_backends
                .iter()
                .map(|port| loopback(*port))
                .collect(),
            gateway_config: None,
        };
        // Envoy enforces the edge of the gateway config the sidecars read.
        let gateway_config = self.gateway_config_path();
        let edge = envoy_bootstrap::edge_of_gateway_config(
            &gateway_config.display().to_string(),
            &std::fs::read_to_string(&gateway_config)?,
        )?;
        let mut rendered = envoy_bootstrap::render(&profile, &edge)?;
        if self.settings.check == Check::InEnvoy {
            rendered = envoy_bootstrap::in_process_authz(
                &rendered,
                &gateway_config.display().to_string(),
            )?;
        }
        std::fs::write(self.envoy_config_path(), rendered)?;
        Ok(())
    }
}
