//! A load at a fixed rate, for the soak (`bench/soak.sh`): POSTs the article's order to
//! `URL/topics/orderCreated` at RATE requests a second over keep-alive connections, for
//! SECONDS, and prints what was answered every 10 s and at the end.
//!
//!     cargo run --release --example soak_load -- http://127.0.0.1:18900 20000 600 [CONNECTIONS]
//!
//! Lines: `LOAD t=10 sent=… accepted=… refused=… failed=…` every 10 s, then one `RESULT`
//! line with the totals (accepted: 202; refused: 503, back-pressure; failed: anything
//! else, or no answer).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

const BODY: &str = r#"{"order_id": 123, "customer": "John Doe", "total": 49.99}"#;

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

impl Counts {
    fn line(&self) -> String {
        format!(
            "sent={} accepted={} refused={} failed={}",
            self.sent.load(Ordering::Relaxed),
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        )
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: soak_load URL RATE SECONDS [CONNECTIONS]";
    let url = args.first().ok_or(usage)?.clone();
    let rate: f64 = args.get(1).ok_or(usage)?.parse()?;
    let seconds: u64 = args.get(2).ok_or(usage)?.parse()?;
    let connections: usize = args.get(3).map_or(Ok(32), |c| c.parse())?;
    let authority = url
        .strip_prefix("http://")
        .ok_or("the URL must start with http://")?
        .trim_end_matches('/')
        .to_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let counts = Arc::new(Counts::default());
        let until = Instant::now() + Duration::from_secs(seconds);
        let period = Duration::from_secs_f64(connections as f64 / rate);
        let mut tasks = Vec::new();
        for n in 0..connections {
            let (counts, authority) = (counts.clone(), authority.clone());
            // Spread the connections' ticks over one period.
            let offset = period.mul_f64(n as f64 / connections as f64);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                connection(&authority, period, until, &counts).await;
            }));
        }
        let started = Instant::now();
        let reporter = {
            let counts = counts.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(Duration::from_secs(10));
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    println!("LOAD t={} {}", started.elapsed().as_secs(), counts.line());
                }
            })
        };
        for task in tasks {
            let _ = task.await;
        }
        reporter.abort();
        println!(
            "RESULT rate={rate} seconds={seconds} connections={connections} {}",
            counts.line()
        );
    });
    Ok(())
}

/// One keep-alive connection sending a request every `period` until `until`, connecting
/// again after a failure.
async fn connection(authority: &str, period: Duration, until: Instant, counts: &Counts) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sender = None;
    while Instant::now() < until {
        ticks.tick().await;
        if sender.is_none() {
            sender = connect(authority).await;
        }
        let Some(open) = sender.as_mut() else {
            counts.sent.fetch_add(1, Ordering::Relaxed);
            counts.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        counts.sent.fetch_add(1, Ordering::Relaxed);
        let request = Request::post(format!("http://{authority}/topics/orderCreated"))
            .header("host", authority)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(BODY.as_bytes())));
        let Ok(request) = request else {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match open.send_request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.into_body().collect().await;
                let counter = match status {
                    202 => &counts.accepted,
                    503 => &counts.refused,
                    _ => &counts.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                sender = None;
            }
        }
    }
}

async fn connect(authority: &str) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(authority).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}
