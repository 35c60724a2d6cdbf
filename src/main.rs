//! The binary: parse arguments, build the runtime, render diagnostics, exit with a code.
//! No logic lives here; see `plasma_batch::cmd`.

use clap::Parser;
use plasma_batch::diagnostic::Bounded;
use plasma_batch::{cli::Cli, cmd, exit_codes};

fn main() {
    let cli = Cli::parse();
    // Diagnostics for developers: `PLASMA_LOG=plasma_batch=debug`. Off by default.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("PLASMA_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: failed to start the async runtime: {err}");
            std::process::exit(exit_codes::IO_ERROR);
        }
    };
    let code = match runtime.block_on(cmd::execute(cli)) {
        Ok(code) => code,
        Err(err) => {
            // Bounded: a label at a huge column or on a huge line renders as a short excerpt.
            for diagnostic in err.diagnostics {
                eprintln!("{:?}", miette::Report::new(Bounded::new(diagnostic)));
            }
            err.exit_code
        }
    };
    // Dropping the runtime would wait for detached tasks; the run is over, so do not wait.
    runtime.shutdown_background();
    std::process::exit(code);
}
