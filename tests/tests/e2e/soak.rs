//! The soak in CI: half a minute of steady traffic (session clients, a prober of
//! denied calls, official SDK clients of both eras), then three drills under
//! that traffic, each judged by the soak itself (`e2e::soak::drills`), after a
//! small flood of distinct tokens against ext-authz's token cache. The long
//! version, with every drill and all memory checks, is `cargo xtask soak`.

use std::time::Duration;

use e2e::soak::{self, Drill, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_survives_ext_proc_restarting_a_backend_dying_and_keys_and_rules_changing() {
    let options = Options {
        steady: Duration::from_secs(30),
        warmup: Duration::from_secs(5),
        rate: Some(40.0),
        clients: 8,
        sample_every: Duration::from_secs(10),
        sdk_every: Duration::from_secs(8),
        drills: vec![
            Drill::ExtProcKilled,
            Drill::BackendKilled,
            Drill::KeysAndRules,
        ],
        idp_outage: Duration::ZERO,
        // Enough distinct tokens to overflow a 1 MiB token cache four times.
        token_flood: 3_000,
        abandoned_sessions: 0,
        token_cache_bytes: 1024 * 1024,
        max_rss_growth: None,
        bin_dir: e2e::paths::bin_dir(),
    };
    let report = soak::run(&options).await.expect("the soak runs");
    let tables = report.markdown();
    assert!(report.passed(), "{tables}\n{:#?}", report.oddities);

    // The traffic was what it says: every kind of call answered as expected,
    // in numbers, through the steady phase.
    for (kind, at_least) in [
        ("call 200", 500),
        ("rewritten 200", 150),
        ("stream 200", 50),
        ("denied 200 -32001", 40),
        ("sdk 200", 2),
    ] {
        let seen = report.steady_answers.get(kind).copied().unwrap_or(0);
        assert!(seen >= at_least, "{kind}: {seen} < {at_least}\n{tables}");
    }
    assert_eq!(report.samples.len(), 4, "{tables}");
    let names: Vec<&str> = report.drills.iter().map(|d| d.name).collect();
    assert_eq!(
        names,
        ["ext-proc-killed", "backend-killed", "keys-and-rules"]
    );
    // Each drill met its fault: 503s while ext-proc was down, lost sessions
    // (all on the one backend) when the backend died.
    let ext_proc = &report.drills[0];
    assert!(
        ext_proc.answers.get("503").copied().unwrap_or(0) > 0,
        "{tables}"
    );
    assert_eq!(ext_proc.sessions_lost, 0, "{tables}");
    let backend = &report.drills[1];
    let on_backend = backend.figures["sessions_on_backend"].as_u64();
    assert!(on_backend.is_some_and(|n| n > 0), "{tables}");
    assert!(
        on_backend.is_some_and(|n| backend.sessions_lost >= n),
        "{tables}"
    );
    // The rules were rewritten in place and reloaded; the probe that a half
    // written file would let through was denied throughout.
    let rules = &report.drills[2];
    assert!(
        rules.figures["rules_reloads"].as_u64() >= Some(4),
        "{tables}"
    );
    assert!(
        rules.figures["probe_denied"].as_u64() >= Some(50),
        "{tables}"
    );
    // The flood of tokens evicted from the cache, which stayed within budget.
    let flood = &report.memory[0];
    assert_eq!(flood.name, "token-flood");
    assert_eq!(flood.figures["allowed"].as_u64(), Some(3_000), "{tables}");
    let cached = flood.figures["cache_entries"].as_f64().unwrap_or(f64::MAX);
    assert!(cached > 0.0 && cached < 3_000.0, "{tables}");
}
