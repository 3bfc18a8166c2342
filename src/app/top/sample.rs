//! What `edaflow top` reads and computes: a `Sample` is one `GET /stats` answer (only the
//! fields top shows; the rest is ignored, so a newer server still reads), and `View` is
//! two successive samples turned into what a frame shows: per-second rates from the
//! counters' differences, and the gauges of the newer sample.
//!
//! A rate needs the same component in both samples and a counter that did not go down (a
//! restarted instance starts again from zero); otherwise it is unknown (`None`), never a
//! made-up zero.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One `GET /stats` answer.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct Sample {
    /// When the server took it (ms since the Unix epoch): rates divide by the server's
    /// clock, so a slow answer does not skew them.
    pub at_ms: u64,
    pub generation: u64,
    pub uptime_seconds: u64,
    pub health: Health,
    pub topics: BTreeMap<String, TopicCounts>,
    pub subscribers: BTreeMap<String, SubscriberCounts>,
    pub relays: BTreeMap<String, RelayCounts>,
    pub queues: BTreeMap<String, QueueCounts>,
    pub chains: Vec<ChainCounts>,
    pub http: HttpCounts,
    pub dead_letters: u64,
    pub processes: Vec<Process>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct Health {
    pub status: String,
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct TopicCounts {
    #[serde(rename = "in")]
    pub events_in: u64,
    #[serde(rename = "out")]
    pub events_out: u64,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct SubscriberCounts {
    #[serde(rename = "in")]
    pub events_in: u64,
    pub handled: u64,
    pub errors: u64,
    pub dead_letters: u64,
    pub queued: Option<u64>,
    pub in_flight: Option<u64>,
    pub recent_errors: Vec<RecentError>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct RelayCounts {
    pub relayed: u64,
    pub errors: u64,
    pub recent_errors: Vec<RecentError>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct RecentError {
    pub message: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct QueueCounts {
    /// Items held: due now or waiting for their time.
    pub depth: u64,
    pub due_now: u64,
    pub in_flight: u64,
    pub dead_letters: u64,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct ChainCounts {
    pub chain: String,
    pub started: u64,
    pub completed: u64,
    pub timed_out: u64,
    pub in_flight: u64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct HttpCounts {
    pub accepted: u64,
    pub rejected: u64,
    pub connections_open: u64,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct Process {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub generation: u64,
    pub seen_ms_ago: u64,
    #[serde(rename = "self")]
    pub this: bool,
}

/// Events per second between two readings of a counter `seconds` apart; `None` when
/// there is no earlier reading, no time passed, or the counter went down (it restarted).
pub(crate) fn rate(before: Option<u64>, now: u64, seconds: f64) -> Option<f64> {
    let before = before?;
    if seconds <= 0.0 || now < before {
        return None;
    }
    Some((now - before) as f64 / seconds)
}

/// One topic's line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TopicRow {
    pub name: String,
    pub in_rate: Option<f64>,
    pub out_rate: Option<f64>,
    pub counts: TopicCounts,
}

/// One subscriber's line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SubscriberRow {
    pub name: String,
    pub in_rate: Option<f64>,
    pub handled_rate: Option<f64>,
    pub error_rate: Option<f64>,
    pub counts: SubscriberCounts,
    pub last_error: Option<String>,
}

/// One relay's line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RelayRow {
    pub name: String,
    pub relayed_rate: Option<f64>,
    pub error_rate: Option<f64>,
    pub counts: RelayCounts,
    pub last_error: Option<String>,
}

/// One chain's line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ChainRow {
    pub started_rate: Option<f64>,
    pub counts: ChainCounts,
}

/// What one frame shows: the newer sample's gauges and the rates since the older one.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct View {
    /// Seconds between the two samples (0 with a single sample).
    pub seconds: f64,
    pub now: Sample,
    pub topics: Vec<TopicRow>,
    pub subscribers: Vec<SubscriberRow>,
    pub relays: Vec<RelayRow>,
    pub chains: Vec<ChainRow>,
    pub accepted_rate: Option<f64>,
    pub rejected_rate: Option<f64>,
}

impl View {
    /// The view of `now`, with rates since `before` when there is one.
    pub(crate) fn of(before: Option<&Sample>, now: Sample) -> View {
        let seconds = before.map_or(0.0, |b| now.at_ms.saturating_sub(b.at_ms) as f64 / 1e3);
        let topics = now
            .topics
            .iter()
            .map(|(name, c)| {
                let old = before.and_then(|b| b.topics.get(name));
                TopicRow {
                    name: name.clone(),
                    in_rate: rate(old.map(|o| o.events_in), c.events_in, seconds),
                    out_rate: rate(old.map(|o| o.events_out), c.events_out, seconds),
                    counts: *c,
                }
            })
            .collect();
        let subscribers = now
            .subscribers
            .iter()
            .map(|(name, c)| {
                let old = before.and_then(|b| b.subscribers.get(name));
                SubscriberRow {
                    name: name.clone(),
                    in_rate: rate(old.map(|o| o.events_in), c.events_in, seconds),
                    handled_rate: rate(old.map(|o| o.handled), c.handled, seconds),
                    error_rate: rate(old.map(|o| o.errors), c.errors, seconds),
                    last_error: c.recent_errors.last().map(|e| e.message.clone()),
                    counts: c.clone(),
                }
            })
            .collect();
        let relays = now
            .relays
            .iter()
            .map(|(name, c)| {
                let old = before.and_then(|b| b.relays.get(name));
                RelayRow {
                    name: name.clone(),
                    relayed_rate: rate(old.map(|o| o.relayed), c.relayed, seconds),
                    error_rate: rate(old.map(|o| o.errors), c.errors, seconds),
                    last_error: c.recent_errors.last().map(|e| e.message.clone()),
                    counts: c.clone(),
                }
            })
            .collect();
        let chains = now
            .chains
            .iter()
            .map(|c| {
                let old = before.and_then(|b| b.chains.iter().find(|o| o.chain == c.chain));
                ChainRow {
                    started_rate: rate(old.map(|o| o.started), c.started, seconds),
                    counts: c.clone(),
                }
            })
            .collect();
        let old_http = before.map(|b| b.http);
        View {
            seconds,
            topics,
            subscribers,
            relays,
            chains,
            accepted_rate: rate(old_http.map(|h| h.accepted), now.http.accepted, seconds),
            rejected_rate: rate(old_http.map(|h| h.rejected), now.http.rejected, seconds),
            now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_the_difference_over_the_time_between_samples() {
        assert_eq!(rate(Some(100), 150, 2.0), Some(25.0));
        assert_eq!(rate(Some(7), 7, 0.5), Some(0.0));
        assert_eq!(rate(Some(0), 3, 0.25), Some(12.0));
    }

    #[test]
    fn a_rate_is_unknown_without_a_reading_time_or_after_a_restart() {
        assert_eq!(rate(None, 150, 1.0), None);
        assert_eq!(rate(Some(10), 20, 0.0), None);
        assert_eq!(rate(Some(500), 20, 1.0), None, "the counter restarted");
    }

    fn sample(at_ms: u64, events: u64, errors: u64) -> Sample {
        let mut s = Sample {
            at_ms,
            ..Sample::default()
        };
        s.topics.insert(
            "orderCreated".into(),
            TopicCounts {
                events_in: events,
                events_out: events / 2,
            },
        );
        s.subscribers.insert(
            "reserve".into(),
            SubscriberCounts {
                events_in: events,
                handled: events - errors,
                errors,
                recent_errors: vec![RecentError {
                    message: "first".into(),
                }],
                ..SubscriberCounts::default()
            },
        );
        s.http.accepted = events;
        s
    }

    #[test]
    fn a_view_divides_by_the_servers_clock_and_keeps_the_last_error() {
        let before = sample(10_000, 100, 1);
        let mut now = sample(12_000, 300, 5);
        now.subscribers
            .get_mut("reserve")
            .expect("declared above")
            .recent_errors
            .push(RecentError {
                message: "latest".into(),
            });
        let view = View::of(Some(&before), now);
        assert_eq!(view.seconds, 2.0);
        assert_eq!(view.topics[0].in_rate, Some(100.0));
        assert_eq!(view.topics[0].out_rate, Some(50.0));
        let sub = &view.subscribers[0];
        assert_eq!(sub.in_rate, Some(100.0));
        assert_eq!(sub.handled_rate, Some(98.0));
        assert_eq!(sub.error_rate, Some(2.0));
        assert_eq!(sub.last_error.as_deref(), Some("latest"));
        assert_eq!(view.accepted_rate, Some(100.0));
    }

    #[test]
    fn a_component_new_since_the_last_sample_has_no_rate_yet() {
        let before = Sample {
            at_ms: 1_000,
            ..Sample::default()
        };
        let view = View::of(Some(&before), sample(2_000, 40, 0));
        assert_eq!(view.topics[0].in_rate, None);
        assert_eq!(view.subscribers[0].in_rate, None);
        let single = View::of(None, sample(2_000, 40, 0));
        assert_eq!(single.seconds, 0.0);
        assert_eq!(single.topics[0].in_rate, None);
    }

    #[test]
    fn an_answer_with_fields_top_does_not_read_still_reads() {
        let text = r#"{"at_ms":5,"generation":2,"uptime_seconds":9,"health":{"status":"ok","reason":null},
            "topics":{"t":{"in":3,"out":1}},"subscribers":{"s":{"in":3,"out":0,"handled":3,"errors":0,
            "dead_letters":0,"latency":{"le":[0.1],"counts":[3],"count":3,"sum_seconds":0.01},
            "recent_errors":[],"queued":0,"in_flight":1,"capacity":1024}},"relays":{},
            "queues":{"q":{"depth":4,"due_now":1,"next_due_ms":50,"in_flight":2,"dead_letters":1}},
            "chains":[],"http":{"accepted":3,"rejected":0,"backpressured":0,"connections_open":1},
            "dead_letters":1,"processes":[],"something_new":true}"#;
        let sample: Sample = serde_json::from_str(text).expect("reads");
        assert_eq!(sample.topics["t"].events_in, 3);
        assert_eq!(sample.subscribers["s"].in_flight, Some(1));
        assert_eq!(sample.queues["q"].depth, 4);
        assert_eq!(sample.dead_letters, 1);
    }
}
