"""Draw a soak report's curves: resident memory and CPU of each gateway process,
and call latency percentiles, over the steady phase.

    plot_soak.py target/soak.json docs/soak.png

Run by `cargo xtask soak --plot PATH` (matplotlib, from dev/requirements-plot.txt).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PROCESSES = ["envoy", "ext-authz", "ext-proc"]


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        report = json.load(f)
    samples = report["samples"]
    if not samples:
        print("the report has no samples", file=sys.stderr)
        return 1
    start = samples[0]["at_s"]
    minutes = [(s["at_s"] - start) / 60 for s in samples]

    fig, (memory, latency) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for name in PROCESSES:
        memory.plot(minutes, [s["rss_mib"].get(name) for s in samples], marker="o", label=name)
    memory.set_ylabel("resident memory (MiB)")
    memory.set_ylim(bottom=0)
    memory.legend(loc="lower right")
    memory.grid(alpha=0.3)
    memory.set_title(
        f"Soak: {report['clients']} session clients at {report['rate_per_s']:.0f} calls/s, "
        f"{report['steady_s'] / 60:.0f} min"
    )

    timed = [(m, s) for m, s in zip(minutes, samples) if s["answers_per_s"] > 0]
    for key, label in [("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")]:
        latency.plot([m for m, _ in timed], [s[key] for _, s in timed], marker="o", label=label)
    latency.set_ylabel("tools/call latency (ms)")
    latency.set_xlabel("minutes after warm-up")
    latency.set_ylim(bottom=0)
    latency.legend(loc="best")
    latency.grid(alpha=0.3)
    fig.text(0.01, 0.005, report["machine"], fontsize=7, color="gray")

    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
