//! `edaflow tail`: streams `GET /tail?pattern=P` from a running instance and prints each
//! event as it arrives (one line each, or its CloudEvents JSON with `--json`), until the
//! server ends the stream or Ctrl-C.

use super::signals::shutdown_signal;
use super::{render, Error};
use crate::cli::Remote;
use crate::client::{percent_encode, Target};
use crate::event::Event;

/// `edaflow tail [PATTERN]`.
pub(super) async fn tail(pattern: &str, json: bool, remote: &Remote) -> Result<(), Error> {
    let target = Target::parse(&remote.url, remote.token.clone())?;
    let path = format!("/tail?pattern={}", percent_encode(pattern));
    let mut pending = Vec::new();
    let stream = target.stream(&path, |chunk| {
        pending.extend_from_slice(chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            if json {
                println!("{text}");
            } else if let Ok(event) = serde_json::from_str::<Event>(text) {
                print!("{}", render::tail_line(&event));
            }
        }
    });
    tokio::select! {
        result = stream => result?,
        _ = shutdown_signal() => {}
    }
    Ok(())
}
