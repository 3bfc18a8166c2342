//! What a reload changes: `FlowDiff`, worked out component by component from the flow set
//! that runs and the next one, before anything is touched.
//!
//! Plain data in, plain data out: no tokio, no broker, no Rhai. What the flow sets cannot
//! show (which compiled scripts import a module whose text changed) the runtime works out
//! and hands in as `CodeChanges`. This module decides and never acts: `runtime::apply`
//! stops, declares and starts from the diff.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use crate::flow::model::{FlowSet, ProducerConfig, SubscriberConfig, SubscriberInput};

/// The kinds of component a flow set declares. The order is the order of a reload's
/// lists (`queues.…` first): queues before what reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Queue,
    Subscriber,
    Relay,
    Chain,
    Producer,
    /// `[topics.NAME]`: settings only, nothing runs.
    Topic,
    /// `[stores.NAME]`: settings only, nothing runs.
    Store,
}

impl Kind {
    /// The flow-file table that declares it: `subscribers` for `[subscribers.NAME]`.
    pub fn table(self) -> &'static str {
        match self {
            Kind::Queue => "queues",
            Kind::Subscriber => "subscribers",
            Kind::Relay => "relays",
            Kind::Chain => "chains",
            Kind::Producer => "producers",
            Kind::Topic => "topics",
            Kind::Store => "stores",
        }
    }
}

/// One component of a flow set, by kind and name. Shown as its table and name
/// (`subscribers.greeter`), as reload outcomes, logs and compiled scripts name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComponentKey {
    pub kind: Kind,
    pub name: String,
}

impl ComponentKey {
    /// The component `name` of `kind`.
    pub fn new(kind: Kind, name: impl Into<String>) -> ComponentKey {
        ComponentKey {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for ComponentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind.table(), self.name)
    }
}

/// Which components of a flow set this process runs (`--role`, and whether producers run
/// at all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Run only subscribers with one of these roles, and producers without a role or with
    /// one of them (everything when empty).
    pub roles: Vec<String>,
    /// Run producers (false for `edaflow test`, which publishes itself).
    pub producers: bool,
}

impl Selection {
    /// A subscriber runs when no role is selected, or when its role is.
    pub fn runs_subscriber(&self, config: &SubscriberConfig) -> bool {
        self.roles.is_empty() || self.selected(config.role.as_ref())
    }

    /// A producer runs when producers run at all, and it has no role, no role is
    /// selected, or its role is.
    pub fn runs_producer(&self, config: &ProducerConfig) -> bool {
        self.producers
            && (config.role.is_none()
                || self.roles.is_empty()
                || self.selected(config.role.as_ref()))
    }

    fn selected(&self, role: Option<&String>) -> bool {
        role.is_some_and(|r| self.roles.contains(r))
    }
}

/// What the flow sets cannot show about handler code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CodeChanges {
    /// Components whose compiled script imports a module whose text changed.
    pub imports: BTreeSet<ComponentKey>,
    /// The code that runs may not be the previous set's (an apply failed half-way): every
    /// subscriber gets its code again and every producer restarts. Relays do not: their
    /// code is rebuilt when their settings or imports change.
    pub unsure: bool,
}

/// What a reload does, component by component. Topics and stores have nothing running:
/// they are listed because their settings count as changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowDiff {
    /// In the next set only: declared or started.
    pub added: BTreeSet<ComponentKey>,
    /// In both, with settings that differ (or code, for relays and producers): stopped and
    /// started again (a queue: declared again).
    pub changed: BTreeSet<ComponentKey>,
    /// In the previous set only: stopped, their backlog moved to a successor or dropped.
    pub removed: BTreeSet<ComponentKey>,
    /// Subscribers whose handler code alone changed: the new code is swapped in place.
    pub swapped: BTreeSet<ComponentKey>,
    /// Former name → successor, from `renamed_from`: where the backlog of a removed
    /// component goes. On the first generation, every `renamed_from` of the set, since a
    /// durable broker may still hold what an earlier run left under the former name.
    pub renamed: BTreeMap<ComponentKey, ComponentKey>,
}

/// How one component compares across two sets.
enum Change {
    Same,
    /// New handler code, same settings.
    Code,
    Settings,
}

impl FlowDiff {
    /// The diff from `previous` (`None`: nothing runs yet, the first generation) to
    /// `next`, over the components `selection` runs. On the first generation topics and
    /// stores are not listed: only their later changes are.
    pub fn between(
        previous: Option<&FlowSet>,
        next: &FlowSet,
        selection: &Selection,
        code: &CodeChanges,
    ) -> FlowDiff {
        let nothing = FlowSet::default();
        let prev = previous.unwrap_or(&nothing);
        let queue_changed = |queue: &str| prev.queues.get(queue) != next.queues.get(queue);
        let code_changed =
            |kind: Kind, name: &str| code.imports.contains(&ComponentKey::new(kind, name));
        // The components this process runs, of the kinds `--role` selects among.
        let subscribers = |flows: &FlowSet| -> BTreeMap<String, SubscriberConfig> {
            flows
                .subscribers
                .iter()
                .filter(|(_, c)| selection.runs_subscriber(c))
                .map(|(n, c)| (n.clone(), c.clone()))
                .collect()
        };
        let producers = |flows: &FlowSet| -> BTreeMap<String, ProducerConfig> {
            flows
                .producers
                .iter()
                .filter(|(_, c)| selection.runs_producer(c))
                .map(|(n, c)| (n.clone(), c.clone()))
                .collect()
        };

        let mut diff = FlowDiff::default();
        diff.compare(Kind::Queue, &prev.queues, &next.queues, |_, old, new| {
            settings_if(old != new)
        });
        diff.compare(
            Kind::Subscriber,
            &subscribers(prev),
            &subscribers(next),
            |name, old, new| {
                let reads_changed_queue =
                    matches!(&new.input, SubscriberInput::Queue(q) if queue_changed(q));
                if !same_settings(old, new) || reads_changed_queue {
                    Change::Settings
                } else if old.script != new.script
                    || code_changed(Kind::Subscriber, name)
                    || code.unsure
                {
                    Change::Code
                } else {
                    Change::Same
                }
            },
        );
        diff.compare(Kind::Relay, &prev.relays, &next.relays, |name, old, new| {
            settings_if(old != new || code_changed(Kind::Relay, name) || queue_changed(&new.to))
        });
        diff.compare(Kind::Chain, &prev.chains, &next.chains, |_, old, new| {
            settings_if(old != new)
        });
        diff.compare(
            Kind::Producer,
            &producers(prev),
            &producers(next),
            |name, old, new| {
                settings_if(old != new || code_changed(Kind::Producer, name) || code.unsure)
            },
        );
        if previous.is_some() {
            diff.compare(Kind::Topic, &prev.topics, &next.topics, |_, old, new| {
                settings_if(old != new)
            });
            diff.compare(Kind::Store, &prev.stores, &next.stores, |_, old, new| {
                settings_if(old != new)
            });
        }

        diff.find_successors(next, selection, previous.is_none());
        diff
    }

    /// Fills `renamed` from the `renamed_from` of `next`: for the components removed, or,
    /// on the `first` generation, for every one.
    fn find_successors(&mut self, next: &FlowSet, selection: &Selection, first: bool) {
        let subscribers = next
            .subscribers
            .iter()
            .filter(|(_, c)| selection.runs_subscriber(c))
            .map(|(name, c)| (Kind::Subscriber, name, &c.renamed_from));
        let relays = (next.relays.iter()).map(|(name, c)| (Kind::Relay, name, &c.renamed_from));
        let queues = (next.queues.iter()).map(|(name, c)| (Kind::Queue, name, &c.renamed_from));
        for (kind, name, old) in subscribers.chain(relays).chain(queues) {
            let Some(old) = old else { continue };
            let old = ComponentKey::new(kind, old.as_str());
            if first || self.removed.contains(&old) {
                self.renamed
                    .entry(old)
                    .or_insert_with(|| ComponentKey::new(kind, name.as_str()));
            }
        }
    }

    /// True when applying the next set would change nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.swapped.is_empty()
            && self.renamed.is_empty()
    }

    /// The component that takes the backlog of `old` over, if one says `renamed_from`.
    pub fn successor(&self, old: &ComponentKey) -> Option<&ComponentKey> {
        self.renamed.get(old)
    }

    /// The components of `kind` that start (or are declared): added or changed, by name.
    pub fn added_or_changed(&self, kind: Kind) -> impl Iterator<Item = &ComponentKey> {
        self.added
            .union(&self.changed)
            .filter(move |key| key.kind == kind)
    }

    /// The components of `kind` that stop: changed or removed, by name.
    pub fn changed_or_removed(&self, kind: Kind) -> impl Iterator<Item = &ComponentKey> {
        self.changed
            .union(&self.removed)
            .filter(move |key| key.kind == kind)
    }

    /// Sorts each component of one kind into added, changed, swapped or removed.
    fn compare<T>(
        &mut self,
        kind: Kind,
        previous: &BTreeMap<String, T>,
        next: &BTreeMap<String, T>,
        change: impl Fn(&str, &T, &T) -> Change,
    ) {
        for (name, new) in next {
            let key = ComponentKey::new(kind, name.as_str());
            match previous.get(name) {
                None => {
                    self.added.insert(key);
                }
                Some(old) => match change(name, old, new) {
                    Change::Same => {}
                    Change::Code => {
                        self.swapped.insert(key);
                    }
                    Change::Settings => {
                        self.changed.insert(key);
                    }
                },
            }
        }
        for name in previous.keys().filter(|name| !next.contains_key(*name)) {
            self.removed.insert(ComponentKey::new(kind, name.as_str()));
        }
    }
}

fn settings_if(differs: bool) -> Change {
    if differs {
        Change::Settings
    } else {
        Change::Same
    }
}

/// Equal apart from the script's text (a text-only change swaps code in place).
fn same_settings(a: &SubscriberConfig, b: &SubscriberConfig) -> bool {
    let strip = |c: &SubscriberConfig| {
        let mut c = c.clone();
        if let Some(s) = &mut c.script {
            s.text = Arc::from("");
        }
        c
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use indoc::indoc;
    use tempfile::TempDir;

    use super::*;

    /// A folder holding one flow file and its scripts, loaded again after each edit (the
    /// same paths, as a reload sees them).
    struct Dir(TempDir);

    impl Dir {
        fn new() -> Dir {
            Dir(TempDir::new().expect("temp dir"))
        }

        fn write(&self, name: &str, text: &str) {
            let path = self.0.path().join(name);
            std::fs::write(path, text).expect("write file");
        }

        /// Writes `toml` as the flow file and loads it (it must be valid).
        fn flows(&self, toml: &str) -> FlowSet {
            self.write("flow.toml", toml);
            let path = self.0.path().join("flow.toml");
            match crate::flow::load(&[path]) {
                Ok(loaded) => loaded.flows,
                Err(report) => panic!("{}", crate::flow::diagnostic::render(&report, 100)),
            }
        }
    }

    /// Every kind of component once.
    const BASE: &str = indoc! {r#"
        [flow]
        name = "diff"

        [producers.tick]
        kind = "interval"
        every = "1s"
        script = "tick.rhai"

        [subscribers.greeter]
        topic = "hello"
        script = "greeter.rhai"
        emits = ["greeted"]

        [subscribers.worker]
        queue = "tasks"
        script = "worker.rhai"

        [queues.tasks]
        delay = "1s"

        [relays.master]
        from = "master"
        to = "tasks"
        script = "relay.rhai"

        [chains.greeting]
        steps = ["hello", "greeted"]

        [topics.hello]
        retention = "1h"

        [stores.greetings]
        expose = true
    "#};

    fn dir() -> Dir {
        let dir = Dir::new();
        dir.write("tick.rhai", "emit(\"hello\", #{});\n");
        dir.write("greeter.rhai", "emit(\"greeted\", #{ v: 1 });\n");
        dir.write("worker.rhai", "let v = 1;\n");
        dir.write("relay.rhai", "event.data\n");
        dir
    }

    fn all() -> Selection {
        Selection {
            roles: Vec::new(),
            producers: true,
        }
    }

    fn diff(previous: &FlowSet, next: &FlowSet) -> FlowDiff {
        FlowDiff::between(Some(previous), next, &all(), &CodeChanges::default())
    }

    fn key(kind: Kind, name: &str) -> ComponentKey {
        ComponentKey::new(kind, name)
    }

    fn keys<const N: usize>(keys: [(Kind, &str); N]) -> BTreeSet<ComponentKey> {
        keys.into_iter()
            .map(|(kind, name)| key(kind, name))
            .collect()
    }

    #[test]
    fn identical_sets_differ_in_nothing() {
        let dir = dir();
        let flows = dir.flows(BASE);
        assert_eq!(diff(&flows, &dir.flows(BASE)), FlowDiff::default());
        assert!(diff(&flows, &flows).is_empty());
    }

    #[test]
    fn keys_show_as_table_and_name() {
        assert_eq!(
            key(Kind::Subscriber, "greeter").to_string(),
            "subscribers.greeter"
        );
        assert_eq!(key(Kind::Queue, "tasks").to_string(), "queues.tasks");
        assert_eq!(
            key(Kind::Store, "greetings").to_string(),
            "stores.greetings"
        );
    }

    #[test]
    fn the_first_generation_adds_everything_but_topics_and_stores() {
        let dir = dir();
        let next = dir.flows(BASE);
        let diff = FlowDiff::between(None, &next, &all(), &CodeChanges::default());
        assert_eq!(
            diff.added,
            keys([
                (Kind::Queue, "tasks"),
                (Kind::Subscriber, "greeter"),
                (Kind::Subscriber, "worker"),
                (Kind::Relay, "master"),
                (Kind::Chain, "greeting"),
                (Kind::Producer, "tick"),
            ])
        );
        assert!(diff.changed.is_empty() && diff.removed.is_empty() && diff.swapped.is_empty());
    }

    #[test]
    fn each_kind_is_added_and_removed() {
        let dir = dir();
        let empty = dir.flows("[flow]\nname = \"diff\"\n");
        let full = dir.flows(BASE);
        let everything = keys([
            (Kind::Queue, "tasks"),
            (Kind::Subscriber, "greeter"),
            (Kind::Subscriber, "worker"),
            (Kind::Relay, "master"),
            (Kind::Chain, "greeting"),
            (Kind::Producer, "tick"),
            (Kind::Topic, "hello"),
            (Kind::Store, "greetings"),
        ]);
        let added = diff(&empty, &full);
        assert_eq!(added.added, everything);
        assert!(added.changed.is_empty() && added.removed.is_empty());
        let removed = diff(&full, &empty);
        assert_eq!(removed.removed, everything);
        assert!(removed.added.is_empty() && removed.changed.is_empty());
    }

    #[test]
    fn each_kind_is_changed_by_its_settings() {
        let dir = dir();
        let base = dir.flows(BASE);
        let edits = [
            (
                "delay = \"1s\"",
                "delay = \"2s\"",
                key(Kind::Queue, "tasks"),
            ),
            (
                "topic = \"hello\"",
                "topics = [\"hello\", \"hi\"]",
                key(Kind::Subscriber, "greeter"),
            ),
            (
                "from = \"master\"",
                "from = \"boss\"",
                key(Kind::Relay, "master"),
            ),
            (
                "steps = [\"hello\", \"greeted\"]",
                "steps = [\"hello\", \"greeted\"]\ntimeout = \"5s\"",
                key(Kind::Chain, "greeting"),
            ),
            (
                "every = \"1s\"",
                "every = \"2s\"",
                key(Kind::Producer, "tick"),
            ),
            (
                "retention = \"1h\"",
                "retention = \"2h\"",
                key(Kind::Topic, "hello"),
            ),
            (
                "expose = true",
                "expose = false",
                key(Kind::Store, "greetings"),
            ),
        ];
        for (from, to, changed) in edits {
            let next = dir.flows(&BASE.replace(from, to));
            let diff = diff(&base, &next);
            let mut expected = BTreeSet::from([changed.clone()]);
            // A changed queue restarts whatever reads it or feeds it.
            if changed.kind == Kind::Queue {
                expected.extend(keys([
                    (Kind::Subscriber, "worker"),
                    (Kind::Relay, "master"),
                ]));
            }
            assert_eq!(diff.changed, expected, "{from} → {to}");
            assert!(
                diff.added.is_empty() && diff.removed.is_empty() && diff.swapped.is_empty(),
                "{from} → {to}: {diff:#?}"
            );
        }
    }

    #[test]
    fn a_subscriber_group_is_a_setting() {
        let dir = dir();
        let base = dir.flows(BASE);
        let next = dir.flows(&BASE.replace(
            "emits = [\"greeted\"]",
            "emits = [\"greeted\"]\ngroup = \"greeters\"",
        ));
        assert_eq!(
            diff(&base, &next).changed,
            keys([(Kind::Subscriber, "greeter")])
        );
    }

    #[test]
    fn a_script_edit_swaps_a_subscriber_and_restarts_relays_and_producers() {
        let dir = dir();
        let base = dir.flows(BASE);
        dir.write("greeter.rhai", "emit(\"greeted\", #{ v: 2 });\n");
        let swapped = diff(&base, &dir.flows(BASE));
        assert_eq!(swapped.swapped, keys([(Kind::Subscriber, "greeter")]));
        assert!(swapped.changed.is_empty() && swapped.added.is_empty());

        let base = dir.flows(BASE);
        dir.write("relay.rhai", "#{ relayed: true }\n");
        dir.write("tick.rhai", "emit(\"hello\", #{ n: 2 });\n");
        let restarted = diff(&base, &dir.flows(BASE));
        assert_eq!(
            restarted.changed,
            keys([(Kind::Relay, "master"), (Kind::Producer, "tick")])
        );
        assert!(restarted.swapped.is_empty());
    }

    #[test]
    fn a_changed_import_marks_the_scripts_that_import_it() {
        let dir = dir();
        let flows = dir.flows(BASE);
        let code = CodeChanges {
            imports: keys([
                (Kind::Subscriber, "greeter"),
                (Kind::Relay, "master"),
                (Kind::Producer, "tick"),
            ]),
            unsure: false,
        };
        let diff = FlowDiff::between(Some(&flows), &flows, &all(), &code);
        assert_eq!(diff.swapped, keys([(Kind::Subscriber, "greeter")]));
        assert_eq!(
            diff.changed,
            keys([(Kind::Relay, "master"), (Kind::Producer, "tick")])
        );
    }

    #[test]
    fn unsure_code_resends_every_subscriber_and_restarts_every_producer() {
        let dir = dir();
        let flows = dir.flows(BASE);
        let code = CodeChanges {
            imports: BTreeSet::new(),
            unsure: true,
        };
        let diff = FlowDiff::between(Some(&flows), &flows, &all(), &code);
        assert_eq!(
            diff.swapped,
            keys([(Kind::Subscriber, "greeter"), (Kind::Subscriber, "worker")])
        );
        assert_eq!(diff.changed, keys([(Kind::Producer, "tick")]));
    }

    #[test]
    fn renamed_from_names_the_successor_of_a_removed_component() {
        let dir = dir();
        let base = dir.flows(BASE);
        let renamed = BASE
            .replace(
                "[subscribers.greeter]",
                "[subscribers.welcomer]\nrenamed_from = \"greeter\"",
            )
            .replace("[queues.tasks]", "[queues.jobs]\nrenamed_from = \"tasks\"")
            .replace("to = \"tasks\"", "to = \"jobs\"")
            .replace("queue = \"tasks\"", "queue = \"jobs\"")
            .replace(
                "[relays.master]",
                "[relays.boss]\nrenamed_from = \"master\"",
            );
        let diff = diff(&base, &dir.flows(&renamed));
        assert_eq!(
            diff.renamed,
            BTreeMap::from([
                (key(Kind::Queue, "tasks"), key(Kind::Queue, "jobs")),
                (
                    key(Kind::Subscriber, "greeter"),
                    key(Kind::Subscriber, "welcomer")
                ),
                (key(Kind::Relay, "master"), key(Kind::Relay, "boss")),
            ])
        );
        assert_eq!(
            diff.successor(&key(Kind::Relay, "master")),
            Some(&key(Kind::Relay, "boss"))
        );
        assert_eq!(
            diff.removed,
            keys([
                (Kind::Queue, "tasks"),
                (Kind::Subscriber, "greeter"),
                (Kind::Relay, "master"),
            ])
        );
        assert_eq!(
            diff.added,
            keys([
                (Kind::Queue, "jobs"),
                (Kind::Subscriber, "welcomer"),
                (Kind::Relay, "boss"),
            ])
        );
        // The worker reads the queue under its new name: a new setting.
        assert_eq!(diff.changed, keys([(Kind::Subscriber, "worker")]));
    }

    #[test]
    fn on_the_first_generation_every_renamed_from_is_a_successor() {
        let dir = dir();
        let next = dir.flows(&BASE.replace(
            "[subscribers.greeter]",
            "[subscribers.welcomer]\nrenamed_from = \"greeter\"",
        ));
        let diff = FlowDiff::between(None, &next, &all(), &CodeChanges::default());
        assert_eq!(
            diff.renamed,
            BTreeMap::from([(
                key(Kind::Subscriber, "greeter"),
                key(Kind::Subscriber, "welcomer")
            )])
        );
        // Later, a rename whose former name is not removed names no successor.
        assert!(
            FlowDiff::between(Some(&next), &next, &all(), &CodeChanges::default())
                .renamed
                .is_empty()
        );
    }

    #[test]
    fn roles_select_subscribers_and_producers() {
        let dir = dir();
        let with_roles = BASE
            .replace(
                "emits = [\"greeted\"]",
                "emits = [\"greeted\"]\nrole = \"command\"",
            )
            .replace("every = \"1s\"", "every = \"1s\"\nrole = \"query\"");
        let next = dir.flows(&with_roles);
        let selected = |roles: &[&str], producers: bool| {
            let selection = Selection {
                roles: roles.iter().map(|r| r.to_string()).collect(),
                producers,
            };
            let diff = FlowDiff::between(None, &next, &selection, &CodeChanges::default());
            diff.added
                .into_iter()
                .filter(|k| matches!(k.kind, Kind::Subscriber | Kind::Producer))
                .collect::<BTreeSet<_>>()
        };
        // A subscriber without a role runs only when no role is selected; a producer
        // without one runs wherever producers run.
        assert_eq!(
            selected(&["command"], true),
            keys([(Kind::Subscriber, "greeter")])
        );
        assert_eq!(selected(&["query"], true), keys([(Kind::Producer, "tick")]));
        assert_eq!(
            selected(&[], true),
            keys([
                (Kind::Subscriber, "greeter"),
                (Kind::Subscriber, "worker"),
                (Kind::Producer, "tick"),
            ])
        );
        assert_eq!(
            selected(&[], false),
            keys([(Kind::Subscriber, "greeter"), (Kind::Subscriber, "worker")])
        );

        // A subscriber outside the selection is neither started nor stopped.
        let selection = Selection {
            roles: vec!["query".to_owned()],
            producers: true,
        };
        let without = dir.flows(BASE);
        let diff = FlowDiff::between(Some(&without), &next, &selection, &CodeChanges::default());
        assert!(
            diff.removed.iter().all(|k| k.kind != Kind::Subscriber),
            "{diff:#?}"
        );
    }
}
