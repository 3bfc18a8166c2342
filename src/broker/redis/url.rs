//! Broker URLs: which broker `edaflow run` uses, and a Redis URL that never shows its
//! password (in logs, errors or `Debug`).
//!
//! `redis://` is plain TCP; `rediss://` is TLS (rustls), verifying the server against the
//! system's roots, or against a private CA given with `--redis-ca`. A Redis Cluster may be
//! given several seed nodes, comma-separated where the host goes
//! (`redis://:pw@10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000`): each seed gets the URL's
//! credentials, database and TLS settings, and the first that answers is asked where the
//! namespace's slot lives. The redis crate's
//! `#insecure` fragment (`rediss://host:6380/#insecure`) turns verification off: for
//! tests only.

use std::fmt;

use crate::broker::BrokerError;

/// The broker a process runs on.
#[derive(Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// The embedded in-memory broker (`memory`).
    Memory,
    /// A Redis server (`redis://[:password@]host:port/db`, or `rediss://` for TLS).
    Redis(RedisUrl),
}

impl BrokerUrl {
    /// Parses `memory` or a `redis://` / `rediss://` URL.
    ///
    /// # Errors
    /// `BrokerError::BadUrl` (showing the URL with its password hidden).
    pub fn parse(text: &str) -> Result<BrokerUrl, BrokerError> {
        let text = text.trim();
        if text == "memory" {
            return Ok(BrokerUrl::Memory);
        }
        RedisUrl::parse(text).map(BrokerUrl::Redis)
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Memory => f.write_str("memory"),
            BrokerUrl::Redis(url) => url.fmt(f),
        }
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A `redis://` or `rediss://` URL. `Display` and `Debug` show it with the password replaced
/// by `***`; only the connection code reads the seeds' full URLs.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    redacted: String,
    /// One full URL per seed node (one for a URL with a single host), all of one scheme.
    seeds: Vec<String>,
}

impl RedisUrl {
    /// Parses `redis://[[user]:password@]host[:port][/db]`, or the same with `rediss://`
    /// (TLS, optionally ending in `#insecure`); `host[:port]` may be a comma-separated list
    /// of a cluster's seed nodes.
    ///
    /// # Errors
    /// `BrokerError::BadUrl` for another scheme or a URL the Redis client cannot read.
    pub fn parse(text: &str) -> Result<RedisUrl, BrokerError> {
        let redacted = redact(text);
        let bad = || BrokerError::BadUrl {
            url: redacted.clone(),
        };
        let rest = text
            .strip_prefix("redis://")
            .or_else(|| text.strip_prefix("rediss://"))
            .ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        let seeds = seeds_of(text).ok_or_else(bad)?;
        // The client's own parser decides the rest; its error text is not shown, since it
        // could quote the URL.
        for seed in &seeds {
            redis::Client::open(seed.as_str()).map_err(|_| bad())?;
        }
        Ok(RedisUrl { redacted, seeds })
    }

    /// True for `rediss://` (TLS).
    pub fn is_tls(&self) -> bool {
        self.seeds[0].starts_with("rediss://")
    }

    /// True when the server runs on this machine: a loopback address or `localhost`. Such
    /// a Redis competes with edaflow for the same cores (see `app::runtime_threads`).
    pub fn is_local(&self) -> bool {
        self.seeds.iter().all(|seed| is_local(seed))
    }

    /// One URL with its password per seed node, in the order given (one for a single
    /// host): for the connection only.
    pub(crate) fn seeds(&self) -> &[String] {
        &self.seeds
    }
}

/// Is the server of this single-host URL on this machine?
fn is_local(text: &str) -> bool {
    let Ok(client) = redis::Client::open(text) else {
        return false;
    };
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. } => {
            host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        redis::ConnectionAddr::Unix(_) => true,
        // A kind of address this version does not know of: not known to be here.
        _ => false,
    }
}

/// One URL per host of a comma-separated host list (the whole URL when it names one host),
/// each with the URL's scheme, credentials, path and fragment; `None` for an empty host.
fn seeds_of(text: &str) -> Option<Vec<String>> {
    let (scheme, rest) = text.split_once("://")?;
    let at = rest.rfind('@');
    let host_start = at.map_or(0, |a| a + 1);
    let host_end = rest[host_start..]
        .find(['/', '?', '#'])
        .map_or(rest.len(), |i| host_start + i);
    let hosts = &rest[host_start..host_end];
    if !hosts.contains(',') {
        return Some(vec![text.to_owned()]);
    }
    let (userinfo, tail) = (&rest[..host_start], &rest[host_end..]);
    hosts
        .split(',')
        .map(|host| {
            let host = host.trim();
            (!host.is_empty()).then(|| format!("{scheme}://{userinfo}{host}{tail}"))
        })
        .collect()
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted)
    }
}

/// A broker URL as written (`--broker`, `EDAFLOW_BROKER` or `[flow] broker`), before it is
/// parsed: `Debug` and `Display` show it with its password replaced by `***`, and only
/// `expose` gives it whole. Any text is accepted; `BrokerUrl::parse` judges it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL with its password, for `BrokerUrl::parse` only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretUrl {
    fn from(text: String) -> SecretUrl {
        SecretUrl(text)
    }
}

impl std::str::FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<SecretUrl, Self::Err> {
        Ok(SecretUrl(text.to_owned()))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", redact(&self.0))
    }
}

/// `scheme://user:secret@host` -> `scheme://user:***@host`; text without credentials is
/// returned unchanged.
fn redact(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        // Not a URL; it may still hold a secret, so show only its shape.
        return if text.contains('@') {
            "***".to_owned()
        } else {
            text.to_owned()
        };
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***{host}{path}")
        }
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_as_written_never_shows_its_password() {
        let url: SecretUrl = "redis://:hunter2@10.0.0.1:6379/0"
            .parse()
            .expect("any text");
        assert_eq!(url.to_string(), "redis://:***@10.0.0.1:6379/0");
        assert_eq!(
            format!("{:?}", Some(&url)),
            "Some(SecretUrl(redis://:***@10.0.0.1:6379/0))"
        );
        assert_eq!(url.expose(), "redis://:hunter2@10.0.0.1:6379/0");
        let odd = SecretUrl::from("hunter2@somewhere".to_owned());
        assert!(!format!("{odd} {odd:?}").contains("hunter2"));
        assert_eq!(SecretUrl::from("memory".to_owned()).to_string(), "memory");
    }

    #[test]
    fn passwords_never_show() {
        let url = RedisUrl::parse("redis://:hunter2@127.0.0.1:6380/2").expect("valid");
        assert_eq!(url.to_string(), "redis://:***@127.0.0.1:6380/2");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(url.seeds(), ["redis://:hunter2@127.0.0.1:6380/2"]);
        let user = RedisUrl::parse("redis://app:hunter2@host/0").expect("valid");
        assert_eq!(user.to_string(), "redis://app:***@host/0");
        let plain = RedisUrl::parse("redis://127.0.0.1:6379").expect("valid");
        assert_eq!(plain.to_string(), "redis://127.0.0.1:6379");
        assert!(!plain.is_tls());
    }

    #[test]
    fn several_seed_nodes_share_the_credentials_and_the_rest() {
        let url = RedisUrl::parse(
            "rediss://app:hunter2@10.0.0.1:7000, 10.0.0.2:7001,[::1]:7002/0#insecure",
        )
        .expect("valid");
        assert_eq!(
            url.seeds(),
            [
                "rediss://app:hunter2@10.0.0.1:7000/0#insecure",
                "rediss://app:hunter2@10.0.0.2:7001/0#insecure",
                "rediss://app:hunter2@[::1]:7002/0#insecure",
            ]
        );
        assert!(!url.to_string().contains("hunter2"), "{url}");
        assert!(!url.is_local(), "two of the three are elsewhere");
        let local = RedisUrl::parse("redis://127.0.0.1:7000,localhost:7001").expect("valid");
        assert_eq!(local.seeds().len(), 2);
        assert!(local.is_local());
        for bad in ["redis://a:1,,b:2", "redis://a:1,", "redis://:pw@,b:2/0"] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_server_on_this_machine_is_told_apart() {
        for local in [
            "redis://127.0.0.1:6379",
            "redis://127.1.2.3",
            "redis://localhost:6380/1",
            "redis://:pw@LOCALHOST",
            "redis://[::1]:6379",
            "rediss://127.0.0.1:6380/#insecure",
        ] {
            assert!(RedisUrl::parse(local).expect("valid").is_local(), "{local}");
        }
        for remote in [
            "redis://10.0.0.5:6379",
            "redis://redis.example",
            "rediss://:pw@cache.internal:6380/0",
            "redis://[2001:db8::1]:6379",
        ] {
            assert!(
                !RedisUrl::parse(remote).expect("valid").is_local(),
                "{remote}"
            );
        }
    }

    #[test]
    fn tls_urls_parse_and_hide_their_password() {
        let url = RedisUrl::parse("rediss://:hunter2@redis.example:6380/0").expect("valid");
        assert!(url.is_tls());
        assert_eq!(url.to_string(), "rediss://:***@redis.example:6380/0");
        let insecure =
            RedisUrl::parse("rediss://:hunter2@127.0.0.1:6380/#insecure").expect("valid");
        assert_eq!(
            insecure.to_string(),
            "rediss://:***@127.0.0.1:6380/#insecure"
        );
        assert!(!format!("{insecure:?}").contains("hunter2"));
    }

    #[test]
    fn bad_urls_are_reported_redacted() {
        for text in [
            "http://:hunter2@host",
            "redis://",
            "rediss://",
            "rediss://:hunter2@host:6380/#sloppy",
            "redis:/:hunter2@host",
        ] {
            match BrokerUrl::parse(text) {
                Err(e @ BrokerError::BadUrl { .. }) => {
                    assert!(!e.to_string().contains("hunter2"), "{e}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert_eq!(BrokerUrl::parse("memory").ok(), Some(BrokerUrl::Memory));
    }
}
