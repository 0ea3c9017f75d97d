//! `cargo xtask envoy-config`: writes every shipped bootstrap from the source.

use anyhow::Context;
use e2e::paths::repo_root;
use envoy_bootstrap::{Profile, SHIPPED, render_shipped};

#[derive(Debug, clap::Args)]
pub struct EnvoyConfig {}

impl EnvoyConfig {
    pub fn run(&self) -> anyhow::Result<()> {
        for shipped in SHIPPED {
            let root = repo_root();
            let profile_text = std::fs::read_to_string(root.join(shipped.profile))
                .with_context(|| shipped.profile.to_owned())?;
            let profile = Profile::parse(shipped.profile, &profile_text)?;
            let output = root.join(shipped.output);
            let edge = profile.edge(&root)?;
            let text = render_shipped(shipped, &profile, &edge)?;
            if std::fs::read_to_string(&output).ok().as_deref() == Some(text.as_str()) {
                continue;
            }
            if let Some(dir) = output.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&output, text).with_context(|| shipped.output.to_owned())?;
            eprintln!("wrote {}", shipped.output);
        }
        Ok(())
    }
}
