//! `edaflow tail` against a running instance: it prints the events of matching topics as
//! they happen, and only those.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{copy_orders_flow, http, Edaflow, FlowDir};

const PATIENCE: Duration = Duration::from_secs(20);

#[test]
fn tail_prints_matching_events_as_they_happen() {
    let dir = FlowDir::new();
    copy_orders_flow(&dir);
    let mut server = Edaflow::new(dir.root())
        .args(["run", "flows/orders.toml", "--listen", "127.0.0.1:0"])
        .spawn();
    let addr = server.find_in_stderr("the listening line", PATIENCE, |line| {
        let (_, after) = line
            .split_once("http ingest listening")?
            .1
            .split_once("addr=")?;
        after.split_whitespace().next()?.parse::<SocketAddr>().ok()
    });
    let url = format!("http://{addr}");
    let tail = Edaflow::new(dir.root())
        .args(["tail", "order*", "--url", &url])
        .spawn();
    // The tail is subscribed once its request is being served; publish until it shows up.
    let deadline = std::time::Instant::now() + PATIENCE;
    while !(tail.stdout().contains("orderRejected") && tail.stdout().contains("orderShipped")) {
        assert!(
            std::time::Instant::now() < deadline,
            "tail printed nothing\n{}\n{}",
            tail.dump(),
            server.dump()
        );
        let reply = http(
            addr,
            "POST",
            "/topics/orderCreated",
            &[("Content-Type", "application/json")],
            br#"{"order_id": 7, "total": 10}"#,
        );
        assert_eq!(reply.status, 202);
        let reply = http(
            addr,
            "POST",
            "/topics/orderCreated",
            &[("Content-Type", "application/json")],
            br#"{"order_id": 8, "customer": "Ann", "total": 10}"#,
        );
        assert_eq!(reply.status, 202);
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = tail.stdout();
    // Every line is one event: its time, an `order*` topic, its id, its data. (Which topic
    // comes first depends on where in a journey the tail subscribed.)
    for line in out.lines() {
        let fields: Vec<&str> = line.splitn(4, ' ').collect();
        assert!(
            matches!(fields.as_slice(), [time, topic, _id, data]
                if time.ends_with('Z') && topic.starts_with("order") && data.starts_with('{')),
            "not an event line: {line:?}\n{out}"
        );
    }
    assert!(
        out.contains(r#"{"order_id": 7, "reason": "missing customer"}"#),
        "{out}"
    );
    assert!(out.contains(" orderShipped "), "{out}");
    assert!(
        !out.contains("inventoryReserved") && !out.contains("paymentCharged"),
        "only `order*` topics: {out}"
    );
}
