//! The sending side of a tap (`Broker::tap`): a lossy live view of accepted events for
//! `edaflow tail`, `GET /tail`, `edaflow test` and tests. A reader that falls behind holds at
//! most `buffer` events and `bytes` of them; past either, events are dropped for that
//! reader (and counted), so a slow or stalled reader never grows the process.
//!
//! The byte count needs nothing from the reader: the channel is first in, first out with
//! one sender, so when it holds `n` events they are the last `n` sent, whose sizes are kept
//! here.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::event::Event;

/// What a tap may hold for its reader unless it says otherwise: 64 MiB.
pub const TAP_BYTES: usize = 64 << 20;

/// Feeds one tap's channel within its budgets.
pub(crate) struct TapFeed {
    tx: mpsc::Sender<Arc<Event>>,
    /// Sizes of the events sent and possibly not read yet, oldest first.
    sizes: VecDeque<usize>,
    /// Their sum.
    bytes: usize,
    budget: usize,
    /// Events dropped for this reader.
    pub dropped: u64,
}

impl TapFeed {
    /// A tap holding at most `buffer` events and `bytes` of them, and its reader.
    pub fn channel(buffer: usize, bytes: usize) -> (TapFeed, mpsc::Receiver<Arc<Event>>) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let feed = TapFeed {
            tx,
            sizes: VecDeque::new(),
            bytes: 0,
            budget: bytes,
            dropped: 0,
        };
        (feed, rx)
    }

    /// True once the reader is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Sends `event` to the reader, or drops it for this reader when the tap is full.
    pub fn offer(&mut self, event: &Arc<Event>) {
        // What the reader has taken since: the oldest sizes.
        let waiting = self.tx.max_capacity() - self.tx.capacity();
        while self.sizes.len() > waiting {
            if let Some(size) = self.sizes.pop_front() {
                self.bytes -= size;
            }
        }
        let size = event.approx_bytes();
        if self.bytes.saturating_add(size) > self.budget {
            self.dropped += 1;
            return;
        }
        match self.tx.try_send(event.clone()) {
            Ok(()) => {
                self.sizes.push_back(size);
                self.bytes += size;
            }
            Err(_) => self.dropped += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(bytes: usize) -> Arc<Event> {
        Arc::new(Event::new(
            "t",
            "edaflow://test",
            json!({ "pad": "x".repeat(bytes) }),
        ))
    }

    #[test]
    fn a_slow_reader_holds_at_most_its_bytes_and_gets_room_back_as_it_reads() {
        let one = event(10_000).approx_bytes();
        let (mut feed, mut rx) = TapFeed::channel(1000, one * 3);
        for _ in 0..10 {
            feed.offer(&event(10_000));
        }
        assert_eq!(feed.dropped, 7, "three fit in the byte budget");
        assert!(rx.try_recv().is_ok());
        feed.offer(&event(10_000));
        assert_eq!(feed.dropped, 7, "reading one made room for one");
        let mut read = 0;
        while rx.try_recv().is_ok() {
            read += 1;
        }
        assert_eq!(read, 3);
        for _ in 0..3 {
            feed.offer(&event(10_000));
        }
        assert_eq!(feed.dropped, 7, "an emptied tap takes three again");
    }

    #[test]
    fn a_slow_reader_holds_at_most_its_count() {
        let (mut feed, _rx) = TapFeed::channel(2, usize::MAX);
        for _ in 0..5 {
            feed.offer(&event(1));
        }
        assert_eq!(feed.dropped, 3);
    }

    #[test]
    fn a_closed_tap_says_so() {
        let (feed, rx) = TapFeed::channel(2, 1 << 20);
        drop(rx);
        assert!(feed.is_closed());
    }
}
