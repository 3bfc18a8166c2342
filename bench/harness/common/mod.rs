//! What the benchmark harnesses share: the `edaflow` binary's allocator, the runtime sized as
//! `edaflow run` sizes it, the broker chosen by `BENCH_BROKER` (`BENCH_PREFETCH`, `BENCH_BATCH`,
//! `BENCH_TAKE_AHEAD_MS` and `BENCH_HOLD_AHEAD` override its defaults), and the peak-RSS reading.
//! (Each harness includes it with `mod common;`; it is no target of its own.)

// Each example uses the part it needs.
#![allow(dead_code)]

use std::time::Duration;

use edaflow::broker::{RedisBroker, RedisOptions, RedisUrl};

/// The allocator of the `edaflow` binary (mimalloc, metered for scripts), so that these
/// figures are the binary's.
#[global_allocator]
static ALLOCATOR: edaflow::script::memory::MeteredAlloc<mimalloc::MiMalloc> =
    edaflow::script::memory::MeteredAlloc(mimalloc::MiMalloc);

/// The process's peak resident set (`VmHWM`), in KiB; 0 where /proc does not say.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `BENCH_BROKER` when it names a Redis (`redis://…`), else `None` for the memory broker.
pub fn redis_url() -> Option<String> {
    std::env::var("BENCH_BROKER")
        .ok()
        .filter(|url| url != "memory")
}

/// A runtime sized as `edaflow run` sizes its own for the chosen broker; `BENCH_THREADS`
/// overrides the thread count.
pub fn runtime() -> Result<tokio::runtime::Runtime, Box<dyn std::error::Error>> {
    let broker = redis_url().unwrap_or_else(|| "memory".to_owned());
    let asked = std::env::var("BENCH_THREADS")
        .ok()
        .map(|n| n.parse())
        .transpose()?;
    Ok(edaflow::app::build_runtime(asked, &broker)?)
}

/// A Redis broker on `url` in a fresh namespace (`bench-{workload}-{pid}`), with the
/// `BENCH_PREFETCH`, `BENCH_BATCH`, `BENCH_SHARDS` and `BENCH_SPREAD_BY` (`journey`)
/// knobs from the environment (for A/B runs).
pub async fn redis_broker(
    url: &str,
    workload: &str,
) -> Result<RedisBroker, Box<dyn std::error::Error>> {
    let options = RedisOptions {
        namespace: format!("bench-{workload}-{}", std::process::id()),
        prefetch: env_or("BENCH_PREFETCH", RedisOptions::default().prefetch),
        batch: env_or("BENCH_BATCH", RedisOptions::default().batch),
        take_ahead: std::env::var("BENCH_TAKE_AHEAD_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(RedisOptions::default().take_ahead, Duration::from_millis),
        hold_ahead: env_or("BENCH_HOLD_AHEAD", RedisOptions::default().hold_ahead),
        shards: env_or("BENCH_SHARDS", 1),
        spread_by: match std::env::var("BENCH_SPREAD_BY").as_deref() {
            Ok("journey") => edaflow::broker::redis::SpreadBy::Journey,
            _ => edaflow::broker::redis::SpreadBy::Topic,
        },
        ..RedisOptions::default()
    };
    Ok(RedisBroker::connect(&RedisUrl::parse(url)?, options).await?)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
