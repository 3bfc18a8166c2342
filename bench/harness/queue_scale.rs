//! How the memory broker's work queue scales with the number of pending items: enqueue
//! and dequeue cost per item with 10^4, 10^5 and 10^6 items already waiting, and the
//! process's peak RSS with 10^6 pending items (each a real event with the W3 payload).
//!
//!     cargo run --release --example queue_scale
//!
//! Prints one `RESULT` line per size.

mod common;

use std::time::{Duration, Instant};

use edaflow::broker::{Broker, Consumer, Effects, MemoryBroker, MemoryOptions, QueueSpec};
use edaflow::event::Event;

fn item(i: usize) -> Event {
    Event::new(
        "jobs",
        "edaflow://bench/scale",
        serde_json::json!({"task_id": i, "description": "Process data files"}),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROBE: usize = 10_000;
    let broker = MemoryBroker::new(MemoryOptions::default());
    broker
        .declare_queue(&QueueSpec {
            name: "jobs".into(),
            capacity: None,
            poll: None,
        })
        .await?;
    let mut consumer = broker.queue_consumer("jobs")?;
    let mut pending = 0usize;
    for size in [10_000usize, 100_000, 1_000_000] {
        // Fill up to `size` items due in an hour (they stay pending, stored compactly).
        let t = Instant::now();
        let before = pending;
        while pending < size {
            broker
                .enqueue(
                    "jobs",
                    item(pending),
                    Duration::from_secs(3600 + (pending % 1000) as u64),
                )
                .await?;
            pending += 1;
        }
        let fill_ns = t.elapsed().as_nanos() as f64 / (size - before) as f64;
        // Enqueue cost at this size: PROBE items due now, spread among the pending ones.
        let t = Instant::now();
        for i in 0..PROBE {
            broker
                .enqueue("jobs", item(size + i), Duration::ZERO)
                .await?;
        }
        let enqueue_ns = t.elapsed().as_nanos() as f64 / PROBE as f64;
        // Dequeue cost: take and settle the PROBE due items.
        let t = Instant::now();
        for _ in 0..PROBE {
            let delivery = consumer.try_next().await?.ok_or("a due item was missing")?;
            broker.commit(delivery, Effects::default()).await?;
        }
        let dequeue_ns = t.elapsed().as_nanos() as f64 / PROBE as f64;
        let depth = broker.queue_stats()[0].depth;
        println!(
            "RESULT pending={depth} far_enqueue_ns_per_item={fill_ns:.0} due_enqueue_ns_per_item={enqueue_ns:.0} dequeue_ns_per_item={dequeue_ns:.0} peak_rss_kib={}",
            common::peak_rss_kib()
        );
    }
    Ok(())
}
