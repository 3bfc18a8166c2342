//! Dead letters: the event a component gave up on, as a new event on a dead-letter topic,
//! with why and where it failed in CloudEvents extension attributes. Every component that
//! gives up on an event (a subscriber after its last attempt, a relay whose filter or
//! transform fails, a journey past its hop limit) builds it here; the attributes' names
//! live with the event (`event::dead_letter`).

use crate::event::Event;

pub use crate::event::dead_letter::{ATTEMPTS, ID, QUEUE, REASON, SUBSCRIBER, TOPIC};

/// Where an event failed, for its dead letter.
pub struct Failure<'a> {
    /// The dead-letter topic.
    pub topic: &'a str,
    /// The `source` of the dead letter (the component's).
    pub source: &'a str,
    /// The component that gave up.
    pub component: &'a str,
    pub attempts: u32,
    pub reason: &'a str,
    /// The queue the event was taken from, if any.
    pub queue: Option<&'a str>,
}

/// The dead letter of `event`: its data, caused by it, with the failure's attributes.
pub fn build(event: &Event, failure: &Failure<'_>) -> Event {
    let mut dead = event.caused(failure.topic, failure.source, event.data.clone());
    // The journey ends here: a dead letter must never be refused for its length.
    dead.hops = event.hops;
    let ext = &mut dead.extensions;
    ext.insert(REASON.into(), failure.reason.into());
    ext.insert(ATTEMPTS.into(), failure.attempts.into());
    ext.insert(SUBSCRIBER.into(), failure.component.into());
    ext.insert(TOPIC.into(), event.topic.clone().into());
    ext.insert(ID.into(), event.id.clone().into());
    if let Some(queue) = failure.queue {
        ext.insert(QUEUE.into(), queue.into());
    }
    dead
}
