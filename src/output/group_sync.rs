//! Group commit for fsyncs: many threads each need "what I wrote before now is on disk", and
//! one sync that starts after they asked serves all of them.
//!
//! The first caller of a generation leads it: it waits out a short window (so that images
//! arriving meanwhile join; cut short once the group is full, or once every image the run has
//! on its way has joined, see [`GroupSync::expect_from`]), waits for the previous generation to finish, closes its own (a
//! caller from now on joins the next one) and runs the sync once for everybody in it. A
//! sync that starts after a caller's writes covers them, and no generation starts before
//! the one before it finished, so each caller is answered by the first sync that covers it.
//!
//! Why: on the development machine an fsync of a small new file costs about 0.2 ms of CPU
//! and a device cache flush, and plasma-batch made two per image (the temp file, the folder
//! after the link). Against a real ComfyUI rendering 120 trivial images a second on the
//! same two cores, that cost the server ~4 % of its throughput (docs/performance.md, r2);
//! one sync a window for all the images that arrived in it costs a fraction of that, and an
//! image still never gets its final name before its bytes are on disk.
//!
//! Owns the waiting only: what a sync does is the caller's closure.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Failures kept for callers that have not looked yet (one per failed generation).
const KEPT_FAILURES: usize = 64;

/// One kind of sync shared by many callers (e.g. "the image folder's filesystem").
#[derive(Debug)]
pub struct GroupSync {
    window: Duration,
    /// A generation of this many callers syncs without waiting out the window.
    full: usize,
    /// How many callers may still come (see [`GroupSync::expect_from`]).
    coming: Option<Arc<AtomicUsize>>,
    state: Mutex<State>,
    /// A caller joined the open generation.
    joined: Condvar,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// The generation callers join now; it has not started syncing.
    open: u64,
    /// Whether `open` has a leader yet.
    led: bool,
    /// Callers in `open`, its leader included.
    members: usize,
    /// Every generation up to this one has finished (0: none yet; generations start at 1).
    done: u64,
    /// Recent failed generations, with the error's kind and text.
    failures: VecDeque<(u64, io::ErrorKind, String)>,
    /// Syncs run so far.
    runs: u64,
}

impl GroupSync {
    /// A leader waits `window` for others to join before it syncs, or until `full` callers
    /// have (zero: it syncs at once; callers that arrive while a sync runs still share the
    /// next one).
    pub fn new(window: Duration, full: usize) -> GroupSync {
        GroupSync {
            window,
            full: full.max(1),
            coming: None,
            state: Mutex::new(State {
                open: 1,
                ..State::default()
            }),
            joined: Condvar::new(),
            finished: Condvar::new(),
        }
    }

    /// `coming` counts the callers that may still ask (the images of attempts under way): a
    /// leader stops waiting for others once that many are in its generation. At the end of a
    /// run, or with one render at a time, nobody waits out the window for images that are not
    /// on their way.
    #[must_use]
    pub fn expect_from(mut self, coming: Arc<AtomicUsize>) -> GroupSync {
        self.coming = Some(coming);
        self
    }

    /// Return once a `sync` that started after this call has finished: its result. `sync` is
    /// run by this caller if it leads its generation, else not at all.
    pub fn sync(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut state = self.lock();
        let generation = state.open;
        state.members += 1;
        if state.led {
            self.joined.notify_all();
            while state.done < generation {
                state = self
                    .finished
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            return state.result_of(generation);
        }
        state.led = true;
        let deadline = Instant::now() + self.window;
        loop {
            let everyone_in = state.members >= self.full
                || self
                    .coming
                    .as_ref()
                    .is_some_and(|coming| state.members >= coming.load(Ordering::SeqCst));
            let now = Instant::now();
            if everyone_in || now >= deadline {
                break;
            }
            state = self
                .joined
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        while state.done + 1 < generation {
            state = self
                .finished
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        // From here on a caller's writes may come after the sync started: the next one.
        state.open = generation + 1;
        state.led = false;
        state.members = 0;
        drop(state);
        let result = sync();
        let mut state = self.lock();
        state.done = generation;
        state.runs += 1;
        if let Err(e) = &result {
            if state.failures.len() == KEPT_FAILURES {
                state.failures.pop_front();
            }
            state
                .failures
                .push_back((generation, e.kind(), e.to_string()));
        }
        drop(state);
        self.finished.notify_all();
        result
    }

    /// Syncs run so far (each served one generation).
    pub fn runs(&self) -> u64 {
        self.lock().runs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn result_of(&self, generation: u64) -> io::Result<()> {
        match self.failures.iter().find(|(g, _, _)| *g == generation) {
            Some((_, kind, text)) => Err(io::Error::new(*kind, text.clone())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn callers_within_a_window_share_one_sync() {
        let group = Arc::new(GroupSync::new(Duration::from_millis(200), 100));
        let runs = Arc::new(AtomicUsize::new(0));
        let (joined, ready) = mpsc::channel();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (group, runs, joined) = (group.clone(), runs.clone(), joined.clone());
                std::thread::spawn(move || {
                    joined.send(()).unwrap();
                    group.sync(|| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                })
            })
            .collect();
        for _ in 0..8 {
            ready.recv().unwrap();
        }
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        // Eight callers, far fewer syncs (one, unless a thread was scheduled 200 ms late).
        let runs = runs.load(Ordering::SeqCst);
        assert!((1..=2).contains(&runs), "{runs} syncs");
        assert_eq!(group.runs(), runs as u64);
    }

    #[test]
    fn a_caller_is_served_only_by_a_sync_that_started_after_it_asked() {
        let group = Arc::new(GroupSync::new(Duration::ZERO, 100));
        // The first sync blocks until told; a caller arriving during it waits for a second.
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let first = {
            let group = group.clone();
            std::thread::spawn(move || {
                group.sync(|| {
                    started_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    Ok(())
                })
            })
        };
        started.recv().unwrap();
        let second_ran = Arc::new(AtomicUsize::new(0));
        let second = {
            let (group, ran) = (group.clone(), second_ran.clone());
            std::thread::spawn(move || {
                group.sync(|| {
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
            })
        };
        release.send(()).unwrap();
        first.join().unwrap().unwrap();
        second.join().unwrap().unwrap();
        assert_eq!(second_ran.load(Ordering::SeqCst), 1);
        assert_eq!(group.runs(), 2);
    }

    #[test]
    fn a_leader_stops_waiting_once_every_image_on_its_way_joined() {
        // A window far longer than the test: it passes only if the wait is cut short.
        let coming = Arc::new(AtomicUsize::new(3));
        let group =
            Arc::new(GroupSync::new(Duration::from_secs(600), 100).expect_from(coming.clone()));
        let runs = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (group, runs) = (group.clone(), runs.clone());
                std::thread::spawn(move || {
                    group.sync(|| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the three shared one sync");
        // One image on its way, and it is the caller: no wait at all.
        coming.store(1, Ordering::SeqCst);
        group.sync(|| Ok(())).unwrap();
        assert_eq!(group.runs(), 2);
    }

    #[test]
    fn a_full_group_syncs_without_waiting_out_the_window() {
        // A window far longer than the test, groups of two.
        let group = Arc::new(GroupSync::new(Duration::from_secs(600), 2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let group = group.clone();
                std::thread::spawn(move || group.sync(|| Ok(())))
            })
            .collect();
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        assert_eq!(group.runs(), 1);
    }

    #[test]
    fn every_caller_of_a_failed_sync_gets_the_error() {
        let group = Arc::new(GroupSync::new(Duration::from_millis(200), 100));
        let (joined, ready) = mpsc::channel();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (group, joined) = (group.clone(), joined.clone());
                std::thread::spawn(move || {
                    joined.send(()).unwrap();
                    group.sync(|| Err(io::Error::other("disk on fire")))
                })
            })
            .collect();
        for _ in 0..4 {
            ready.recv().unwrap();
        }
        for thread in threads {
            let error = thread.join().unwrap().unwrap_err();
            assert_eq!(error.to_string(), "disk on fire");
        }
        // A later generation is not tainted by an earlier failure.
        group.sync(|| Ok(())).unwrap();
    }
}
