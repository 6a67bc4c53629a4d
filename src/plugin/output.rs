//! What a plugin writes to its stdout and stderr: kept in memory, a
//! bounded amount per call, and sent to the router's log after each call
//! with the plugin's name, the route and the broadcast id.
//!
//! A Python `print`, a traceback, a JavaScript `console.log` or an
//! uncaught error's message all arrive here. The streams are plain memory:
//! a write never waits and never touches an async runtime, so output at
//! load, in `init` or in any hook cannot stall or crash the router. What
//! a call writes beyond [`CALL_CAP`] bytes per stream is dropped (and the
//! log says how much); writes always succeed, so a chatty plugin is not
//! made to fail.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of one stream kept per call (per hook call, `init`, or load).
pub(super) const CALL_CAP: usize = 8 << 10;

/// Bytes of output a failure message quotes at most.
const QUOTE_CAP: usize = 1 << 10;

/// Lines of output a failure message quotes at most.
const QUOTE_LINES: usize = 8;

/// A plugin's two output streams, shared between the WASI context (which
/// writes) and the host (which drains them after each call).
#[derive(Clone, Default)]
pub(super) struct Output {
    captured: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    stdout: Stream,
    stderr: Stream,
}

#[derive(Default)]
struct Stream {
    kept: Vec<u8>,
    dropped: usize,
}

impl Stream {
    fn write(&mut self, bytes: &[u8]) {
        let room = CALL_CAP.saturating_sub(self.kept.len());
        let kept = bytes.len().min(room);
        self.kept.extend_from_slice(&bytes[..kept]);
        self.dropped += bytes.len() - kept;
    }

    fn take(&mut self) -> Written {
        Written {
            text: String::from_utf8_lossy(&std::mem::take(&mut self.kept)).into_owned(),
            dropped: std::mem::take(&mut self.dropped),
        }
    }
}

/// What one stream received during one call.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// The text kept (invalid UTF-8 replaced).
    pub text: String,
    /// Bytes written past the cap and dropped.
    pub dropped: usize,
}

/// What a plugin wrote during one call.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CallOutput {
    /// Its stdout.
    pub stdout: Written,
    /// Its stderr.
    pub stderr: Written,
}

impl CallOutput {
    /// The end of stderr (or, when stderr is empty, of stdout): its last
    /// [`QUOTE_LINES`] non-empty lines, at most [`QUOTE_CAP`] bytes, for a
    /// failure message, where a traceback or an uncaught error names what
    /// went wrong. `None` when the plugin wrote nothing.
    pub fn quote(&self) -> Option<String> {
        let lines: Vec<&str> = [&self.stderr.text, &self.stdout.text]
            .into_iter()
            .map(|text| {
                text.lines()
                    .map(str::trim_end)
                    .filter(|line| !line.trim().is_empty())
                    .collect::<Vec<_>>()
            })
            .find(|lines| !lines.is_empty())?;
        let cut = lines.len() > QUOTE_LINES;
        let text = lines[lines.len().saturating_sub(QUOTE_LINES)..].join("\n");
        let start = text.len().saturating_sub(QUOTE_CAP);
        let start = (start..=text.len())
            .find(|&at| text.is_char_boundary(at))
            .unwrap_or(text.len());
        Some(if cut || start > 0 {
            format!("…{}", &text[start..])
        } else {
            text
        })
    }

    /// Writes every line to the router's log: stdout at info, stderr at
    /// warn, each with the plugin, route, broadcast id and the hook.
    pub fn log(&self, plugin: &str, route: &str, id: &str, hook: &str) {
        for (stream, written) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            for line in written.text.lines().filter(|line| !line.trim().is_empty()) {
                if stream == "stdout" {
                    tracing::info!(route, plugin, id, hook, stream, "{line}");
                } else {
                    tracing::warn!(route, plugin, id, hook, stream, "{line}");
                }
            }
            if written.dropped > 0 {
                tracing::warn!(
                    route,
                    plugin,
                    id,
                    hook,
                    stream,
                    dropped_bytes = written.dropped,
                    "Plugin output beyond {CALL_CAP} bytes in one call was dropped."
                );
            }
        }
    }
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, Captured> {
        // A panic while holding the lock leaves plain bytes behind: still usable.
        self.captured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The stdout stream for the WASI context.
    pub(super) fn stdout(&self) -> Pipe {
        Pipe {
            output: self.clone(),
            stderr: false,
        }
    }

    /// The stderr stream for the WASI context.
    pub(super) fn stderr(&self) -> Pipe {
        Pipe {
            output: self.clone(),
            stderr: true,
        }
    }

    /// What was written since the last call to `take`, emptying both
    /// streams.
    pub(super) fn take(&self) -> CallOutput {
        let mut captured = self.lock();
        CallOutput {
            stdout: captured.stdout.take(),
            stderr: captured.stderr.take(),
        }
    }

    fn write(&self, stderr: bool, bytes: &[u8]) {
        let mut captured = self.lock();
        if stderr {
            captured.stderr.write(bytes);
        } else {
            captured.stdout.write(bytes);
        }
    }
}

/// One of a plugin's output streams: memory, always ready, never full.
#[derive(Clone)]
pub(super) struct Pipe {
    output: Output,
    stderr: bool,
}

impl IsTerminal for Pipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Pipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Pipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.output.write(self.stderr, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always room: what goes past the cap is counted and dropped.
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Pipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.output.write(self.stderr, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_keeps_at_most_the_cap_and_counts_the_rest() {
        let output = Output::default();
        let mut stdout = output.stdout();
        OutputStream::write(&mut stdout, Bytes::from(vec![b'a'; CALL_CAP + 10])).unwrap();
        let taken = output.take();
        assert_eq!(taken.stdout.text.len(), CALL_CAP);
        assert_eq!(taken.stdout.dropped, 10);
        assert_eq!(
            output.take(),
            CallOutput::default(),
            "taking empties the streams"
        );
    }

    #[test]
    fn the_quote_is_the_end_of_stderr() {
        let output = Output::default();
        let mut stderr = output.stderr();
        let traceback =
            "Traceback (most recent call last):\n  File \"app.py\"\n\nValueError: boom\n";
        OutputStream::write(&mut stderr, Bytes::from(traceback)).unwrap();
        assert_eq!(
            output.take().quote().as_deref(),
            Some("Traceback (most recent call last):\n  File \"app.py\"\nValueError: boom")
        );
        let mut stdout = output.stdout();
        OutputStream::write(&mut stdout, Bytes::from(format!("{}end", "x".repeat(3000)))).unwrap();
        let quote = output.take().quote().unwrap();
        assert!(quote.starts_with('…') && quote.ends_with("end"), "{quote}");
        assert!(quote.len() <= QUOTE_CAP + '…'.len_utf8());
    }
}
