//! Command-line types only (clap derive). No behaviour lives here: each subcommand's
//! arguments are handed to the matching function in `cmd/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Render a chapter manifest's pages through one or more ComfyUI servers.
#[derive(Debug, Parser)]
#[command(name = "plasma-batch", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a manifest and its workflow templates; print every problem at once.
    Validate(ValidateArgs),
    /// Print the jobs a manifest expands to, without running anything.
    Plan(PlanArgs),
    /// Render every job of a manifest and write images, ledger and run report.
    Run(RunArgs),
    /// Re-submit exactly what a run report recorded, as new image versions.
    Rerun(RerunArgs),
    /// Serve a ComfyUI-compatible simulator (no GPU needed).
    Sim(SimArgs),
    /// Serve the HTTP job service: submit single panels as JSON, poll for the image.
    Serve(ServeArgs),
    /// Work with run reports (`report merge`: the shards of a chapter into one report).
    #[command(subcommand)]
    Report(ReportCommand),
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Combine the shard reports of each chapter (`run --shard K/N`) into one report and
    /// contact sheet; fails naming the keys when a planned job is in no report or in two.
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Shard reports (`<out>/ch-XX/reports/<run-id>.json`), book summaries of shard runs
    /// (`<out>/reports/<run-id>.json`), or folders of either (every `*.json` directly inside).
    #[arg(value_name = "REPORT", required = true)]
    pub reports: Vec<PathBuf>,
    /// Where the merged reports go: `DIR/ch-XX.json` and the contact sheet `DIR/ch-XX.html`.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Of several reports of one shard (a folder that keeps every run's), take the newest.
    #[arg(long)]
    pub newest: bool,
    /// Print the merged reports and totals as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The chapter manifest (TOML).
    pub manifest: PathBuf,
    /// Also check node classes and model names against this ComfyUI server's `/object_info`.
    #[arg(long = "server", value_name = "URL")]
    pub servers: Vec<String>,
    /// Output root whose chapter ledger resolves earlier pages named as input images
    /// (`images = { source = { page = 3 } }`); as `run --out`.
    #[arg(long, value_name = "DIR", default_value = "output")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The chapter manifest (TOML).
    pub manifest: PathBuf,
    /// Output root whose chapter ledger resolves earlier pages named as input images
    /// (`images = { source = { page = 3 } }`); as `run --out`.
    #[arg(long, value_name = "DIR", default_value = "output")]
    pub out: PathBuf,
    /// Print the jobs as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[allow(
    clippy::struct_excessive_bools,
    reason = "each bool is one independent command-line flag"
)]
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Chapter manifests (TOML), or folders of them (every `*.toml` directly inside): all
    /// of them run together as one book, each chapter with its own report.
    #[arg(value_name = "MANIFEST", required = true)]
    pub manifests: Vec<PathBuf>,
    /// ComfyUI server URL (repeatable). Overrides `[comfy] servers` and `PLASMA_COMFY_URL`.
    #[arg(long = "server", value_name = "URL")]
    pub servers: Vec<String>,
    /// Start the built-in simulator in-process and run against it.
    #[arg(long, conflicts_with = "servers")]
    pub sim: bool,
    /// Output root; images go to `<out>/ch-XX/raw/comfyui/`, reports to `<out>/ch-XX/reports/`.
    #[arg(long, value_name = "DIR", default_value = "output")]
    pub out: PathBuf,
    /// Per-job timeout in seconds, counted from `execution_start` (default: manifest, else 90).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Prompts in flight per server, fixed (default: manifest, else 2 to 8 as the server's
    /// pace needs: more only while renders are shorter than a round trip).
    #[arg(long, value_name = "N")]
    pub in_flight: Option<usize>,
    /// Only run the jobs of KEY (repeatable): a chapter, page, sweep point or job key, e.g. `ch01_p003`.
    #[arg(long = "only", value_name = "KEY")]
    pub only: Vec<String>,
    /// Render every selected job again as new versions, even if the ledger has its image.
    #[arg(long)]
    pub force: bool,
    /// Retry jobs that failed deterministically (validation, node error, timeout) too.
    #[arg(long)]
    pub retry_failed: bool,
    /// How long a server that stopped answering is waited for (retried with backoff, jobs
    /// waiting) before it is out of rotation for good (default: manifest, else 600).
    #[arg(long, value_name = "SECONDS")]
    pub outage_window: Option<f64>,
    /// Print only the final summary.
    #[arg(long, conflicts_with = "json")]
    pub quiet: bool,
    /// Print the report path and totals as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    // Books and shards.
    /// Render only shard K of N (K from 0 to N-1): the jobs whose key hashes to K, so N
    /// processes render disjoint parts of the book. K may name an environment variable that
    /// holds it: `--shard JOB_COMPLETION_INDEX/4`.
    #[arg(long, value_name = "K/N", env = crate::shard::SHARD_ENV)]
    pub shard: Option<String>,
    #[command(flatten)]
    pub route_ci: RouteCiArgs,
}

#[derive(Debug, Args)]
pub struct RerunArgs {
    /// A run report (`<out>/ch-XX/reports/<run-id>.json`).
    pub report: PathBuf,
    /// Only the jobs of KEY (repeatable; a chapter, page, sweep point or job key); default: every job.
    #[arg(long = "job", value_name = "KEY")]
    pub jobs: Vec<String>,
    /// ComfyUI server URL (repeatable); default: the servers the report names.
    #[arg(long = "server", value_name = "URL")]
    pub servers: Vec<String>,
    /// Start the built-in simulator in-process and run against it.
    #[arg(long, conflicts_with = "servers")]
    pub sim: bool,
    /// Output root (default: the one the report lies under, `<out>` of `<out>/ch-XX/reports/`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the comparison as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0 picks a free one).
    #[arg(long, default_value_t = 8188)]
    pub port: u16,
    /// Milliseconds per `KSampler` step.
    #[arg(long, default_value_t = 5)]
    pub step_ms: u64,
    /// Extra latency in milliseconds on every HTTP response and WebSocket frame.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Checkpoint names the server offers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub checkpoints: Option<Vec<String>>,
    /// LoRA names the server offers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub loras: Option<Vec<String>>,
    /// Where `SaveImage` writes (default: a temporary directory removed on exit).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Inject a fault (repeatable); see docs/simulator.md for the syntax.
    #[arg(long = "fault", value_name = "SPEC")]
    pub faults: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback needs a token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    pub listen: String,
    /// ComfyUI server URL (repeatable). Overrides `PLASMA_COMFY_URL`.
    #[arg(long = "server", value_name = "URL")]
    pub servers: Vec<String>,
    /// Start the built-in simulator in-process and serve jobs on it.
    #[arg(long, conflicts_with = "servers")]
    pub sim: bool,
    /// Output root; images go to `<out>/ch-XX/raw/comfyui/`, the jobs journal to `<out>/serve/`.
    #[arg(long, value_name = "DIR", default_value = "output")]
    pub out: PathBuf,
    /// Workflow template for every job (default: the shipped txt2img.json, or
    /// txt2img-lora.json for jobs with a LoRA).
    #[arg(long, value_name = "PATH")]
    pub workflow: Option<PathBuf>,
    /// Jobs queued or running at once; beyond that `POST /jobs` answers 429.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_queue: usize,
    /// Largest input image a `POST /jobs` may send, in bytes; larger ones answer 413.
    #[arg(long, value_name = "BYTES", default_value_t = crate::serve::inputs::DEFAULT_MAX_INPUT_BYTES)]
    pub max_input_bytes: u64,
    /// Bearer token every request (but /healthz) must carry; required off loopback.
    #[arg(long, env = "PLASMA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Per-job timeout in seconds, counted from `execution_start`.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::params::DEFAULT_TIMEOUT_SECS)]
    pub timeout: f64,
    /// Prompts in flight per server, fixed (default: 2 to 8 as the server's pace needs).
    #[arg(long, value_name = "N")]
    pub in_flight: Option<usize>,
    /// On SIGTERM: let posted jobs finish, or interrupt them (they run again on restart).
    /// Jobs not yet posted stay queued for the next start either way.
    #[arg(long, value_enum, default_value_t = OnShutdown::Finish)]
    pub on_shutdown: OnShutdown,
    /// With --sim: inject a simulator fault (repeatable; see docs/simulator.md).
    #[arg(long = "sim-fault", value_name = "SPEC", requires = "sim")]
    pub sim_faults: Vec<String>,
    /// With --sim: milliseconds per `KSampler` step.
    #[arg(long, value_name = "MS", requires = "sim")]
    pub sim_step_ms: Option<u64>,
}

/// `run`'s routing and CI output flags.
#[derive(Debug, Clone, Default, Args)]
pub struct RouteCiArgs {
    /// Stop before anything runs if any server is unreachable or lacks a model, node class
    /// or option some job needs (default: each job goes to the servers that have all it
    /// needs, jobs no live server can take fail, the rest run).
    #[arg(long)]
    pub all_or_nothing: bool,
    /// Also write the run as JUnit XML to PATH: one test suite per chapter, one test case
    /// per job.
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
    /// Also write a Markdown summary to PATH (totals, failed jobs, contact sheets); it is
    /// appended to `$GITHUB_STEP_SUMMARY` too when that is set.
    #[arg(long, value_name = "PATH")]
    pub summary: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnShutdown {
    Finish,
    Cancel,
}
