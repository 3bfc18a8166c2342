//! Load on running `edaflow` processes: numbered events posted one after another (to each
//! address in turn) until stopped, counting which were answered 202; and waiting until
//! every such number shows up among what was handled.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Reply;

/// Numbered events posted from a thread of their own until `finish`.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// The number being posted now (set before its request goes out).
    posting: Arc<AtomicU64>,
    acked: Arc<Mutex<BTreeSet<u64>>>,
    refused: Arc<Mutex<usize>>,
    thread: JoinHandle<()>,
    patience: Duration,
}

impl Load {
    /// Posts `0`, `1`, ... with `post`, to `addrs` in turn, a few ms apart; waits on it
    /// give up after `patience`. Any answer other than 202 or 503 fails the test (when
    /// the load is finished), as does a refused connection: the processes must stay up.
    pub fn start(
        addrs: Vec<SocketAddr>,
        patience: Duration,
        post: fn(SocketAddr, u64) -> Reply,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let posting = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let refused = Arc::new(Mutex::new(0));
        let thread = {
            let (stop, posting) = (stop.clone(), posting.clone());
            let (acked, refused) = (acked.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    posting.store(n, Ordering::SeqCst);
                    let addr = addrs[usize::try_from(n).unwrap_or(0) % addrs.len()];
                    let reply = post(addr, n);
                    match reply.status {
                        202 => {
                            acked.lock().unwrap().insert(n);
                        }
                        503 => *refused.lock().unwrap() += 1,
                        _ => panic!("unexpected answer to event {n}: {reply:?}"),
                    }
                    n += 1;
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        };
        Load {
            stop,
            posting,
            acked,
            refused,
            thread,
            patience,
        }
    }

    /// The number being posted now.
    pub fn posting(&self) -> u64 {
        self.posting.load(Ordering::SeqCst)
    }

    /// Numbers posted from now on were sent after whatever happened before this call.
    pub fn next_fresh(&self) -> u64 {
        self.posting() + 1
    }

    /// How many were answered 202 so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// How many numbers from `from` on were answered 202 so far.
    pub fn acked_from(&self, from: u64) -> usize {
        self.acked.lock().unwrap().range(from..).count()
    }

    /// Waits until `at_least` events were answered 202.
    pub fn wait_acked(&self, at_least: usize, what: &str) {
        self.wait_acked_from(0, at_least, what);
    }

    /// Waits until `at_least` numbers from `from` on were answered 202.
    pub fn wait_acked_from(&self, from: u64, at_least: usize, what: &str) {
        let deadline = Instant::now() + self.patience;
        while self.acked_from(from) < at_least {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} events acknowledged",
                self.acked_from(from)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops posting; returns the numbers answered 202 and how many were refused (503).
    pub fn finish(self) -> (BTreeSet<u64>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the load generator failed");
        let acked = self.acked.lock().unwrap().clone();
        let refused = *self.refused.lock().unwrap();
        (acked, refused)
    }
}

/// Polls `handled()` (how many times each number was handled) until every number in
/// `must` is there or `within` passes; returns the last counts either way.
pub fn wait_handled(
    must: &BTreeSet<u64>,
    within: Duration,
    mut handled: impl FnMut() -> BTreeMap<u64, usize>,
) -> BTreeMap<u64, usize> {
    let deadline = Instant::now() + within;
    loop {
        let counts = handled();
        if must.iter().all(|n| counts.contains_key(n)) || Instant::now() >= deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
