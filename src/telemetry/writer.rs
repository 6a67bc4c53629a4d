//! A log writer that never blocks a request worker.
//!
//! Formatting a log line happens on the thread that logs it, but writing
//! it to stderr (a pipe, a file, a terminal) may block when the reader is
//! slow. Every line is therefore handed over a bounded channel to one
//! writer thread. When the channel is full the line is dropped rather than
//! stall a broadcast, and the writer says how many lines it dropped as soon
//! as it catches up. Dropping the [`LogGuard`] writes what is queued before
//! the process exits.
//!
//! A busy router logs a line per broadcast. Woken for each line, the writer
//! thread cost a futex wake-up on the logging worker, a context switch and
//! a `write` per line: of the 15% of throughput at 3 pods that logging the
//! line at `info` cost, about 11%. So once lines keep coming, the writer
//! sleeps [`GATHER`] between batches instead of waiting on the channel, and
//! loggers hand lines over without waking anyone; when a batch finds the
//! queue empty, it waits on the channel again, so an idle router's writer
//! sleeps until the next line.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Lines queued for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 65_536;

/// How long a busy writer lets lines gather between two writes: a line
/// reaches stderr at most this late (plus the write).
const GATHER: Duration = Duration::from_millis(10);

/// Hands formatted lines to the writer thread.
#[derive(Clone)]
pub struct NonBlocking {
    lines: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

/// Keeps the writer thread; dropping it writes the queued lines and stops
/// the thread.
pub struct LogGuard {
    writer: Mutex<Option<(NonBlocking, JoinHandle<()>)>>,
}

impl NonBlocking {
    /// A writer to stderr through a new writer thread.
    pub fn stderr() -> (Self, LogGuard) {
        let (lines, queued) = mpsc::sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&dropped);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_lines(&queued, &counter))
            .expect("the log writer thread starts");
        let writer = Self { lines, dropped };
        let guard = LogGuard {
            writer: Mutex::new(Some((writer.clone(), thread))),
        };
        (writer, guard)
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let taken = self.writer.lock().ok().and_then(|mut writer| writer.take());
        if let Some((writer, thread)) = taken {
            // The thread ends once every sender is gone; the subscriber
            // still holds one, so ask it to stop with an empty line.
            let _ = writer.lines.send(Vec::new());
            drop(writer);
            let _ = thread.join();
        }
    }
}

/// Writes queued lines to stderr in batches, flushing after each, until an
/// empty line (the guard) or the end of the channel: it waits on the
/// channel for the first line, then, while lines keep coming, sleeps
/// [`GATHER`] between batches (see the module's doc).
fn write_lines(queued: &Receiver<Vec<u8>>, dropped: &AtomicU64) {
    // Not `stderr().lock()`: the process's own `eprintln!`s (e.g. `check`'s
    // problems) must not wait for this thread; stderr is locked per write.
    let mut out = io::BufWriter::with_capacity(64 << 10, io::stderr());
    while let Ok(first) = queued.recv() {
        let mut next = Some(first);
        while let Some(line) = next.take() {
            if line.is_empty() {
                let _ = out.flush();
                return;
            }
            let lost = dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                let _ = writeln!(
                    out,
                    "log writer: {lost} line(s) dropped because stderr was not read fast enough"
                );
            }
            let _ = out.write_all(&line);
            next = queued.try_recv().ok();
            if next.is_none() {
                // The batch is written. Let the next one gather; if none
                // did, wait on the channel again.
                let _ = out.flush();
                std::thread::sleep(GATHER);
                next = queued.try_recv().ok();
            }
        }
    }
    let _ = out.flush();
}

/// One log line being formatted; sent whole when dropped.
pub struct Line {
    buffer: Vec<u8>,
    writer: NonBlocking,
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buffer);
        match self.writer.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.writer.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            buffer: Vec::with_capacity(256),
            writer: self.clone(),
        }
    }
}
