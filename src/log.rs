//! Logging setup: `tracing` to stderr (journald captures it) in `text` or `json`. The
//! request log line is written by `http::handle`; nothing logs keys, tokens or the
//! `Authorization` header.
//!
//! The log destination may fail in every way a file descriptor can — a full disk, a pipe
//! whose reader went away, a reader that stopped reading — and none of that may stop or
//! slow the service (docs/operations/running.md "When the log destination fails"). So the formatting layer never
//! writes to fd 2 itself: each formatted line goes into a bounded in-memory queue
//! ([`QUEUE_BYTES`]) and one dedicated thread (`log-writer`) writes the queue to
//! stderr. A caller never waits for the destination and never sees an error; a line
//! that does not fit in the queue, or that the destination refuses (ENOSPC, EPIPE,
//! EAGAIN, anything), is dropped and counted in [`lines_dropped`]
//! (`fleetgroups_log_lines_dropped_total` in `/metrics`). Because the writer never
//! fails, tracing-subscriber never reaches its own `eprintln!` error report, which
//! panics when stderr is broken (and its reporting is switched off as well).
//!
//! The panic hook goes through the same queue: the default one writes to stderr
//! directly, so a request that panicked would block its worker on a stalled pipe.
//!
//! Under journald (`JOURNAL_STREAM` names our stderr) every line starts with its syslog
//! priority (`<3>` error, `<4>` warn, `<6>` info, `<7>` debug and trace) and carries
//! no timestamp of its own, so `journalctl -p warning` works; elsewhere the lines are
//! as before ([`Journald`]).
//!
//! The log level — a level or `EnvFilter` directives, a checked [`LogLevel`] — sits
//! behind a reload layer: SIGHUP changes it ([`Level::set`], called by `server/reload.rs`). The format
//! (text or JSON) needs a restart.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::format::{format, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use serde::{Deserialize, Serialize};

/// Most bytes of formatted lines waiting for the writer thread. Past it new lines are
/// dropped: at ~200 bytes a request line that is ~5,000 requests of backlog, enough to
/// ride out a slow journald, and a bound on memory when the destination is stuck.
pub const QUEUE_BYTES: usize = 1 << 20;

/// How long [`flush`] waits at exit for queued lines to reach the destination. A stuck
/// destination must not hold up the exit (nor a second signal's "exit at once").
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Lines dropped since the process started: the queue was full or stderr refused the
/// write. A process-wide static because the log destination is process-wide (the
/// subscriber is global and fd 2 is one per process); `metrics/mod.rs` reads it through
/// [`lines_dropped`], so metrics depends on this module and not the other way round.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The queue, once [`init`] has started the writer thread. Only [`flush`] needs to find
/// it without a handle (at exit, including `server/signals.rs`'s "exit at once").
static SINK: OnceLock<Arc<Sink>> = OnceLock::new();

/// Log lines dropped so far (`fleetgroups_log_lines_dropped_total`).
pub fn lines_dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

fn count_dropped() {
    DROPPED.fetch_add(1, Ordering::Relaxed);
}

/// `log.format`: how lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `log.level`: a level or `EnvFilter` directives, checked when it is made (parsed from
/// the configuration), so a running server holds no level it could not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogLevel(String);

impl LogLevel {
    /// The text as configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel("info".into())
    }
}

impl TryFrom<String> for LogLevel {
    type Error = LevelError;

    fn try_from(text: String) -> Result<LogLevel, LevelError> {
        check_level(&text)?;
        Ok(LogLevel(text))
    }
}

impl std::str::FromStr for LogLevel {
    type Err = LevelError;

    fn from_str(text: &str) -> Result<LogLevel, LevelError> {
        LogLevel::try_from(text.to_string())
    }
}

impl From<LogLevel> for String {
    fn from(level: LogLevel) -> String {
        level.0
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<&str> for LogLevel {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Changes the log level of the installed subscriber (SIGHUP).
pub struct Level {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl Level {
    /// Replaces the filter with `level` (sled stays at `warn` unless a directive names
    /// it).
    pub fn set(&self, level: &LogLevel) -> Result<(), LevelError> {
        self.handle
            .reload(filter(level.as_str())?)
            .map_err(|e| LevelError::Reload(e.to_string()))
    }
}

/// The level names a directive may use (tracing also takes them in any case).
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Why a `log.level` is refused, or a change of level failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LevelError {
    #[error("{:?} names no level; use one of {levels} or directives such as info,fleetgroups::access=off", .0, levels = LEVELS.join(", "))]
    NoLevel(String),
    #[error("{:?} is neither a level ({levels}) nor a target=level directive", .0, levels = LEVELS.join(", "))]
    NotALevel(String),
    #[error("{level:?} is not a valid directive list: {reason}")]
    Directives { level: String, reason: String },
    #[error("cannot change the log level: {0}")]
    Reload(String),
}

/// Checks `log.level`: one or more comma-separated directives in `EnvFilter` syntax,
/// each a level (`info`) or `target=level` (`fleetgroups::access=off`). Stricter than
/// `EnvFilter` in one way: a bare word that is not a level is refused, where
/// `EnvFilter` would read it as "everything from target `word`", so a misspelt level
/// (`warnn`) would silently log nothing it was meant to. The error says why, for a
/// message that names the key (`config.rs`). What [`LogLevel`] is made through.
pub fn check_level(level: &str) -> Result<(), LevelError> {
    filter(level).map(|_| ())
}

/// The filter for `level`, with sled at `warn` (its info lines are noise) unless a
/// directive says otherwise: later directives for the same target replace earlier ones.
fn filter(level: &str) -> Result<EnvFilter, LevelError> {
    let directives: Vec<&str> = level
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err(LevelError::NoLevel(level.to_string()));
    }
    for d in &directives {
        if !d.contains('=') && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d)) {
            return Err(LevelError::NotALevel(d.to_string()));
        }
    }
    // `parse`, not `EnvFilter::new`: that one prints what it ignores straight to fd 2.
    // Field values compare as plain strings, not regular expressions.
    EnvFilter::builder()
        .with_regex(false)
        .parse(format!("sled=warn,{}", directives.join(",")))
        .map_err(|e| LevelError::Directives {
            level: level.to_string(),
            reason: e.to_string(),
        })
}

/// Installs the global subscriber, the writer thread and the panic hook. Only the first
/// call in a process installs anything; later ones (tests) return a [`Level`] that
/// changes nothing.
pub fn init(level: &LogLevel, log_format: LogFormat) -> Level {
    // A `LogLevel` was checked; a filter that still fails falls back to info.
    let level = filter(level.as_str()).unwrap_or_else(|_| EnvFilter::new("info,sled=warn"));
    let (filter, handle) = reload::Layer::new(level);
    let writer = match SINK.get() {
        Some(sink) => SinkWriter(Arc::clone(sink)),
        None => SinkWriter(start_sink()),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .log_internal_errors(false);
    let journal = under_journald();
    let fmt = match (log_format, journal) {
        (LogFormat::Text, false) => fmt.boxed(),
        (LogFormat::Json, false) => fmt.json().flatten_event(true).boxed(),
        (LogFormat::Text, true) => fmt.event_format(Journald(format().without_time())).boxed(),
        (LogFormat::Json, true) => fmt
            .fmt_fields(JsonFields::new())
            .event_format(Journald(format().json().flatten_event(true).without_time()))
            .boxed(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        install_panic_hook();
    }
    Level { handle }
}

/// Whether stderr is a journald stream: systemd sets `JOURNAL_STREAM` to the device
/// and inode (`dev:ino`, decimal) of the stream it connected to stdout/stderr. The
/// variable is inherited, so it alone proves nothing (a child of a service whose stderr
/// was redirected to a file still carries it): it counts only when it names the very
/// file description fd 2 is (systemd.exec(5), "$JOURNAL_STREAM").
fn under_journald() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    // The field types differ between targets (u32 on some 32-bit ones).
    #[allow(clippy::useless_conversion)]
    let (dev, ino) = (u64::from(stat.st_dev), u64::from(stat.st_ino));
    names_stream(&value, dev, ino)
}

/// `JOURNAL_STREAM`'s value names the file with this device and inode number.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// The syslog priority journald reads from a `<N>` line prefix (sd-daemon(3)): error 3,
/// warning 4, info 6, debug 7 (tracing's trace has no syslog peer: debug too). With it
/// `journalctl -p warning` shows warnings and errors only.
fn priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        tracing::Level::DEBUG | tracing::Level::TRACE => 7,
    }
}

/// The line format under journald: the inner format (text or JSON, built without a
/// timestamp: journald stamps each line itself, and a second clock in the message only
/// costs bytes and flash) behind a `<N>` priority prefix. Every line of a multi-line
/// event (a panic's backtrace) carries the prefix, or journald would file the
/// continuation lines at the stream's default priority, info.
struct Journald<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut text = String::new();
        self.0.format_event(ctx, Writer::new(&mut text), event)?;
        let prefix = format!("<{}>", priority(*event.metadata().level()));
        // The text format pads the level to five characters (" INFO"); without the
        // timestamp before it that would leave every message starting with a space.
        for line in text.trim_start_matches(' ').split_inclusive('\n') {
            writer.write_str(&prefix)?;
            writer.write_str(line)?;
        }
        Ok(())
    }
}

/// The panic hook: one error line through the queue instead of a write to stderr
/// (with the backtrace when `RUST_BACKTRACE` asks for one, like the default hook).
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => backtrace.to_string(),
            _ => String::new(),
        };
        let thread = std::thread::current();
        tracing::error!(
            target: "fleetgroups::panic",
            thread = thread.name().unwrap_or("-"),
            location = %location,
            backtrace = %backtrace,
            "panic: {message}"
        );
    }));
}

/// Waits (at most [`FLUSH_WAIT`]) until every queued line has been written or dropped.
/// Called before the process exits, since the writer thread dies with it.
pub fn flush() {
    if let Some(sink) = SINK.get() {
        sink.flush(Instant::now() + FLUSH_WAIT);
    }
}

fn start_sink() -> Arc<Sink> {
    let sink = Arc::new(Sink::default());
    let drained = Arc::clone(&sink);
    let started = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || drained.drain(&mut std::io::stderr()));
    if started.is_err() {
        // No thread, no destination: every line is dropped (and counted), nothing waits.
        sink.state().closed = true;
    }
    // A racing second `init` keeps the first sink; this one then just goes unused.
    let _ = SINK.set(Arc::clone(&sink));
    sink
}

/// The queue between the formatting layer and the writer thread.
#[derive(Default)]
struct Sink {
    state: Mutex<State>,
    /// Signalled when a line is queued.
    queued: Condvar,
    /// Signalled when the writer finished a batch (for `flush`).
    written: Condvar,
}

#[derive(Default)]
struct State {
    lines: VecDeque<Vec<u8>>,
    /// Bytes in `lines`.
    bytes: usize,
    /// The writer thread holds a batch it has not finished writing.
    writing: bool,
    /// No writer thread: drop everything.
    closed: bool,
}

impl Sink {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, and the state stays consistent anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one line, or drops and counts it. Never blocks beyond the queue's lock,
    /// which the writer thread holds only to take a batch, never while writing.
    fn push(&self, line: Vec<u8>) {
        if line.is_empty() {
            return;
        }
        let mut state = self.state();
        if state.closed || state.bytes + line.len() > QUEUE_BYTES {
            drop(state);
            count_dropped();
            return;
        }
        state.bytes += line.len();
        state.lines.push_back(line);
        drop(state);
        self.queued.notify_one();
    }

    /// The writer thread: takes everything queued and writes it line by line.
    fn drain(&self, out: &mut impl Write) {
        loop {
            let batch = {
                let mut state = self.state();
                while state.lines.is_empty() {
                    state = self.queued.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                state.bytes = 0;
                state.writing = true;
                std::mem::take(&mut state.lines)
            };
            for line in batch {
                // `write_all` retries EINTR; any other error (ENOSPC, EPIPE, EAGAIN on a
                // non-blocking descriptor, EIO) drops this line and the next one tries
                // again, so logging resumes by itself once the destination recovers.
                if out.write_all(&line).is_err() {
                    count_dropped();
                }
            }
            self.state().writing = false;
            self.written.notify_all();
        }
    }

    fn flush(&self, deadline: Instant) {
        let mut state = self.state();
        while !state.closed && (state.writing || !state.lines.is_empty()) {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            state = match self.written.wait_timeout(state, deadline - now) {
                Ok((s, _)) => s,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// The `MakeWriter` given to the formatting layer: each event gets a [`Line`].
struct SinkWriter(Arc<Sink>);

impl<'a> MakeWriter<'a> for SinkWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            sink: &self.0,
            buf: Vec::new(),
        }
    }
}

/// One event's formatted text, queued as a whole when the layer is done with it, so a
/// dropped line is dropped whole and lines never interleave.
struct Line<'a> {
    sink: &'a Sink,
    buf: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        self.sink.push(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination that fails every write, like stderr on a full disk.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(28))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(sink: &Sink, text: &str) {
        let mut l = Line {
            sink,
            buf: Vec::new(),
        };
        l.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        // No writer thread: the queue only fills.
        let sink = Sink::default();
        let big = "x".repeat(QUEUE_BYTES / 4);
        let before = lines_dropped();
        for _ in 0..4 {
            line(&sink, &big);
        }
        assert_eq!(sink.state().lines.len(), 4);
        line(&sink, "one more\n");
        assert!(lines_dropped() > before);
        assert!(sink.state().bytes <= QUEUE_BYTES);
    }

    #[test]
    fn a_failing_destination_drops_and_counts_and_flush_returns() {
        let sink = Arc::new(Sink::default());
        let drained = Arc::clone(&sink);
        std::thread::spawn(move || drained.drain(&mut Full));
        let before = lines_dropped();
        for i in 0..10 {
            line(&sink, &format!("line {i}\n"));
        }
        sink.flush(Instant::now() + Duration::from_secs(10));
        let state = sink.state();
        assert!(state.lines.is_empty() && !state.writing);
        // Other tests may drop lines too (the counter is process-wide): at least ours.
        assert!(lines_dropped() >= before + 10);
    }

    /// A writer the test reads back: what the log writer or a subscriber wrote.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn lines_arrive_whole_and_in_order() {
        let sink = Arc::new(Sink::default());
        let out = Buf::default();
        let drained = Arc::clone(&sink);
        let target = out.clone();
        std::thread::spawn(move || drained.drain(&mut { target }));
        for i in 0..100 {
            let mut l = Line {
                sink: &sink,
                buf: Vec::new(),
            };
            // Written in pieces, queued as one line.
            write!(l, "line ").unwrap();
            writeln!(l, "{i}").unwrap();
        }
        sink.flush(Instant::now() + Duration::from_secs(10));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn levels_and_directives_are_accepted() {
        for ok in [
            "info",
            "WARN",
            "off",
            "info,fleetgroups::access=off",
            "warn, fleetgroups::server=info ,fleetgroups::access=info",
            "debug,sled=info",
            "fleetgroups=debug",
        ] {
            assert_eq!(check_level(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn bad_directives_are_refused_with_the_reason() {
        for (bad, says) in [
            ("", "names no level"),
            (" , ", "names no level"),
            ("shout", "\"shout\" is neither a level"),
            ("warnn", "neither a level"),
            ("info,fleetgroups", "\"fleetgroups\" is neither a level"),
            ("info,fleetgroups=loud", "not a valid directive list"),
            ("info,[unclosed=debug", "not a valid directive list"),
        ] {
            let e = check_level(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn sled_stays_at_warn_unless_a_directive_names_it() {
        let quiet = filter("debug").unwrap().to_string();
        assert!(quiet.contains("sled=warn"), "{quiet}");
        let loud = filter("info,sled=debug").unwrap().to_string();
        assert!(
            loud.contains("sled=debug") && !loud.contains("sled=warn"),
            "{loud}"
        );
    }

    #[test]
    fn journal_stream_must_name_this_very_file() {
        assert!(names_stream("2049:1234", 2049, 1234));
        assert!(names_stream("2049:1234\n", 2049, 1234));
        assert!(!names_stream("2049:1235", 2049, 1234));
        assert!(!names_stream("2048:1234", 2049, 1234));
        for garbage in ["", "2049", "2049:", ":1234", "x:y", "2049:1234:5"] {
            assert!(!names_stream(garbage, 2049, 1234), "{garbage:?}");
        }
    }

    #[test]
    fn journald_lines_carry_the_priority_and_no_timestamp() {
        let out = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(out.clone())
            .event_format(Journald(format().without_time()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("e");
            tracing::warn!("w");
            tracing::info!("i");
            tracing::debug!("d");
            tracing::trace!("t");
            // Display, as the panic hook logs its backtrace: the newline stays raw.
            tracing::error!(backtrace = %"frame 1\nframe 2", "panic: two lines");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        for (line, prefix) in lines
            .iter()
            .zip(["<3>", "<4>", "<6>", "<7>", "<7>", "<3>", "<3>"])
        {
            assert!(
                line.starts_with(prefix),
                "{line:?} should start with {prefix}"
            );
            // The level word follows at once: no timestamp in between.
            let rest = line[3..].trim_start();
            assert!(
                ["ERROR", "WARN", "INFO", "DEBUG", "TRACE", "frame"]
                    .iter()
                    .any(|w| rest.starts_with(w)),
                "{line:?}"
            );
        }
    }

    #[test]
    fn flush_gives_up_on_a_stuck_destination() {
        let sink = Sink::default();
        sink.state().writing = true;
        let started = Instant::now();
        sink.flush(Instant::now() + Duration::from_millis(50));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
