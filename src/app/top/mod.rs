//! `edaflow top`: a live view of a running instance, polled from its `GET /stats` (the
//! HTTP producer, `--console` or `--admin` listener) every `--interval`. Rates are drawn
//! here from successive samples (`sample`); `frame` lays them out.
//!
//! On a terminal it redraws in place on the alternate screen with the cursor hidden, at
//! the terminal's width, and restores the screen on exit, Ctrl-C or an error. Plain ANSI
//! sequences do this (every terminal edaflow runs in understands them) and
//! `terminal_size` reads the size, so no terminal crate is built for it. With `--once`,
//! or when stdout is not a terminal, it prints one plain frame after two samples (so
//! that rates exist) and exits.
//!
//! The first sample must succeed: an instance that cannot be reached is an error (exit 1).
//! A later failure is shown in the frame and polling goes on, as the instance may be
//! restarting.

mod frame;
mod sample;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use super::signals::shutdown_signal;
use super::{render, Error};
use crate::cli::Remote;
use crate::client::{ClientError, Target};
use frame::Frame;
use sample::{Sample, View};

/// What `edaflow top` was asked for.
pub(super) struct TopArgs<'a> {
    pub remote: &'a Remote,
    pub interval: Duration,
    pub once: bool,
}

/// `edaflow top`.
pub(super) async fn top(args: TopArgs<'_>) -> Result<(), Error> {
    let target = args.remote.target()?;
    let first = poll(&target).await?;
    if args.once || !std::io::stdout().is_terminal() {
        tokio::time::sleep(args.interval).await;
        let second = poll(&target).await?;
        let view = View::of(Some(&first), second);
        let frame = Frame {
            url: &args.remote.url,
            width: columns(),
            problem: None,
        };
        let mut text = frame.render(&view).join("\n");
        text.push('\n');
        return render::emit(&text);
    }
    let screen = Screen::enter().map_err(|source| Error::Stdout { source })?;
    let result = tokio::select! {
        result = live(&screen, &target, args.remote.url.as_str(), args.interval, first) => result,
        _ = shutdown_signal() => Ok(()),
    };
    drop(screen);
    result
}

/// Redraws every `interval` (and at once when the terminal is resized) until cancelled.
async fn live(
    screen: &Screen,
    target: &Target,
    url: &str,
    interval: Duration,
    first: Sample,
) -> Result<(), Error> {
    let mut before: Option<Sample> = None;
    let mut now = first;
    let mut problem: Option<String> = None;
    let mut resized = Resize::listen();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        let view = View::of(before.as_ref(), now.clone());
        let (width, height) = screen.size();
        let frame = Frame {
            url,
            width: Some(width),
            problem: problem.as_deref(),
        };
        screen
            .draw(&frame.render(&view), height)
            .map_err(|source| Error::Stdout { source })?;
        tokio::select! {
            _ = ticks.tick() => {}
            () = resized.next() => continue,
        }
        match poll(target).await {
            Ok(sample) => {
                before = Some(std::mem::replace(&mut now, sample));
                problem = None;
            }
            Err(e) => {
                problem = Some(format!(
                    "{e}; retrying every {}",
                    crate::duration::format_duration(interval)
                ))
            }
        }
    }
}

/// One `GET /stats`.
async fn poll(target: &Target) -> Result<Sample, ClientError> {
    target
        .call_json("GET", "/stats", None, "the JSON figures of GET /stats")
        .await
}

/// The width of a plain frame: `COLUMNS`, else the terminal's, else no limit.
fn columns() -> Option<usize> {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .or_else(|| terminal_size::terminal_size().map(|(w, _)| usize::from(w.0)))
}

/// The terminal while top draws on it: the alternate screen with the cursor hidden,
/// restored when dropped (on every way out of `top`, a panic's unwinding included).
struct Screen;

/// Switch to the alternate screen and hide the cursor.
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
/// Show the cursor and go back to the normal screen.
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        let mut out = std::io::stdout().lock();
        out.write_all(ENTER.as_bytes())?;
        out.flush()?;
        Ok(Screen)
    }

    /// Columns and rows, 80×24 when the terminal does not say.
    fn size(&self) -> (usize, usize) {
        terminal_size::terminal_size().map_or((80, 24), |(w, h)| {
            (usize::from(w.0).max(1), usize::from(h.0).max(1))
        })
    }

    /// Draws `lines` from the top left, at most `height` of them, clearing what the last
    /// frame left beyond them.
    fn draw(&self, lines: &[String], height: usize) -> std::io::Result<()> {
        let mut text = String::from("\x1b[H");
        for (i, line) in lines.iter().take(height).enumerate() {
            if i > 0 {
                text.push_str("\r\n");
            }
            text.push_str(line);
            text.push_str("\x1b[K");
        }
        text.push_str("\x1b[J");
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(LEAVE.as_bytes());
        let _ = out.flush();
    }
}

/// Terminal resizes (SIGWINCH), so a frame is redrawn at the new size at once.
struct Resize {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Resize {
    fn listen() -> Resize {
        Resize {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                .ok(),
        }
    }

    /// The next resize; never, where resizes cannot be heard.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
            // The listener is gone: resizes show at the next interval.
            self.signal = None;
        }
        std::future::pending::<()>().await;
    }
}
