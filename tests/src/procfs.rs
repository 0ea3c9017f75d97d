//! What Linux says about a process: CPU time and resident memory, from `/proc`.

use anyhow::{Context, anyhow};

/// CPU time (user + system) process `pid` spent so far, in µs.
pub fn cpu_micros(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    // The command name (field 2) may hold spaces; fields after its ')' are
    // state (3), ..., utime (14), stime (15).
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("{path}: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("{path}: too few fields"))?
            .parse::<u64>()
            .with_context(|| format!("{path}: field {}", i + 3))
    };
    let total_ticks = field(11)? + field(12)?;
    Ok(total_ticks * 1_000_000 / clock_ticks_per_second())
}

/// Resident memory of process `pid` now (`VmRSS`), in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    let kib = text
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .ok_or_else(|| anyhow!("{path}: no VmRSS"))?
        .trim()
        .parse::<u64>()
        .with_context(|| format!("{path}: VmRSS"))?;
    Ok(kib * 1024)
}

/// Clock ticks per second of `/proc`'s CPU times.
pub fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}
