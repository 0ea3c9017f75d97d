//! Which OpenSSL does the sidecars' crypto (JWT signatures, session sealing).
//!
//! OpenSSL reads `OPENSSL_CONF` on its own, which is how a provider such as
//! Marvell's `dpdk_provider` (OCTEON CPT) is normally activated. The gateway config
//! can also name a provider to load at start-up, optional (fall back to software
//! with a clear log line) or required (refuse to start without it).

use serde::Deserialize;

/// The `crypto` section of the gateway config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoConfig {
    /// An OpenSSL 3 provider to load besides the default, e.g. `dpdk_provider`.
    pub provider: Option<String>,
    /// Refuse to start when `provider` cannot be loaded (default: fall back to
    /// OpenSSL's software implementations and say so).
    #[serde(default)]
    pub required: bool,
}

/// What start-up found, to log it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoSetup {
    /// OpenSSL's built-in (software) implementations.
    Software,
    /// The named provider is loaded and serves OpenSSL's operations.
    Provider(String),
    /// The named provider could not be loaded; software crypto is used.
    FellBack { provider: String, reason: String },
}

/// The configured provider could not be loaded and is required.
#[derive(Debug, thiserror::Error)]
#[error(
    "crypto.provider: OpenSSL provider `{provider}` is required but cannot be loaded: {reason}"
)]
pub struct CryptoError {
    pub provider: String,
    pub reason: String,
}

/// Loads the configured provider, once, for the life of the process.
pub fn activate(config: &CryptoConfig) -> Result<CryptoSetup, CryptoError> {
    let Some(name) = &config.provider else {
        return Ok(CryptoSetup::Software);
    };
    match openssl::provider::Provider::try_load(None, name, true) {
        Ok(provider) => {
            // Unloading would pull the implementation from under live keys.
            std::mem::forget(provider);
            Ok(CryptoSetup::Provider(name.clone()))
        }
        Err(err) if config.required => Err(CryptoError {
            provider: name.clone(),
            reason: err.to_string(),
        }),
        Err(err) => Ok(CryptoSetup::FellBack {
            provider: name.clone(),
            reason: err.to_string(),
        }),
    }
}

/// Logs OpenSSL's version, `OPENSSL_CONF`, and the outcome of [`activate`].
pub fn log_setup(setup: &CryptoSetup) {
    let version = openssl::version::version();
    let conf = std::env::var("OPENSSL_CONF").unwrap_or_else(|_| "(none)".into());
    match setup {
        CryptoSetup::Software => {
            tracing::info!(openssl = version, openssl_conf = %conf, "crypto: OpenSSL")
        }
        CryptoSetup::Provider(name) => {
            tracing::info!(openssl = version, openssl_conf = %conf, provider = %name, "crypto: OpenSSL with provider loaded")
        }
        CryptoSetup::FellBack { provider, reason } => tracing::warn!(
            openssl = version,
            openssl_conf = %conf,
            provider = %provider,
            reason = %reason,
            "crypto: the configured OpenSSL provider is unavailable; using software crypto"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_provider_is_software() {
        assert_eq!(
            activate(&CryptoConfig::default()).ok(),
            Some(CryptoSetup::Software)
        );
    }

    #[test]
    fn a_missing_provider_falls_back_or_refuses() {
        let optional = CryptoConfig {
            provider: Some("dpdk_provider_not_here".into()),
            required: false,
        };
        assert!(matches!(
            activate(&optional),
            Ok(CryptoSetup::FellBack { .. })
        ));
        let required = CryptoConfig {
            required: true,
            ..optional
        };
        let err = activate(&required).expect_err("required");
        assert!(
            err.to_string().starts_with(
                "crypto.provider: OpenSSL provider `dpdk_provider_not_here` is required"
            )
        );
    }

    #[test]
    fn the_default_provider_loads() {
        let config = CryptoConfig {
            provider: Some("default".into()),
            required: true,
        };
        assert_eq!(
            activate(&config).ok(),
            Some(CryptoSetup::Provider("default".into()))
        );
    }
}
