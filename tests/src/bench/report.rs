//! Medians over rounds, within-round ratios, and the markdown table.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Value, json};

use super::{CONFIGS, Options, Workload};

/// The machine a run was made on.
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub pinned: bool,
}

impl Machine {
    /// This machine, from /proc/cpuinfo.
    pub fn this(pinned: bool) -> anyhow::Result<Self> {
        let info = std::fs::read_to_string("/proc/cpuinfo")?;
        let cpu = info
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, model)| model.trim().to_owned())
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let cores = info.lines().filter(|l| l.starts_with("processor")).count();
        Ok(Self { cpu, cores, pinned })
    }

    pub fn to_json(&self) -> Value {
        json!({"cpu": self.cpu, "cores": self.cores, "pinned": self.pinned})
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {} cores", self.cpu, self.cores)?;
        if self.pinned {
            write!(
                f,
                "; Envoy (--concurrency 1) and sidecars on CPU 0, load generator and backend on CPU 1"
            )
        } else {
            write!(f, "; nothing pinned (no taskset)")
        }
    }
}

/// One measurement: a config under a workload in a round, as e2e_load reported it.
pub struct Run {
    pub round: usize,
    pub workload: &'static str,
    pub config: &'static str,
    pub report: Value,
}

impl Run {
    pub fn to_json(&self) -> Value {
        json!({"round": self.round, "workload": self.workload, "config": self.config,
               "report": self.report})
    }

    fn rps(&self) -> f64 {
        self.report["rps"].as_f64().unwrap_or(0.0)
    }

    fn micros(&self, key: &str) -> f64 {
        self.report[key].as_f64().unwrap_or(0.0)
    }

    fn cpu(&self, process: &str) -> Option<f64> {
        self.report["cpu_us_per_request"][process].as_f64()
    }

    /// The share of the window CPU `cpu` (e.g. `cpu0`) was busy.
    pub fn busy(&self, cpu: &str) -> f64 {
        self.report["cpu_busy_share"][cpu].as_f64().unwrap_or(0.0)
    }

    /// CPU used by processes not measured (another job on the machine), in
    /// cores over the window.
    pub fn other_load(&self) -> f64 {
        let seconds = self.report["seconds"].as_f64().unwrap_or(0.0);
        if seconds <= 0.0 {
            return 0.0;
        }
        self.report["untracked_cpu_us"].as_f64().unwrap_or(0.0) / 1e6 / seconds
    }

    fn errors(&self) -> u64 {
        self.report["error_count"].as_u64().unwrap_or(0)
    }
}

/// Above this much CPU (in cores) used by processes not measured, a
/// measurement is flagged: something else ran on the machine.
pub const OTHER_LOAD_LIMIT: f64 = 0.05;

/// Processes on the proxy's side, in table order.
const PROXY_SIDE: [&str; 3] = ["envoy", "ext-authz", "ext-proc"];

/// Medians of one config under one workload.
pub struct Cell {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Median CPU µs per request of each proxy-side process.
    pub cpu: BTreeMap<&'static str, f64>,
    /// Median of the proxy side's total CPU µs per request.
    pub cpu_total: f64,
    /// Median CPU µs per request of the backend and of the load generator.
    pub backend_cpu: f64,
    pub load_cpu: f64,
    pub errors: u64,
    pub rounds: usize,
    /// Median share of the window CPU 0 (the proxy's) was busy.
    pub cpu0_busy: f64,
    /// Rounds in which other processes used more than [`OTHER_LOAD_LIMIT`].
    pub disturbed: usize,
}

/// Within-round comparisons of one workload.
pub struct Ratios {
    /// Median over rounds of C's req/s over B's (and the others).
    pub c_over_b: Option<f64>,
    pub c_over_a: Option<f64>,
    pub b_over_a: Option<f64>,
    /// Median over rounds of C's p50 minus B's, in µs.
    pub p50_c_minus_b: Option<f64>,
    /// The same for D, the gateway with ext-authz inside Envoy.
    pub d_over_b: Option<f64>,
    pub p50_d_minus_b: Option<f64>,
}

pub struct Summary {
    pub cells: Vec<(&'static str, &'static str, Cell)>,
    pub ratios: Vec<(&'static str, Ratios)>,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

pub fn summarize(workloads: &[Workload], runs: &[Run]) -> Summary {
    let mut cells = Vec::new();
    let mut ratios = Vec::new();
    for workload in workloads {
        for config in CONFIGS {
            let mine: Vec<&Run> = runs
                .iter()
                .filter(|r| r.workload == workload.name && r.config == config)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&Run) -> f64| median(mine.iter().map(|r| f(r)).collect());
            let mut cpu = BTreeMap::new();
            for process in PROXY_SIDE {
                if let Some(m) = median(mine.iter().filter_map(|r| r.cpu(process)).collect()) {
                    cpu.insert(process, m);
                }
            }
            let total =
                |r: &Run| -> f64 { PROXY_SIDE.iter().filter_map(|p| r.cpu(p)).sum::<f64>() };
            cells.push((
                workload.name,
                config,
                Cell {
                    rps: med(&Run::rps).unwrap_or(0.0),
                    p50_us: med(&|r| r.micros("p50_us")).unwrap_or(0.0),
                    p99_us: med(&|r| r.micros("p99_us")).unwrap_or(0.0),
                    cpu,
                    cpu_total: med(&total).unwrap_or(0.0),
                    backend_cpu: med(&|r| r.cpu("backend").unwrap_or(0.0)).unwrap_or(0.0),
                    load_cpu: med(&|r| r.cpu("load").unwrap_or(0.0)).unwrap_or(0.0),
                    errors: mine.iter().map(|r| r.errors()).sum(),
                    rounds: mine.len(),
                    cpu0_busy: med(&|r| r.busy("cpu0")).unwrap_or(0.0),
                    disturbed: mine
                        .iter()
                        .filter(|r| r.other_load() > OTHER_LOAD_LIMIT)
                        .count(),
                },
            ));
        }
        // Pairs from the same round only: drift between rounds cancels out.
        let pair = |x: &str, y: &str, f: &dyn Fn(&Run, &Run) -> Option<f64>| -> Option<f64> {
            let values = runs
                .iter()
                .filter(|a| a.workload == workload.name && a.config == x)
                .filter_map(|a| {
                    runs.iter()
                        .find(|b| {
                            b.workload == workload.name && b.config == y && b.round == a.round
                        })
                        .and_then(|b| f(a, b))
                })
                .collect();
            median(values)
        };
        let ratio = |a: &Run, b: &Run| (b.rps() > 0.0).then(|| a.rps() / b.rps());
        ratios.push((
            workload.name,
            Ratios {
                c_over_b: pair("C", "B", &ratio),
                c_over_a: pair("C", "A", &ratio),
                b_over_a: pair("B", "A", &ratio),
                p50_c_minus_b: pair("C", "B", &|a, b| {
                    Some(a.micros("p50_us") - b.micros("p50_us"))
                }),
                d_over_b: pair("D", "B", &ratio),
                p50_d_minus_b: pair("D", "B", &|a, b| {
                    Some(a.micros("p50_us") - b.micros("p50_us"))
                }),
            },
        ));
    }
    Summary { cells, ratios }
}

impl Summary {
    pub fn to_json(&self) -> Value {
        json!({
            "cells": self.cells.iter().map(|(workload, config, c)| json!({
                "workload": workload, "config": config, "rounds": c.rounds,
                "rps": c.rps, "p50_us": c.p50_us, "p99_us": c.p99_us,
                "cpu_us_per_request": {
                    "proxy_total": c.cpu_total, "by_process": c.cpu,
                    "backend": c.backend_cpu, "load_generator": c.load_cpu,
                },
                "errors": c.errors, "cpu0_busy_share": c.cpu0_busy,
                "rounds_with_other_load": c.disturbed,
            })).collect::<Vec<_>>(),
            "ratios": self.ratios.iter().map(|(workload, r)| json!({
                "workload": workload, "c_over_b_rps": r.c_over_b, "c_over_a_rps": r.c_over_a,
                "b_over_a_rps": r.b_over_a, "p50_c_minus_b_us": r.p50_c_minus_b,
                "d_over_b_rps": r.d_over_b, "p50_d_minus_b_us": r.p50_d_minus_b,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The summary as markdown: one row per workload and config, then the ratios.
pub fn markdown(machine: &Machine, options: &Options, summary: &Summary) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Machine: {machine}.\nMedians of {} interleaved rounds (A, B, C, D) of {} s each after {} ms of warm-up; \
         `tools/call {}`: call-* ~150 B with a session id, stateless-* ~250 B of 2026-07-28 without one \
         (C {}); SSE: 5 events, {} ms apart.\n\
         A = Envoy TLS passthrough, B = Envoy jwt_authn + mcp + rbac + stateful_session (envelope), \
         C = this gateway (Envoy + ext-authz + ext-proc, demo rules), \
         D = C with ext-authz inside Envoy (the mcp_gateway module; Envoy + ext-proc).\n\n",
        options.rounds,
        options.seconds,
        options.warmup_ms,
        options.tool,
        if options.header_only {
            "with the dev config's edge.header_only"
        } else {
            "with edge.header_only emptied"
        },
        options.sse_delay_ms
    ));
    out.push_str(
        "| workload | config | req/s | p50 µs | p99 µs | CPU µs/req, proxy side | split | backend + load gen µs/req | CPU 0 busy | errors |\n\
         |---|---|---:|---:|---:|---:|---|---:|---:|---:|\n",
    );
    for (workload, config, c) in &summary.cells {
        let split = c
            .cpu
            .iter()
            .map(|(p, v)| format!("{p} {v:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        let errors = if c.errors == 0 {
            "0".to_owned()
        } else {
            format!("**{} !!**", c.errors)
        };
        out.push_str(&format!(
            "| {workload} | {config} | {:.0} | {:.0} | {:.0} | {:.0} | {split} | {:.0} + {:.0} | {:.0}% | {errors} |\n",
            c.rps,
            c.p50_us,
            c.p99_us,
            c.cpu_total,
            c.backend_cpu,
            c.load_cpu,
            c.cpu0_busy * 100.0
        ));
    }
    out.push_str(
        "\nWithin-round ratios (median over rounds):\n\n\
         | workload | C/B req/s | D/B req/s | C/A req/s | B/A req/s | p50 C − B µs | p50 D − B µs |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    let show = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
    };
    for (workload, r) in &summary.ratios {
        out.push_str(&format!(
            "| {workload} | {} | {} | {} | {} | {} | {} |\n",
            show(r.c_over_b, 2),
            show(r.d_over_b, 2),
            show(r.c_over_a, 2),
            show(r.b_over_a, 2),
            show(r.p50_c_minus_b, 0),
            show(r.p50_d_minus_b, 0)
        ));
    }
    let disturbed: usize = summary.cells.iter().map(|(_, _, c)| c.disturbed).sum();
    if disturbed > 0 {
        out.push_str(&format!(
            "\n**!! In {disturbed} measurements other processes used more than {:.0}% of a core: \
             the machine was not quiet; see `untracked_cpu_us` in the JSON report.**\n",
            OTHER_LOAD_LIMIT * 100.0
        ));
    }
    let errors: u64 = summary.cells.iter().map(|(_, _, c)| c.errors).sum();
    if errors > 0 {
        out.push_str(&format!(
            "\n**!! {errors} requests failed during measurement: see `errors` in the JSON report; \
             the rows marked !! are not comparable.**\n"
        ));
    }
    out
}
