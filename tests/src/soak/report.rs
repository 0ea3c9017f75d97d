//! The soak's report as Markdown tables (the README's "Reliability" section).

use std::fmt::Write;

use super::Report;

pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {}", report.machine);
    let capacity = report
        .measured_capacity_per_s
        .map(|c| format!(" (70 % of {c:.0}/s measured in a 10-s burst)"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "Traffic: {} session clients at {:.0} calls/s{capacity}; steady phase {:.0} s.\n",
        report.clients, report.rate_per_s, report.steady_s
    );

    let _ = writeln!(
        out,
        "| t (s) | answers/s | p50 ms | p95 ms | p99 ms | Envoy MiB (CPU %) | ext-authz MiB (CPU %) | ext-proc MiB (CPU %) | not 200 |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for sample in &report.samples {
        let process = |name: &str| {
            let rss = sample.rss_mib.get(name).copied().unwrap_or(0.0);
            match sample.cpu_percent.get(name) {
                Some(cpu) => format!("{rss:.1} ({cpu:.0})"),
                None => format!("{rss:.1}"),
            }
        };
        let odd: Vec<String> = sample
            .answers
            .iter()
            .filter(|(label, _)| !label.ends_with(" 200") && !label.ends_with("200 -32001"))
            .map(|(label, n)| format!("{label}: {n}"))
            .collect();
        let _ = writeln!(
            out,
            "| {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |",
            sample.at_s,
            sample.answers_per_s,
            sample.p50_ms,
            sample.p95_ms,
            sample.p99_ms,
            process("envoy"),
            process("ext-authz"),
            process("ext-proc"),
            if odd.is_empty() {
                "—".to_owned()
            } else {
                odd.join(", ")
            }
        );
    }
    let growth: Vec<String> = report
        .rss_growth
        .iter()
        .map(|(name, g)| format!("{name} {:+.1} %", g * 100.0))
        .collect();
    let _ = writeln!(
        out,
        "\nResident memory, first to last sample: {}.\n",
        growth.join(", ")
    );

    if !report.memory.is_empty() {
        let _ = writeln!(out, "| memory check | expectation | figures | result |");
        let _ = writeln!(out, "|---|---|---|---|");
        for check in &report.memory {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                check.name,
                check.expectation,
                figures(&check.figures),
                verdict(&check.failures)
            );
        }
        out.push('\n');
    }

    if !report.drills.is_empty() {
        let _ = writeln!(
            out,
            "| drill | expectation | answers in its window | recovery | sessions lost / moved | figures | result |"
        );
        let _ = writeln!(out, "|---|---|---|---:|---:|---|---|");
        for drill in &report.drills {
            let answers: Vec<String> = drill
                .answers
                .iter()
                .map(|(label, n)| format!("{label}: {n}"))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} / {} | {} | {} |",
                drill.name,
                drill.expectation,
                answers.join(", "),
                drill
                    .recovery_s
                    .map(|r| format!("{r:.2} s"))
                    .unwrap_or_else(|| "—".to_owned()),
                drill.sessions_lost,
                drill.sessions_moved,
                figures(&drill.figures),
                verdict(&drill.failures)
            );
        }
    }
    if !report.failures.is_empty() {
        let _ = writeln!(out, "\nFailures:");
        for failure in &report.failures {
            let _ = writeln!(out, "- {failure}");
        }
    }
    out
}

fn figures(figures: &std::collections::BTreeMap<String, serde_json::Value>) -> String {
    figures
        .iter()
        .map(|(name, value)| match value.as_f64() {
            Some(v) if v.fract() != 0.0 => format!("{name} {v:.2}"),
            _ => format!("{name} {value}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn verdict(failures: &[String]) -> String {
    if failures.is_empty() {
        "pass".to_owned()
    } else {
        format!("**FAIL**: {}", failures.join("; "))
    }
}
