//! `cargo xtask token`: a bearer token from the dev OpenID provider.
//!
//! Signs with the provider's key files, so it works whether or not the stack is
//! up; the running provider publishes the same keys.

use e2e::dev_idp::{DevClaims, IdpKeys};
use e2e::paths;
use e2e::stack::Ports;

#[derive(Debug, clap::Args)]
pub struct Token {
    /// Subject (`sub`).
    #[arg(long, default_value = "dev-user")]
    pub sub: String,
    /// Space-separated scopes (`scope`).
    #[arg(long, default_value = "mcp:tools")]
    pub scope: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: i64,
}

impl Token {
    pub fn run(&self) -> anyhow::Result<()> {
        let ports = Ports::dev();
        let mut claims = DevClaims::new(
            &format!("https://localhost:{}", ports.issuer),
            &format!("https://localhost:{}/mcp", ports.listener),
            &self.sub,
            &self.scope,
        );
        claims.ttl = self.ttl;
        let keys = IdpKeys::new(paths::dev_stack_dir().join("issuer-keys"));
        // The token is this command's output, for `$(cargo xtask token)`.
        println!("{}", keys.sign(&claims)?);
        Ok(())
    }
}
