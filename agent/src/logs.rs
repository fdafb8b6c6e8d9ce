//! Summaries of repeated failures: a warning or error that repeats with the
//! same message and fields is logged once, then held back for a window;
//! what was held back comes out as one line, "... (repeated 57 times in
//! 10 s)". An etcd outage thus costs a line per failure kind every 10 s,
//! not one per retry.
//!
//! [`Repeats`] is the pure part (time is passed in); [`RepeatsLayer`] puts it
//! in front of the tracing subscriber, and [`flush`] (called every second
//! by the agent) reports the windows that ended quietly.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How long identical failures are held back after one is logged.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Distinct failures tracked at once; beyond that, new ones pass unsummarised.
const MAX_TRACKED: usize = 1024;

/// What held-back repeats of one failure add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The failure as it was logged (message and fields).
    pub text: String,
    pub level: Level,
    /// How many identical events were held back.
    pub repeated: u64,
    /// From the logged event to the last held-back one.
    pub over: Duration,
}

impl Summary {
    /// The line that reports it.
    #[must_use]
    pub fn line(&self) -> String {
        format!(
            "{} (repeated {} times in {} s)",
            self.text,
            self.repeated,
            self.over.as_secs().max(1)
        )
    }
}

/// Whether an event is logged.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; first report what the previous window held back, if anything.
    Log(Option<Summary>),
    /// Hold it back (counted).
    Hold,
}

struct Entry {
    text: String,
    level: Level,
    logged_at: Instant,
    held: u64,
    last_held: Instant,
}

/// Counts identical events per window.
pub struct Repeats {
    window: Duration,
    entries: HashMap<String, Entry>,
}

impl Repeats {
    #[must_use]
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            entries: HashMap::new(),
        }
    }

    /// An event identified by `key` (its call site and field values),
    /// shown as `text`, happened at `now`.
    pub fn observe(&mut self, key: &str, text: &str, level: Level, now: Instant) -> Verdict {
        if let Some(e) = self.entries.get_mut(key) {
            if now.duration_since(e.logged_at) < self.window {
                e.held += 1;
                e.last_held = now;
                return Verdict::Hold;
            }
            let summary = (e.held > 0).then(|| Summary {
                text: e.text.clone(),
                level: e.level,
                repeated: e.held,
                over: e.last_held.duration_since(e.logged_at),
            });
            e.logged_at = now;
            e.held = 0;
            return Verdict::Log(summary);
        }
        if self.entries.len() >= MAX_TRACKED {
            self.entries
                .retain(|_, e| e.held > 0 || now.duration_since(e.logged_at) < self.window);
            if self.entries.len() >= MAX_TRACKED {
                return Verdict::Log(None);
            }
        }
        self.entries.insert(
            key.to_owned(),
            Entry {
                text: text.to_owned(),
                level,
                logged_at: now,
                held: 0,
                last_held: now,
            },
        );
        Verdict::Log(None)
    }

    /// Summaries of the windows that ended by `now` with events held back;
    /// those failures start afresh.
    pub fn expired(&mut self, now: Instant) -> Vec<Summary> {
        let window = self.window;
        let mut out = Vec::new();
        self.entries.retain(|_, e| {
            if now.duration_since(e.logged_at) < window {
                return true;
            }
            if e.held > 0 {
                out.push(Summary {
                    text: e.text.clone(),
                    level: e.level,
                    repeated: e.held,
                    over: e.last_held.duration_since(e.logged_at),
                });
            }
            false
        });
        out.sort_by(|a, b| a.text.cmp(&b.text));
        out
    }
}

static REPEATS: Mutex<Option<Repeats>> = Mutex::new(None);

fn with_repeats<T>(f: impl FnOnce(&mut Repeats) -> T) -> T {
    let mut guard = REPEATS.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(|| Repeats::new(WINDOW)))
}

fn emit(s: &Summary) {
    let line = s.line();
    if s.level == Level::ERROR {
        tracing::error!(target: "linkmesh::logs", repeated = s.repeated, "{line}");
    } else {
        tracing::warn!(target: "linkmesh::logs", repeated = s.repeated, "{line}");
    }
}

/// Reports the windows that ended quietly. The agent calls it every second.
pub fn flush() {
    for s in with_repeats(|r| r.expired(Instant::now())) {
        emit(&s);
    }
}

/// Fields that count or stamp a failure rather than describe it: two events
/// that differ only in these are the same failure (and are shown without
/// them).
const VOLATILE: [&str; 3] = ["failures", "revision", "attempt"];

/// The message and fields of an event, as one line.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if VOLATILE.contains(&field.name()) {
            return;
        }
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if VOLATILE.contains(&field.name()) {
            return;
        }
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

/// Holds back repeated warnings and errors (see the module docs).
pub struct RepeatsLayer;

impl<S: Subscriber> Layer<S> for RepeatsLayer {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        // Only failures; and never our own summaries.
        if *meta.level() > Level::WARN || meta.target() == "linkmesh::logs" {
            return true;
        }
        let mut text = Text::default();
        event.record(&mut text);
        let shown = format!("{}{}", text.message, text.fields);
        let key = format!(
            "{}:{}|{shown}",
            meta.file().unwrap_or(""),
            meta.line().unwrap_or(0)
        );
        let verdict = with_repeats(|r| r.observe(&key, &shown, *meta.level(), Instant::now()));
        match verdict {
            Verdict::Hold => false,
            Verdict::Log(summary) => {
                if let Some(s) = summary {
                    emit(&s);
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(10);

    #[test]
    fn the_first_is_logged_and_the_repeats_are_held_then_summarised() {
        let t0 = Instant::now();
        let mut r = Repeats::new(W);
        let fail = |r: &mut Repeats, at: u64| {
            r.observe(
                "k",
                "keepalive failed error=timeout",
                Level::WARN,
                t0 + Duration::from_millis(at),
            )
        };
        assert_eq!(fail(&mut r, 0), Verdict::Log(None));
        for i in 1..=57 {
            assert_eq!(fail(&mut r, i * 100), Verdict::Hold);
        }
        // The next one after the window is logged, behind the summary.
        let Verdict::Log(Some(s)) = fail(&mut r, 10_500) else {
            panic!("a summary is due");
        };
        assert_eq!(s.repeated, 57);
        assert_eq!(s.over, Duration::from_millis(5_700));
        assert_eq!(
            s.line(),
            "keepalive failed error=timeout (repeated 57 times in 5 s)"
        );
        // A new window started: nothing held yet.
        assert_eq!(fail(&mut r, 20_600), Verdict::Log(None));
    }

    #[test]
    fn different_failures_are_counted_apart() {
        let t0 = Instant::now();
        let mut r = Repeats::new(W);
        assert_eq!(r.observe("a", "a", Level::WARN, t0), Verdict::Log(None));
        assert_eq!(r.observe("b", "b", Level::ERROR, t0), Verdict::Log(None));
        assert_eq!(r.observe("a", "a", Level::WARN, t0), Verdict::Hold);
        assert_eq!(r.observe("b", "b", Level::ERROR, t0), Verdict::Hold);
        assert_eq!(r.observe("b", "b", Level::ERROR, t0), Verdict::Hold);
        let s = r.expired(t0 + W);
        assert_eq!(
            s.iter()
                .map(|s| (s.text.as_str(), s.repeated, s.level))
                .collect::<Vec<_>>(),
            vec![("a", 1, Level::WARN), ("b", 2, Level::ERROR)]
        );
    }

    #[test]
    fn a_window_that_ends_quietly_is_reported_once_and_forgotten() {
        let t0 = Instant::now();
        let mut r = Repeats::new(W);
        r.observe("k", "boom", Level::WARN, t0);
        r.observe("k", "boom", Level::WARN, t0 + Duration::from_secs(1));
        assert!(
            r.expired(t0 + Duration::from_secs(9)).is_empty(),
            "still open"
        );
        assert_eq!(r.expired(t0 + W).len(), 1);
        assert!(r.expired(t0 + W * 2).is_empty(), "reported once");
        // A lone failure with no repeats produces no summary at all.
        r.observe("k", "boom", Level::WARN, t0 + W * 3);
        assert!(r.expired(t0 + W * 5).is_empty());
        assert_eq!(
            r.observe("k", "boom", Level::WARN, t0 + W * 5),
            Verdict::Log(None),
            "forgotten: logged as new"
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut r = Repeats::new(W);
        for i in 0..MAX_TRACKED + 10 {
            let k = i.to_string();
            assert_eq!(r.observe(&k, &k, Level::WARN, t0), Verdict::Log(None));
        }
        assert!(r.entries.len() <= MAX_TRACKED);
        // Once the windows end, room is made for new failures.
        assert_eq!(
            r.observe("new", "new", Level::WARN, t0 + W),
            Verdict::Log(None)
        );
        assert!(r.entries.contains_key("new"));
    }
}
