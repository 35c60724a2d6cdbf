//! Fault injection specs (`--fault SPEC`): parsing and printing only. Where each fault acts
//! is in the server, worker and socket code; the syntax is documented in docs/simulator.md.

use std::fmt;
use std::str::FromStr;

/// One injected fault. `FromStr` reads the `--fault` syntax and `Display` writes it back.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// `drop-ws:N`: every WebSocket connection is cut (no close frame) after N frames.
    DropWs { after_frames: u64 },
    /// `drop-ws-once:N`: only the first connection that reaches N frames is cut.
    DropWsOnce { after_frames: u64 },
    /// `silent-ws:N`: after N frames a connection goes silent: nothing is sent or read
    /// (so no pong either) while the TCP connection stays open and HTTP keeps working.
    SilentWs { after_frames: u64 },
    /// `crash-after:N:MS`: crash while the Nth prompt taken from the queue runs (right after
    /// its first `executing`), stay down MS milliseconds, come back empty on the same port.
    CrashAfter { prompts: u64, down_ms: u64 },
    /// `crash-every:N:MS`: the same for every Nth prompt.
    CrashEvery { prompts: u64, down_ms: u64 },
    /// `prompt-500:N`: the Nth `POST /prompt` (1-based) answers HTTP 500.
    Prompt500 { nth: u64 },
    /// `prompt-500-rate:P`: each `POST /prompt` answers 500 with probability P (seeded).
    Prompt500Rate { p: f64 },
    /// `lose:N`: the Nth accepted prompt gets its 200 but is never queued or run.
    Lose { nth: u64 },
    /// `lose-inputs:N`: the input folder is emptied just before the Nth `POST /prompt` is
    /// validated (a server whose disk was wiped, or a fresh one behind the same URL), so a
    /// `LoadImage` of an earlier upload is refused there.
    LoseInputs { nth: u64 },
    /// `raise:CLASS`: nodes of CLASS raise a `RuntimeError` (an `execution_error`).
    Raise { class: String },
    /// `hang:CLASS`: nodes of CLASS never finish until interrupted.
    Hang { class: String },
    /// `slow-node:CLASS:MS`: nodes of CLASS take MS milliseconds. Like ComfyUI 0.8.0, an
    /// interrupt stops a model node (`KSampler`, `CLIPTextEncode`, `VAEDecode`) inside; any other
    /// node runs to its end and the interrupt hits at the next node.
    SlowNode { class: String, ms: u64 },
    /// `slow-history:MS`: every `/history` answer is delayed MS milliseconds.
    SlowHistory { ms: u64 },
    /// `slow-view:MS`: every `/view` answer is delayed MS milliseconds.
    SlowView { ms: u64 },
    /// `traversal-filenames`: history and `executed` report `../../x_NNNNN_.png` filenames in
    /// subfolder `../..` (the files themselves are written normally).
    TraversalFilenames,
    /// `view-truncated`: `/view` sends only the first half of the file.
    ViewTruncated,
    /// `view-not-png`: `/view` sends an HTML error page labelled `image/png`.
    ViewNotPng,
    /// `late-history:MS`: issue #11540: `execution_success` and the `status` broadcast go out,
    /// the history entry is written MS later, then `executing` null.
    LateHistory { ms: u64 },
    /// `drop-executed`: `executed` messages are not sent (as when a socket was briefly away
    /// while its node finished); history still has the outputs.
    DropExecuted,
}

/// A `--fault` spec that could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid fault spec `{spec}`: {reason} (see docs/simulator.md for the syntax)")]
pub struct FaultParseError {
    pub spec: String,
    pub reason: String,
}

impl FromStr for Fault {
    type Err = FaultParseError;

    #[allow(
        clippy::too_many_lines,
        reason = "table-driven: one arm per fault kind of docs/simulator.md"
    )]
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| FaultParseError {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = spec.trim().split(':');
        let name = parts.next().unwrap_or_default();
        let args: Vec<&str> = parts.collect();
        let want = |n: usize| {
            if args.len() == n {
                Ok(())
            } else {
                Err(err(&format!("`{name}` takes {n} argument(s)")))
            }
        };
        let num = |i: usize, what: &str| -> Result<u64, FaultParseError> {
            args[i]
                .trim()
                .parse::<u64>()
                .map_err(|_| err(&format!("{what} must be a whole number")))
        };
        let positive = |i: usize, what: &str| -> Result<u64, FaultParseError> {
            match num(i, what)? {
                0 => Err(err(&format!("{what} must be at least 1"))),
                n => Ok(n),
            }
        };
        let class = |i: usize| -> Result<String, FaultParseError> {
            let c = args[i].trim();
            if c.is_empty() {
                Err(err("the node class is empty"))
            } else {
                Ok(c.to_string())
            }
        };
        Ok(match name {
            "drop-ws" => {
                want(1)?;
                Fault::DropWs {
                    after_frames: positive(0, "the frame count")?,
                }
            }
            "drop-ws-once" => {
                want(1)?;
                Fault::DropWsOnce {
                    after_frames: positive(0, "the frame count")?,
                }
            }
            "silent-ws" => {
                want(1)?;
                Fault::SilentWs {
                    after_frames: positive(0, "the frame count")?,
                }
            }
            "crash-after" => {
                want(2)?;
                Fault::CrashAfter {
                    prompts: positive(0, "the prompt count")?,
                    down_ms: num(1, "the down time")?,
                }
            }
            "crash-every" => {
                want(2)?;
                Fault::CrashEvery {
                    prompts: positive(0, "the prompt count")?,
                    down_ms: num(1, "the down time")?,
                }
            }
            "prompt-500" => {
                want(1)?;
                Fault::Prompt500 {
                    nth: positive(0, "the request number")?,
                }
            }
            "prompt-500-rate" => {
                want(1)?;
                let p: f64 = args[0]
                    .trim()
                    .parse()
                    .map_err(|_| err("the probability must be a number"))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(err("the probability must be between 0 and 1"));
                }
                Fault::Prompt500Rate { p }
            }
            "lose" => {
                want(1)?;
                Fault::Lose {
                    nth: positive(0, "the prompt number")?,
                }
            }
            "lose-inputs" => {
                want(1)?;
                Fault::LoseInputs {
                    nth: positive(0, "the prompt number")?,
                }
            }
            "raise" => {
                want(1)?;
                Fault::Raise { class: class(0)? }
            }
            "hang" => {
                want(1)?;
                Fault::Hang { class: class(0)? }
            }
            "slow-node" => {
                want(2)?;
                Fault::SlowNode {
                    class: class(0)?,
                    ms: num(1, "the delay")?,
                }
            }
            "slow-history" => {
                want(1)?;
                Fault::SlowHistory {
                    ms: num(0, "the delay")?,
                }
            }
            "slow-view" => {
                want(1)?;
                Fault::SlowView {
                    ms: num(0, "the delay")?,
                }
            }
            "traversal-filenames" => {
                want(0)?;
                Fault::TraversalFilenames
            }
            "view-truncated" => {
                want(0)?;
                Fault::ViewTruncated
            }
            "view-not-png" => {
                want(0)?;
                Fault::ViewNotPng
            }
            "late-history" => {
                want(1)?;
                Fault::LateHistory {
                    ms: num(0, "the delay")?,
                }
            }
            "drop-executed" => {
                want(0)?;
                Fault::DropExecuted
            }
            "" => return Err(err("the spec is empty")),
            _ => return Err(err("unknown fault name")),
        })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::DropWs { after_frames } => write!(f, "drop-ws:{after_frames}"),
            Fault::DropWsOnce { after_frames } => write!(f, "drop-ws-once:{after_frames}"),
            Fault::SilentWs { after_frames } => write!(f, "silent-ws:{after_frames}"),
            Fault::CrashAfter { prompts, down_ms } => write!(f, "crash-after:{prompts}:{down_ms}"),
            Fault::CrashEvery { prompts, down_ms } => write!(f, "crash-every:{prompts}:{down_ms}"),
            Fault::Prompt500 { nth } => write!(f, "prompt-500:{nth}"),
            Fault::Prompt500Rate { p } => write!(f, "prompt-500-rate:{p}"),
            Fault::Lose { nth } => write!(f, "lose:{nth}"),
            Fault::LoseInputs { nth } => write!(f, "lose-inputs:{nth}"),
            Fault::Raise { class } => write!(f, "raise:{class}"),
            Fault::Hang { class } => write!(f, "hang:{class}"),
            Fault::SlowNode { class, ms } => write!(f, "slow-node:{class}:{ms}"),
            Fault::SlowHistory { ms } => write!(f, "slow-history:{ms}"),
            Fault::SlowView { ms } => write!(f, "slow-view:{ms}"),
            Fault::TraversalFilenames => write!(f, "traversal-filenames"),
            Fault::ViewTruncated => write!(f, "view-truncated"),
            Fault::ViewNotPng => write!(f, "view-not-png"),
            Fault::LateHistory { ms } => write!(f, "late-history:{ms}"),
            Fault::DropExecuted => write!(f, "drop-executed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_round_trips() {
        for spec in [
            "drop-ws:5",
            "drop-ws-once:3",
            "silent-ws:2",
            "crash-after:2:300",
            "crash-every:3:0",
            "prompt-500:1",
            "prompt-500-rate:0.25",
            "lose:2",
            "lose-inputs:1",
            "raise:KSampler",
            "hang:SaveImage",
            "slow-node:ImageBlur:200",
            "slow-history:100",
            "slow-view:100",
            "traversal-filenames",
            "view-truncated",
            "view-not-png",
            "late-history:50",
            "drop-executed",
        ] {
            let fault: Fault = spec.parse().unwrap();
            assert_eq!(fault.to_string(), spec);
        }
    }

    #[test]
    fn bad_specs_say_why() {
        let e = "drop-ws".parse::<Fault>().unwrap_err();
        assert!(e.to_string().contains("takes 1 argument"), "{e}");
        assert!(
            "nope:1"
                .parse::<Fault>()
                .unwrap_err()
                .reason
                .contains("unknown")
        );
        assert!("prompt-500-rate:2".parse::<Fault>().is_err());
        assert!("lose:0".parse::<Fault>().is_err());
    }
}
