//! `plasma-batch sim`: serve the built-in ComfyUI simulator until Ctrl-C or SIGTERM.

use std::io::Write;

use crate::cli::SimArgs;
use crate::cmd::{CmdError, CmdResult, Failure, Outcome};
use crate::sim::{Fault, Sim, SimConfig};

pub async fn sim(args: SimArgs) -> CmdResult {
    let mut config = SimConfig {
        host: args.host,
        port: args.port,
        step_ms: args.step_ms,
        latency_ms: args.latency_ms,
        output_dir: args.output_dir,
        ..SimConfig::default()
    };
    if let Some(c) = args.checkpoints {
        config.checkpoints = c;
    }
    if let Some(l) = args.loras {
        config.loras = l;
    }
    let mut diagnostics = Vec::new();
    for spec in &args.faults {
        match spec.parse::<Fault>() {
            Ok(f) => config.faults.push(f),
            Err(e) => diagnostics.push(
                miette::MietteDiagnostic::new(e.to_string())
                    .with_help("e.g. --fault drop-ws:5 or --fault raise:KSampler"),
            ),
        }
    }
    if !diagnostics.is_empty() {
        return Err(CmdError::all(Failure::Usage, diagnostics));
    }
    let addr = format!("{}:{}", config.host, config.port);
    let sim = Sim::start(config).await.map_err(|e| {
        CmdError::plain(
            Failure::Io,
            format!("failed to listen on {addr}: {e}"),
            Some("pick another port with --port, or --port 0 for any free one"),
        )
    })?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "plasma-batch sim listening on {}", sim.url());
    let _ = writeln!(out, "output directory: {}", sim.output_dir().display());
    let _ = out.flush();
    wait_for_signal().await;
    sim.shutdown().await;
    Ok(Outcome::Done)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
