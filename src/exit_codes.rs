//! The process exit codes, named in one place. README.md documents the same table; which
//! failure gets which code is decided in one place too, `cmd::error`.

/// Every job succeeded or was skipped (also: `validate` found no problem).
pub const OK: i32 = 0;
/// The run finished, but at least one job failed, timed out or was cancelled by a fault.
pub const JOBS_FAILED: i32 = 1;
/// Command-line usage error (clap's own code too).
pub const USAGE: i32 = 2;
/// An input (the manifest, a workflow template, a run report) is missing, unreadable or
/// invalid; nothing was sent to any server.
pub const INVALID_INPUT: i32 = 3;
/// A server was unreachable or the preflight check (`/object_info`) failed; no job ran.
pub const PREFLIGHT_FAILED: i32 = 4;
/// A local I/O problem outside any single job (output root not writable, report not written).
pub const IO_ERROR: i32 = 5;
/// The run was interrupted by Ctrl-C or SIGTERM (128 + SIGINT, as shells expect).
pub const INTERRUPTED: i32 = 130;
