//! What a person sees while a run goes, and the thread that keeps the report current.
//!
//! On a terminal: an overall bar (counts, ETA) and one line per server with its current job
//! and sampler step. Elsewhere (CI): one plain line per finished job. `--quiet` and `--json`
//! print nothing per job. All of it goes to stderr; stdout is kept for `--json`.

use std::io::Write;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;

use super::json::ReportWriter;
use crate::events::{Event, JobOutcome, JobStatus, RouteState, ServerRouting, ServerState};
use crate::output::PathError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live bars (stderr is a terminal).
    Live,
    /// One line per finished job.
    Plain,
    /// Nothing per job.
    Quiet,
}

/// The result of the collector thread.
pub struct Collected {
    /// The writers it was given, in the same order.
    pub writers: Vec<ReportWriter>,
    /// The first report write that failed (the run goes on; the final write tries again).
    pub write_error: Option<PathError>,
}

/// Consume engine events on a thread of its own until the engine's sender is dropped. A
/// finished job goes to the writer of its chapter (one writer per chapter of the run).
pub fn spawn_collector(
    mut events: mpsc::UnboundedReceiver<Event>,
    mut writers: Vec<ReportWriter>,
    mode: Mode,
    total: usize,
    already_done: usize,
) -> std::thread::JoinHandle<Collected> {
    std::thread::spawn(move || {
        let mut display = Display::new(mode, total, already_done);
        let mut write_error = None;
        while let Some(event) = events.blocking_recv() {
            if let Event::Finished(outcome) = &event {
                let chapter = chapter_of(&outcome.key);
                let writer = match &mut writers[..] {
                    [only] => Some(only),
                    all => all.iter_mut().find(|w| Some(w.report().chapter) == chapter),
                };
                if let Some(writer) = writer
                    && let Err(error) = writer.record(outcome)
                    && write_error.is_none()
                {
                    write_error = Some(error);
                }
            }
            if let Event::Routing { server, routing } = &event {
                // Every chapter's report lists the servers, and each one what it could take.
                for writer in &mut writers {
                    writer.routing(*server, routing);
                }
            }
            display.show(&event);
        }
        display.finish();
        Collected {
            writers,
            write_error,
        }
    })
}

/// The chapter a job key names: 3 for `ch03_p001_s1`.
fn chapter_of(key: &str) -> Option<u16> {
    key.split('_').next()?.strip_prefix("ch")?.parse().ok()
}

struct Display {
    mode: Mode,
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    servers: Vec<ProgressBar>,
    server_urls: Vec<String>,
    /// Per server: while it is unreachable, the last minute of its outage a line was shown for.
    down: Vec<Option<u64>>,
    /// Servers said to be unreachable at the start (their first outage line would repeat it).
    down_at_start: Vec<usize>,
}

impl Display {
    fn new(mode: Mode, total: usize, already_done: usize) -> Display {
        let (multi, overall) = if mode == Mode::Live {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            let bar = multi.add(ProgressBar::new(total as u64));
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} jobs  {msg}  ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_position(already_done as u64);
            bar.enable_steady_tick(Duration::from_millis(200));
            (Some(multi), Some(bar))
        } else {
            (None, None)
        };
        Display {
            mode,
            multi,
            overall,
            servers: Vec::new(),
            server_urls: Vec::new(),
            down: Vec::new(),
            down_at_start: Vec::new(),
        }
    }

    fn line(&self, text: String) {
        if let Some(multi) = &self.multi {
            let _ = multi.println(text);
        } else {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{text}");
        }
    }

    fn show(&mut self, event: &Event) {
        match event {
            Event::RunStarted { servers, .. } => {
                self.server_urls.clone_from(servers);
                if let Some(multi) = &self.multi {
                    for url in servers {
                        let bar = multi.add(ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template("  {prefix}  {msg}")
                                .expect("valid template"),
                        );
                        bar.set_prefix(url.clone());
                        bar.set_message("connecting");
                        self.servers.push(bar);
                    }
                }
            }
            Event::Started { key, server } => {
                self.server_message(*server, format!("{key}  starting"));
            }
            Event::Progress {
                key,
                server,
                value,
                max,
            } => self.server_message(*server, format!("{key}  step {value}/{max}")),
            Event::Server { server, state } => {
                self.server_message(*server, server_status(state));
                let url = self.server_urls.get(*server).cloned().unwrap_or_default();
                if self.mode == Mode::Quiet {
                    return;
                }
                if self.down.len() <= *server {
                    self.down.resize(*server + 1, None);
                }
                match state {
                    ServerState::Connected => {}
                    ServerState::Unreachable {
                        reason,
                        down_for,
                        window,
                        ..
                    } => {
                        // One line when it goes down, then (plain output, where no status
                        // line shows it) one a minute while it stays down.
                        let minute = down_for.as_secs() / 60;
                        match self.down[*server] {
                            None if self.down_at_start.contains(server) => {}
                            None => self.line(format!(
                                "warn {url} unreachable: {reason}; retrying for up to {} (jobs wait for it)",
                                human(*window)
                            )),
                            Some(shown) if minute > shown && self.mode == Mode::Plain => {
                                self.line(format!(
                                    "warn {url} still unreachable after {} of {}: {reason}",
                                    human(*down_for),
                                    human(*window)
                                ));
                            }
                            Some(_) => return,
                        }
                        self.down[*server] = Some(minute);
                    }
                    ServerState::Back { down_for } => {
                        self.line(format!("warn {url} is back after {}", human(*down_for)));
                        self.down[*server] = None;
                    }
                    ServerState::Retired(reason) => {
                        self.line(format!("warn {url} taken out of rotation: {reason}"));
                    }
                }
            }
            Event::Retrying { key, reason, .. } => {
                if self.mode != Mode::Quiet {
                    self.line(format!("retry {key}: {reason}"));
                }
            }
            Event::Finished(outcome) => {
                if let Some(bar) = &self.overall {
                    bar.inc(1);
                    if !outcome.status.is_ok() {
                        bar.set_message(format!("last failure: {}", outcome.key));
                    }
                }
                if self.mode != Mode::Quiet {
                    self.line(finished_line(outcome));
                }
            }
            Event::Routing { server, routing } => {
                let url = self.server_urls.get(*server).cloned().unwrap_or_default();
                self.server_message(*server, routing_status(routing));
                if routing.state == RouteState::Down {
                    self.down_at_start.push(*server);
                }
                if self.mode != Mode::Quiet {
                    for line in routing_lines(&url, routing) {
                        self.line(line);
                    }
                }
            }
            Event::Submitted { .. } => {}
        }
    }

    fn server_message(&self, server: usize, message: String) {
        if let Some(bar) = self.servers.get(server) {
            bar.set_message(message);
        }
    }

    fn finish(&self) {
        for bar in &self.servers {
            bar.finish_and_clear();
        }
        if let Some(bar) = &self.overall {
            bar.finish_and_clear();
        }
    }
}

/// A server's status line on the live display.
pub fn server_status(state: &ServerState) -> String {
    match state {
        ServerState::Connected => "connected".to_owned(),
        ServerState::Unreachable {
            reason,
            retry_in,
            down_for,
            window,
        } => format!(
            "unreachable, retrying in {} (outage {} of {}): {reason}",
            human(*retry_in),
            human(*down_for),
            human(*window)
        ),
        ServerState::Back { down_for } => format!("connected (back after {})", human(*down_for)),
        ServerState::Retired(reason) => format!("out of rotation: {reason}"),
    }
}

/// A server's status line while it has not taken a job yet: what it can take.
fn routing_status(routing: &ServerRouting) -> String {
    match routing.state {
        RouteState::Down => "unreachable at the start; tried again during the run".to_owned(),
        RouteState::Up | RouteState::Joined => {
            format!(
                "can take {} of {} jobs",
                routing.can_take(),
                routing.checked
            )
        }
    }
}

/// The lines that say which jobs a server can take, and why it cannot take the others.
pub fn routing_lines(url: &str, routing: &ServerRouting) -> Vec<String> {
    let mut lines = vec![match routing.state {
        RouteState::Down => format!(
            "warn {url} is unreachable at the start: skipped for now, tried again during the run; {}",
            routing.reason.as_deref().unwrap_or("no answer")
        ),
        RouteState::Up => format!(
            "route {url} can take {} of {} jobs",
            routing.can_take(),
            routing.checked
        ),
        RouteState::Joined => format!(
            "route {url} joined the run: it can take {} of the {} jobs waiting",
            routing.can_take(),
            routing.checked
        ),
    }];
    for refusal in &routing.cannot_take {
        let shown: Vec<&str> = refusal.jobs.iter().take(5).map(String::as_str).collect();
        let more = refusal.jobs.len() - shown.len();
        lines.push(format!(
            "route {url} cannot take {}{}: {}",
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            },
            refusal.reason
        ));
    }
    lines
}

/// `0.4 s`, `12 s`, `3 min 20 s`, `10 min`.
fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.1} s")
    } else if secs < 60.0 {
        format!("{secs:.0} s")
    } else {
        let whole = d.as_secs();
        match (whole / 60, whole % 60) {
            (m, 0) => format!("{m} min"),
            (m, s) => format!("{m} min {s} s"),
        }
    }
}

/// `  ok ch01_p001_s1 -> ch-01/raw/comfyui/ch01_p001_v1.png (1.4 s, http://...)`
pub fn finished_line(outcome: &JobOutcome) -> String {
    let took = match (
        outcome.timings.queued,
        outcome.timings.downloaded.or(outcome.timings.executed),
    ) {
        (Some(start), Some(end)) => {
            format!("{:.1} s, ", f64::from(end.saturating_sub(start)) / 1000.0)
        }
        _ => String::new(),
    };
    let server = outcome.server.as_deref().unwrap_or("-");
    let images = outcome
        .images
        .iter()
        .map(|i| i.path.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    match outcome.status {
        JobStatus::Succeeded => format!("  ok {} -> {images} ({took}{server})", outcome.key),
        JobStatus::Skipped => format!("skip {} (already rendered: {images})", outcome.key),
        status => {
            let tag = match status {
                JobStatus::TimedOut => "TIME",
                JobStatus::Cancelled => "STOP",
                _ => "FAIL",
            };
            let reason = outcome
                .error
                .as_ref()
                .map_or("unknown error", |e| e.message.as_str());
            format!("{tag} {}: {reason}", outcome.key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_server_shows_its_retry_and_how_much_of_the_window_is_used() {
        let state = ServerState::Unreachable {
            reason: "connection refused".to_owned(),
            retry_in: Duration::from_millis(3200),
            down_for: Duration::from_secs(75),
            window: Duration::from_secs(600),
        };
        assert_eq!(
            server_status(&state),
            "unreachable, retrying in 3.2 s (outage 1 min 15 s of 10 min): connection refused"
        );
        assert_eq!(
            server_status(&ServerState::Back {
                down_for: Duration::from_millis(300)
            }),
            "connected (back after 0.3 s)"
        );
        assert_eq!(human(Duration::from_secs(42)), "42 s");
    }

    #[test]
    fn routing_lines_say_how_many_jobs_a_server_can_take_and_why_not_the_others() {
        let keys: Vec<String> = (1..=7).map(|p| format!("ch01_p{p:03}_s1")).collect();
        let routing = ServerRouting {
            state: RouteState::Up,
            checked: 9,
            cannot_take: vec![crate::events::Refusal {
                reason: "no XL".to_owned(),
                jobs: keys,
            }],
            reason: None,
        };
        assert_eq!(
            routing_lines("http://a", &routing),
            [
                "route http://a can take 2 of 9 jobs",
                "route http://a cannot take ch01_p001_s1, ch01_p002_s1, ch01_p003_s1, ch01_p004_s1, ch01_p005_s1 and 2 more: no XL",
            ]
        );
        assert_eq!(routing_status(&routing), "can take 2 of 9 jobs");
    }
}
