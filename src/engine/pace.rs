//! How many prompts to keep posted to one server: enough that its queue never runs dry.
//!
//! When a prompt finishes, the server starts the next one it holds; meanwhile we hear of the
//! finish (one socket frame) and post a replacement (one HTTP round trip). The server idles
//! unless the prompts queued behind the running one last longer than that refill, so a
//! server needs `1 + ceil(refill / render)` prompts: 2 for renders longer than the round
//! trip (every real GPU on a LAN), more for very short renders (cached prompts, tiny images)
//! or a far-away server. Both times are measured per server as the run goes (moving
//! averages), and the depth stays within the configured bounds: a fixed `[comfy] in_flight`
//! sets both.
//!
//! Renders shorter than [`BATCH_BELOW`] are refilled in batches instead: when the prompts
//! posted fall to the number needed, as many are posted at once as bring them back to the
//! maximum. On a real ComfyUI every `POST /prompt` is handled by the same Python interpreter
//! as the render (one lock), so a POST arriving while a render of a few ms runs slows that
//! render; several arriving together are handled in one go. Measured on ComfyUI 0.8.0 with
//! 9 ms renders (docs/performance.md, r2): posting one prompt as each finished cost ~6 % of
//! the throughput of posting them all at once; batches of 6 with at most 8 posted matched
//! it. A render of 50 ms or more hardly notices a POST (~1 ms of the server's time), and
//! keeps few prompts in ComfyUI's volatile queue.
//!
//! Owns this arithmetic only: it is handed durations, and must not read the clock, hold
//! slots or talk to servers (the slots are `slots.rs`'s).

use std::time::Duration;

/// Weight of a new sample in the moving averages.
const ALPHA: f64 = 0.2;

/// Renders shorter than this (in seconds) are refilled in batches.
const BATCH_BELOW: f64 = 0.050;

/// The measured pace of one server.
#[derive(Debug, Clone)]
pub struct Pace {
    min: usize,
    max: usize,
    /// `execution_start` to `executing` null, as the socket tells them (both frames are late
    /// by the same one-way delay, so the difference is the server's own time).
    render: Option<f64>,
    /// A `POST /prompt` round trip; hearing of a finish costs about as much again.
    post: Option<f64>,
}

impl Pace {
    pub fn new(min: usize, max: usize) -> Pace {
        let min = min.max(1);
        Pace {
            min,
            max: max.max(min),
            render: None,
            post: None,
        }
    }

    pub fn rendered(&mut self, took: Duration) {
        average(&mut self.render, took);
    }

    pub fn posted(&mut self, took: Duration) {
        average(&mut self.post, took);
    }

    /// Prompts to keep posted now: the minimum until both times are known; the maximum
    /// while refilling in batches.
    pub fn depth(&self) -> usize {
        if self.batched() {
            self.max
        } else {
            self.needed()
        }
    }

    /// Free slots to wait for before posting again: 1 (post as each prompt finishes), or
    /// while refilling in batches, enough that the prompts still posted are the number
    /// needed when the batch goes out.
    pub fn batch(&self) -> usize {
        if self.batched() {
            self.max + 1 - self.needed()
        } else {
            1
        }
    }

    fn batched(&self) -> bool {
        self.post.is_some()
            && self.render.is_some_and(|render| render < BATCH_BELOW)
            && self.needed() < self.max
    }

    /// Prompts needed so the server's queue never runs dry while we refill it.
    fn needed(&self) -> usize {
        let (Some(render), Some(post)) = (self.render, self.post) else {
            return self.min;
        };
        let refill = 2.0 * post;
        // A render of (almost) nothing: as deep as allowed.
        let behind = if render <= 1e-6 {
            self.max as f64
        } else {
            (refill / render).ceil()
        };
        (1.0 + behind).clamp(self.min as f64, self.max as f64) as usize
    }
}

fn average(slot: &mut Option<f64>, took: Duration) {
    let x = took.as_secs_f64();
    *slot = Some(match *slot {
        Some(avg) => avg + ALPHA * (x - avg),
        None => x,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1000.0)
    }

    fn settled(min: usize, max: usize, render_ms: f64, post_ms: f64) -> usize {
        let mut pace = Pace::new(min, max);
        for _ in 0..50 {
            pace.rendered(ms(render_ms));
            pace.posted(ms(post_ms));
        }
        pace.needed()
    }

    #[test]
    fn depth_covers_the_refill_with_queued_renders() {
        // Unknown yet: the minimum.
        assert_eq!(Pace::new(2, 8).needed(), 2);
        // A GPU on the same machine or LAN: one rendering, one waiting.
        assert_eq!(settled(2, 8, 20.0, 0.5), 2);
        // 100 ms renders behind a 25 ms-each-way link: the refill (~50 ms) fits in one.
        assert_eq!(settled(2, 8, 100.0, 26.0), 2);
        // 10 ms renders, 12 ms posts: ~24 ms to refill = three renders queued behind.
        assert_eq!(settled(2, 8, 10.0, 12.0), 4);
        // Renders shorter than a round trip: enough queued to cover it...
        assert_eq!(settled(2, 8, 0.3, 0.6), 5);
        // ...and for renders of next to nothing, as deep as allowed, never deeper.
        assert_eq!(settled(2, 8, 0.1, 0.6), 8);
        assert_eq!(settled(2, 8, 0.0, 0.6), 8);
        // A fixed depth stays fixed.
        assert_eq!(settled(3, 3, 0.1, 5.0), 3);
        assert_eq!(settled(3, 3, 500.0, 0.1), 3);
    }

    fn refill(min: usize, max: usize, render_ms: f64, post_ms: f64) -> (usize, usize) {
        let mut pace = Pace::new(min, max);
        for _ in 0..50 {
            pace.rendered(ms(render_ms));
            pace.posted(ms(post_ms));
        }
        (pace.depth(), pace.batch())
    }

    #[test]
    fn short_renders_are_refilled_in_batches() {
        // Unknown yet: one at a time.
        assert_eq!(Pace::new(2, 8).batch(), 1);
        // Renders of 50 ms and more (a GPU, the sampler path, a remote server): one prompt
        // as each finishes, two posted.
        assert_eq!(refill(2, 8, 500.0, 2.0), (2, 1));
        assert_eq!(refill(2, 8, 100.0, 26.0), (2, 1));
        assert_eq!(refill(2, 8, 50.0, 0.5), (2, 1));
        // A 9 ms render and 1 ms posts (ComfyUI's trivial graph): up to 8 posted, 7 at once
        // when one is left (it covers the 2 ms refill).
        assert_eq!(refill(2, 8, 9.0, 1.0), (8, 7));
        // 10 ms renders, 12 ms posts: 4 needed, so a batch of 5 when 3 are left.
        assert_eq!(refill(2, 8, 10.0, 12.0), (8, 5));
        // As many needed as allowed: nothing left to batch.
        assert_eq!(refill(2, 8, 0.1, 0.6), (8, 1));
        // A fixed depth stays fixed, one at a time.
        assert_eq!(refill(3, 3, 9.0, 1.0), (3, 1));
    }

    #[test]
    fn averages_follow_a_change_of_pace() {
        let mut pace = Pace::new(2, 8);
        for _ in 0..50 {
            pace.rendered(ms(0.1));
            pace.posted(ms(0.6));
        }
        assert_eq!(pace.depth(), 8);
        // The server got slow (real work now): back to two within a few prompts, one at a
        // time.
        for _ in 0..15 {
            pace.rendered(ms(2000.0));
        }
        assert_eq!((pace.depth(), pace.batch()), (2, 1));
    }
}
