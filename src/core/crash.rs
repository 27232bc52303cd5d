//! Named crash points: the places between steps that must be atomic
//! together, where a crash test stops the daemon on purpose instead of by
//! chance.
//!
//! | point             | between                                                   |
//! |-------------------|-----------------------------------------------------------|
//! | `block-stored`    | a commit's new blocks on disk, and its rows committed     |
//! | `rows-committed`  | a commit's rows committed, and the answer to the caller   |
//! | `upload-sent`     | the backend confirming an object, and the queue entry removed |
//! | `removals-sent`   | a batch of removals confirmed by the backend, and their entries removed |
//! | `remote-node`     | an entry found in a backend made here, and its content and remote row (one transaction: nothing of it may survive) |
//! | `remote-applied`  | a change from a backend committed, and the kernel told    |
//!
//! A daemon started with `LOCKER_CRASH_AT=<point>` aborts (as `kill -9`
//! would) the first time it reaches that point. Tests of the core arm a
//! point on one core only (`arm`), which then panics there: the test drops
//! the core without committing anything more and opens the store again.

use std::sync::Mutex;

/// Every point, for tests that visit them all.
pub const POINTS: &[&str] = &[
    "block-stored",
    "rows-committed",
    "upload-sent",
    "removals-sent",
    "remote-node",
    "remote-applied",
];

/// The point this core stops at, if any.
#[derive(Default)]
pub struct CrashPoints {
    armed: Mutex<Option<(String, bool)>>,
}

impl CrashPoints {
    /// Reads `LOCKER_CRASH_AT`: the daemon aborts there.
    pub fn from_env() -> CrashPoints {
        let armed = std::env::var("LOCKER_CRASH_AT")
            .ok()
            .filter(|p| !p.is_empty())
            .map(|p| (p, true));
        if let Some((p, _)) = &armed {
            tracing::warn!(point = %p, "crash point armed: the daemon aborts when it gets there");
        }
        CrashPoints {
            armed: Mutex::new(armed),
        }
    }

    /// Arms `point` on this core: reaching it panics (tests only).
    pub fn arm(&self, point: &str) {
        *self.armed.lock().unwrap_or_else(|p| p.into_inner()) = Some((point.to_string(), false));
    }

    /// Stops here if `point` is armed (once).
    pub fn hit(&self, point: &'static str) {
        debug_assert!(POINTS.contains(&point), "unknown crash point {point}");
        let mut g = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        let Some((p, abort)) = g.as_ref() else {
            return;
        };
        if p != point {
            return;
        }
        let abort = *abort;
        *g = None;
        drop(g);
        if abort {
            eprintln!("locker: crash point {point} reached; aborting");
            std::process::abort();
        }
        panic!("crash point {point}");
    }
}
