//! The binary: parse arguments, build the runtime, run the command, exit with its code.
//! No logic lives here: commands are `plasma_batch::cmd`, and `cmd::error` decides a
//! failure's exit code and shows it.

use clap::Parser;
use plasma_batch::cli::Cli;
use plasma_batch::cmd::{self, CmdError, Failure};

fn main() {
    let cli = Cli::parse();
    // Diagnostics for developers: `PLASMA_LOG=plasma_batch=debug`. Off by default.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("PLASMA_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let result = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => {
            let result = runtime.block_on(cmd::execute(cli));
            // Dropping the runtime would wait for detached tasks; the command is over.
            runtime.shutdown_background();
            result
        }
        Err(err) => Err(CmdError::plain(
            Failure::Io,
            format!("failed to start the async runtime: {err}"),
            None,
        )),
    };
    std::process::exit(cmd::finish(result, &mut std::io::stderr().lock()));
}
