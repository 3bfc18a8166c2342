//! How fast a Redis broker refuses a publish while its Redis is gone (not a test).
//!
//! Starts a `redis-server` of its own on a free loopback port (no persistence, a temp
//! dir), connects a broker, publishes once, kills the server, then times `REFUSALS`
//! publishes one after another, each of which must fail. Prints the latency of each
//! phase: the first refusals (while the broker finds out), and the steady ones after.
//!
//! Run with `cargo run --release --example redis_refusals`. One `RESULT …` line is printed
//! per phase.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edaflow::broker::{Backpressure, Broker, RedisBroker, RedisOptions, RedisUrl};
use edaflow::event::Event;

const REFUSALS: usize = 200;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn report(phase: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let total: Duration = samples.iter().sum();
    println!(
        "RESULT refusal latency | {phase} | n {} | mean {:.3} ms | p50 {:.3} ms | p99 {:.3} ms | max {:.3} ms",
        samples.len(),
        total.as_secs_f64() * 1000.0 / samples.len().max(1) as f64,
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        percentile(&samples, 100.0),
    );
}

fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(async {
        let url = RedisUrl::parse(&format!("redis://127.0.0.1:{port}"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let broker = loop {
            match RedisBroker::connect(&url, RedisOptions::default()).await {
                Ok(broker) => break broker,
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let event = || Event::new("job", "example", serde_json::json!({"n": 1}));
        broker.publish(event(), Backpressure::Reject).await?;
        server.kill()?;
        server.wait()?;
        let mut samples = Vec::with_capacity(REFUSALS);
        for _ in 0..REFUSALS {
            let started = Instant::now();
            let refused = broker.publish(event(), Backpressure::Reject).await;
            samples.push(started.elapsed());
            if refused.is_ok() {
                return Err("a publish succeeded with Redis gone".into());
            }
        }
        let steady = samples.split_off(2);
        report("first 2 (finding out)", samples);
        report("after them", steady);
        Ok::<(), Box<dyn std::error::Error>>(())
    });
    let _ = server.kill();
    let _ = server.wait();
    outcome
}
