//! What operators read from a running `edaflow run`: the admin listener (`--admin`, probes
//! and metrics only, with no `http` producer in the flow), the Prometheus text format of
//! `/metrics` checked line by line, and the Grafana dashboard's JSON.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{http, Edaflow, FlowDir, Reply, Running};

const WITHIN: Duration = Duration::from_secs(15);

/// A flow with no `http` producer: a clock and a handler.
const TICKING: &str = r#"
[flow]
name = "ticking"

[producers.clock]
kind = "interval"
every = "50ms"
topic = "tick"

[subscribers.count]
topic = "tick"
script = "count.rhai"

[queues.later]
delay = "1h"

[subscribers.later]
queue = "later"
script = "count.rhai"
"#;

fn get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, &[], b"")
}

/// `edaflow run` of `TICKING` with `--admin 127.0.0.1:0`, and the admin listener's address.
fn run_ticking(dir: &FlowDir) -> (Running, SocketAddr) {
    dir.write("flow.toml", TICKING);
    dir.write("count.rhai", "let n = event.data;\n");
    let mut running = Edaflow::new(dir.root())
        .args(["run", "flow.toml", "--no-watch", "--admin", "127.0.0.1:0"])
        .spawn();
    let addr = running.find_in_stderr("the admin listener's address", WITHIN, |line| {
        let (_, rest) = line.split_once("admin (probes and metrics) at http://")?;
        rest.split('/').next()?.parse().ok()
    });
    (running, addr)
}

#[test]
fn admin_serves_probes_and_metrics_without_an_http_producer() {
    let dir = FlowDir::new();
    let (mut running, addr) = run_ticking(&dir);
    assert_eq!(get(addr, "/livez").status, 200);
    assert_eq!(get(addr, "/healthz").status, 200);
    running.wait("/readyz 200", WITHIN, |_| {
        get(addr, "/readyz").status == 200
    });
    running.wait("the clock's events counted", WITHIN, |_| {
        get(addr, "/metrics")
            .body
            .contains("edaflow_subscriber_handled_total{subscriber=\"count\"}")
    });
    let metrics = get(addr, "/metrics");
    assert_eq!(metrics.status, 200, "{metrics:?}");
    let types = assert_prometheus_text(&metrics.body);
    let expected = [
        ("edaflow_build_info", "gauge"),
        ("edaflow_handler_duration_seconds", "histogram"),
        ("edaflow_chain_duration_seconds", "summary"),
        ("edaflow_queue_depth", "gauge"),
        ("edaflow_queue_in_flight", "gauge"),
        ("edaflow_buffer_depth", "gauge"),
        ("edaflow_in_flight", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ];
    for (family, kind) in expected {
        if family.starts_with("process_") && !cfg!(target_os = "linux") {
            continue;
        }
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "{family} in:\n{}",
            metrics.body
        );
    }
    let lines: Vec<&str> = metrics.body.lines().collect();
    let version = format!(
        "edaflow_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(lines.contains(&version.as_str()), "{}", metrics.body);
    assert!(
        lines.contains(&"edaflow_queue_depth{queue=\"later\"} 0"),
        "{}",
        metrics.body
    );
    let value = |name: &str| -> f64 {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{}", metrics.body))
    };
    if cfg!(target_os = "linux") {
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 600.0,
            "started at {started}, now {now}"
        );
    }
    // Nothing else: no console, no ingest, no admin changes, no tail.
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/tail"),
        ("GET", "/chains"),
        ("GET", "/admin/dead"),
        ("POST", "/admin/reload"),
        ("POST", "/topics/tick"),
    ] {
        let reply = http(addr, method, path, &[], b"");
        assert_eq!(reply.status, 404, "{method} {path}: {reply:?}");
    }
}

#[test]
fn the_format_check_refuses_what_prometheus_would() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\"} 1\n";
    assert_eq!(assert_prometheus_text(good)["a_total"], "counter");
    for bad in [
        // A sample before its TYPE.
        "a_total 1\n",
        // TYPE without HELP.
        "# TYPE a_total counter\na_total 1\n",
        // A counter without `_total`.
        "# HELP a A.\n# TYPE a counter\na 1\n",
        // A bad name, a bad label name, a bad value.
        "# HELP 1a A.\n# TYPE 1a gauge\n1a 1\n",
        "# HELP a A.\n# TYPE a gauge\na{1x=\"v\"} 1\n",
        "# HELP a A.\n# TYPE a gauge\na one\n",
        // A histogram bucket without `le`.
        "# HELP h A.\n# TYPE h histogram\nh_bucket{x=\"1\"} 1\n",
        // A family declared twice.
        "# HELP a A.\n# TYPE a gauge\n# HELP a A.\n# TYPE a gauge\n",
    ] {
        let refused = std::panic::catch_unwind(|| assert_prometheus_text(bad)).is_err();
        assert!(refused, "accepted {bad:?}");
    }
}

/// Checks `text` as the Prometheus text format (0.0.4): every sample's family has its
/// `# HELP` and `# TYPE` before its first sample, names and label names are well formed,
/// values are numbers, counters end in `_total`, histograms have `_bucket` (with `le`),
/// `_sum` and `_count`, and no family is declared twice. Returns each family's type.
fn assert_prometheus_text(text: &str) -> BTreeMap<String, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped: Vec<String> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            assert!(is_metric_name(name), "bad name, {}", at());
            assert!(!helped.iter().any(|h| h == name), "HELP twice, {}", at());
            helped.push(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap_or("");
            let kind = parts.next().unwrap_or("");
            assert!(is_metric_name(name), "bad name, {}", at());
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type, {}",
                at()
            );
            assert!(
                helped.last().is_some_and(|h| h == name),
                "TYPE without HELP just before, {}",
                at()
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice, {}",
                at()
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total, {}", at());
            }
            continue;
        }
        assert!(!line.starts_with('#'), "a stray comment, {}", at());
        let (name, labels, value) = split_sample(line).unwrap_or_else(|| panic!("{}", at()));
        assert!(is_metric_name(name), "bad name, {}", at());
        for (label, _) in &labels {
            assert!(is_label_name(label), "bad label name, {}", at());
        }
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value, {}",
            at()
        );
        let family = family_of(name, &types).unwrap_or_else(|| panic!("no TYPE yet, {}", at()));
        if types[family] == "histogram" {
            let suffix = &name[family.len()..];
            assert!(
                ["_bucket", "_sum", "_count"].contains(&suffix),
                "histogram sample, {}",
                at()
            );
            if suffix == "_bucket" {
                assert!(labels.iter().any(|(l, _)| l == "le"), "no le, {}", at());
            }
        } else if types[family] != "summary" {
            assert_eq!(name, family, "sample of another family, {}", at());
        }
    }
    types
}

/// The family a sample belongs to: its own name, or a histogram's or summary's.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| {
            types
                .get(*base)
                .is_some_and(|t| t == "histogram" || t == "summary")
        })
}

/// A sample's labels, as names and unescaped values.
type Labels = Vec<(String, String)>;

/// A sample line as name, labels and value (`None` when it is not one).
fn split_sample(line: &str) -> Option<(&str, Labels, &str)> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = inner.split_once("=\"")?;
            let mut value = String::new();
            let mut escaped = false;
            let mut end = None;
            for (i, c) in after.char_indices() {
                match (escaped, c) {
                    (true, 'n') => {
                        value.push('\n');
                        escaped = false;
                    }
                    (true, '\\' | '"') => {
                        value.push(c);
                        escaped = false;
                    }
                    (true, _) => return None,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i + 1);
                        break;
                    }
                    (false, _) => value.push(c),
                }
            }
            labels.push((label.to_owned(), value));
            inner = &after[end?..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let value = rest.strip_prefix(' ')?.split(' ').next()?;
    Some((name, labels, value))
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[test]
fn the_grafana_dashboard_is_json_on_documented_metrics() {
    let root = common::crate_root();
    let text = std::fs::read_to_string(root.join("docs/grafana/edaflow.json"))
        .expect("read docs/grafana/edaflow.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let documented =
        std::fs::read_to_string(root.join("docs/metrics.md")).expect("read docs/metrics.md");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut used = Vec::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().expect("a title");
        assert!(
            panel["gridPos"]["w"].as_u64().is_some(),
            "{title}: no gridPos"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("an expr");
            for name in metric_names(expr) {
                let family = name.strip_suffix("_bucket").unwrap_or(name);
                assert!(
                    documented.contains(&format!("`{family}`")),
                    "{title}: {family} is not in docs/metrics.md"
                );
                used.push(family.to_owned());
            }
        }
    }
    for family in [
        "edaflow_topic_events_in_total",
        "edaflow_subscriber_handled_total",
        "edaflow_handler_duration_seconds",
        "edaflow_handler_errors_total",
        "edaflow_dead_letters_total",
        "edaflow_queue_depth",
        "edaflow_in_flight",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(used.iter().any(|u| u == family), "no panel on {family}");
    }
}

/// The `edaflow_…` and `process_…` names a PromQL expression reads.
fn metric_names(expr: &str) -> Vec<&str> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    expr.split(|c: char| !is_name_char(c))
        .filter(|word| word.starts_with("edaflow_") || word.starts_with("process_"))
        .collect()
}
