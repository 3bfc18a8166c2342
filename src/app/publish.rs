//! `edaflow publish` and `edaflow query`: send JSON to a running instance's HTTP producer
//! and print its answer (the new event's id, or the query's reply). The JSON is checked
//! here, before anything is sent.

use std::io::BufRead;

use bytes::Bytes;

use super::Error;
use crate::cli::Remote;
use crate::client::Target;

/// `edaflow publish TOPIC JSON`, or one event per stdin line with `-`.
pub(super) async fn publish(topic: &str, data: &str, remote: &Remote) -> Result<(), Error> {
    let target = Target::parse(&remote.url, remote.token.clone())?;
    let path = format!("/topics/{topic}");
    let send = |body: String| {
        let target = target.clone();
        let path = path.clone();
        async move {
            let answer = target
                .call("POST", &path, Some("application/json"), Bytes::from(body))
                .await?;
            let id = serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
                .unwrap_or_default();
            println!("{id}");
            Ok::<(), Error>(())
        }
    };
    if data != "-" {
        serde_json::from_str::<serde_json::Value>(data)
            .map_err(|source| Error::BadJson { line: 1, source })?;
        return send(data.to_owned()).await;
    }
    let stdin = std::io::stdin();
    for (i, line) in stdin.lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        serde_json::from_str::<serde_json::Value>(&line).map_err(|source| Error::BadJson {
            line: i + 1,
            source,
        })?;
        send(line).await?;
    }
    Ok(())
}

/// `edaflow query TOPIC JSON`.
pub(super) async fn query(topic: &str, data: &str, remote: &Remote) -> Result<(), Error> {
    serde_json::from_str::<serde_json::Value>(data)
        .map_err(|source| Error::BadJson { line: 1, source })?;
    let target = Target::parse(&remote.url, remote.token.clone())?;
    let answer = target
        .call(
            "POST",
            &format!("/query/{topic}"),
            Some("application/json"),
            Bytes::from(data.to_owned()),
        )
        .await?;
    println!("{}", String::from_utf8_lossy(&answer));
    Ok(())
}
