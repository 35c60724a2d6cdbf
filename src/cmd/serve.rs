//! `plasma-batch serve`: check the settings, start the job service (on `--sim` or the given
//! servers), print its URL, and stop gracefully on SIGTERM or Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;

use crate::cli::{OnShutdown, ServeArgs};
use crate::cmd::run::{build_clients, check_timeout, resolve_servers};
use crate::cmd::{CmdError, CmdResult, Failure, Outcome};
use crate::engine::{Choices, EngineConfig, EngineSettings};
use crate::serve::{ServeConfig, Service, ShutdownMode};
use crate::sim::{Fault, Sim, SimConfig};

#[allow(
    clippy::too_many_lines,
    reason = "a command's steps in order, top to bottom; split, they would only pass the same state around"
)]
pub async fn serve(args: ServeArgs) -> CmdResult {
    let mut signals = Signals::install();
    let usage =
        |message: String, help: Option<&str>| CmdError::plain(Failure::Usage, message, help);
    let listen = resolve_listen(&args.listen).await.map_err(|e| {
        usage(
            format!("--listen {}: {e}", args.listen),
            Some("give an address and port, e.g. 127.0.0.1:3000 (port 0 picks a free one)"),
        )
    })?;
    let timeout = check_timeout(args.timeout)?;
    if args.in_flight == Some(0) || args.max_queue == 0 {
        return Err(usage(
            "--in-flight and --max-queue must be at least 1".to_owned(),
            None,
        ));
    }
    let mut faults = Vec::new();
    for spec in &args.sim_faults {
        faults.push(spec.parse::<Fault>().map_err(|e| {
            usage(
                e.to_string(),
                Some("e.g. --sim-fault hang:KSampler (see docs/simulator.md)"),
            )
        })?);
    }
    let sim = if args.sim {
        let mut config = SimConfig {
            faults,
            ..SimConfig::default()
        };
        if let Some(step_ms) = args.sim_step_ms {
            config.step_ms = step_ms;
        }
        Some(Sim::start(config).await.map_err(|e| {
            CmdError::plain(
                Failure::Io,
                format!("failed to start the built-in simulator: {e}"),
                None,
            )
        })?)
    } else {
        None
    };
    let urls = match &sim {
        Some(sim) => vec![sim.url()],
        None => resolve_servers(&args.servers, &[]),
    };
    let servers = build_clients(&urls)?;
    // Without credentials: a URL may carry `user:password@`.
    let shown: Vec<String> = servers.iter().map(|s| s.url().to_owned()).collect();
    let config = ServeConfig {
        listen,
        servers,
        out_root: args.out.clone(),
        workflow: args.workflow.clone(),
        max_queue: args.max_queue,
        max_input_bytes: args.max_input_bytes,
        token: args.token.clone(),
        engine: EngineConfig::from_settings(&EngineSettings {
            flags: Choices {
                timeout: Some(timeout),
                in_flight: args.in_flight,
                ..Choices::default()
            },
            manifest: Choices::default(),
        }),
        on_shutdown: match args.on_shutdown {
            OnShutdown::Finish => ShutdownMode::Finish,
            OnShutdown::Cancel => ShutdownMode::Cancel,
        },
    };
    let service = Service::start(config).await?;
    for warning in service.warnings() {
        eprintln!("warning: {warning}");
    }
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "plasma-batch serve listening on http://{}",
        service.addr()
    );
    let _ = writeln!(out, "servers: {}", shown.join(", "));
    let _ = out.flush();

    signals.next().await;
    eprintln!(
        "stopping: new jobs get 503; jobs not yet posted stay queued for the next start; signal again to interrupt posted jobs"
    );
    let hurry = service.hurry();
    tokio::spawn(async move {
        signals.next().await;
        eprintln!("interrupting posted jobs; signal again to exit at once");
        let _ = hurry.send(true);
        signals.next().await;
        std::process::exit(Outcome::Interrupted.exit_code());
    });
    let result = service.shutdown().await;
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    result?;
    Ok(Outcome::Done)
}

/// `127.0.0.1:3000`, `[::1]:3000` or `localhost:3000` (the first address it resolves to).
async fn resolve_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(text)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "resolves to no address".to_owned())
}

/// SIGTERM and Ctrl-C, caught from when this is made: a signal that arrives right after
/// the "listening" line (a supervisor stopping a fresh service) stops it gracefully too.
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                streams: signal(SignalKind::terminate())
                    .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
                    .ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.streams {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
