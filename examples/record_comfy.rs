//! Record the conformance scenarios from a ComfyUI server as JSON lines, the files
//! `tests/fixtures/comfy/` holds and `tests/integration/sim_conformance.rs` replays against
//! the simulator. See docs/simulator.md ("Re-recording the fixtures").
//!
//! ```sh
//! cargo run --example record_comfy -- --url http://127.0.0.1:8188 --out tests/fixtures/comfy \
//!     --kill-cmd 'kill -9 "$(cat ~/.cache/plasma-real-comfy/comfyui-8188.pid)"' \
//!     --start-cmd '../shared/real-comfy/start.sh 8188'
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use plasma_batch::sim::record::{self, RecordOptions};

#[derive(Parser)]
#[command(about = "Record ComfyUI exchanges for the simulator's conformance tests")]
struct Args {
    /// The server to record (a real ComfyUI; the simulator works too).
    #[arg(long)]
    url: String,
    /// Folder the `NN-name.jsonl` files are written to (made if missing).
    #[arg(long)]
    out: PathBuf,
    /// Shell command that kills the server at once (SIGKILL); needed for 07.
    #[arg(long)]
    kill_cmd: Option<String>,
    /// Shell command that starts the server and returns once it answers; needed for 07.
    #[arg(long)]
    start_cmd: Option<String>,
    /// Checkpoint the sampler scenarios load.
    #[arg(long, default_value = "AnythingXL_inkBase.safetensors")]
    checkpoint: String,
    /// The server's input folder, when it was started with `--input-directory`: written
    /// `ComfyUI/input` in the recording (09's error messages name it).
    #[arg(long)]
    input_dir: Option<String>,
    /// Seconds any one wait may take.
    #[arg(long, default_value_t = 300)]
    wait_s: u64,
    /// Scenarios to record (names or number prefixes such as `04`); default all, in order.
    /// Those after 01 expect the ones before them to have just run (cache, history).
    scenarios: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let chosen: Vec<&str> = if args.scenarios.is_empty() {
        record::SCENARIOS.to_vec()
    } else {
        let mut out = Vec::new();
        for want in &args.scenarios {
            if let Some(s) = record::SCENARIOS
                .iter()
                .find(|s| s.starts_with(want.as_str()))
            {
                out.push(*s);
            } else {
                eprintln!(
                    "error: no scenario `{want}`; known: {}",
                    record::SCENARIOS.join(", ")
                );
                return ExitCode::from(2);
            }
        }
        out
    };
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("error: cannot make {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    let opts = RecordOptions {
        // Unlike any earlier session's graphs, so nothing of them is cached on the server.
        tag: (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            % 1_000_000) as u32,
        checkpoint: args.checkpoint,
        kill_cmd: args.kill_cmd,
        start_cmd: args.start_cmd,
        wait: Duration::from_secs(args.wait_s),
        input_dir: args.input_dir,
    };
    for name in chosen {
        eprint!("{name} ... ");
        match record::record(&args.url, name, &opts).await {
            Ok(lines) => {
                let path = args.out.join(format!("{name}.jsonl"));
                let text = lines.iter().fold(String::new(), |mut text, l| {
                    let _ = writeln!(text, "{l}");
                    text
                });
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("{} lines -> {}", lines.len(), path.display());
            }
            Err(e) => {
                eprintln!("failed\nerror: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
