//! `edaflow tail`: streams `GET /tail?pattern=P` from a running instance and prints each
//! event as it arrives (one line each, or its CloudEvents JSON with `--json`), until the
//! server ends the stream or Ctrl-C. A line that is not an event ends it with an error.

use super::signals::shutdown_signal;
use super::{render, Error};
use crate::cli::Remote;
use crate::client::{decode, percent_encode};
use crate::event::Event;

/// `edaflow tail [PATTERN]`.
pub(super) async fn tail(pattern: &str, json: bool, remote: &Remote) -> Result<(), Error> {
    let target = remote.target()?;
    let path = format!("/tail?pattern={}", percent_encode(pattern));
    let request = target.describe("GET", &path);
    let mut pending = Vec::new();
    let stream = target.stream(&path, |chunk| {
        pending.extend_from_slice(chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            print_line(&line, json, &request)?;
        }
        Ok::<(), Error>(())
    });
    tokio::select! {
        result = stream => result?,
        _ = shutdown_signal() => return Ok(()),
    }
    // A last line without its newline is a line all the same.
    print_line(&pending, json, &request)
}

/// Prints one line of the stream, once it has read as an event.
fn print_line(line: &[u8], json: bool, request: &str) -> Result<(), Error> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    if text.is_empty() {
        return Ok(());
    }
    let event: Event = decode(request, "one CloudEvent JSON per line", text.as_bytes())?;
    if json {
        render::emit(&format!("{text}\n"))
    } else {
        render::emit(&render::tail_line(&event))
    }
}
