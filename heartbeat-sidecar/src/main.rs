//! heartbeat-sidecar: wraps any worker process and reports for it to
//! hp_worker_status; also `check` and `status`.

mod check;
mod cli;
mod exit;
mod lines;
mod run;
mod socket;
mod status;
mod watch;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() {
    // glibc gives each thread its own malloc arena; the sidecar's few threads
    // allocate little, and one shared arena keeps its footprint small.
    // SAFETY: mallopt before any other thread exists.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HP_LOG").unwrap_or_else(|_| "info".into()),
        )
        .init();

    // One thread: the worker is spawned from it, and Linux's parent-death
    // signal follows the thread that spawned, so it must live as long as we do.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("heartbeat-sidecar: cannot start: {e}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => match run::run(args).await {
                Ok(exit) => Err(exit),
                Err(run::SetupError(e)) => {
                    eprintln!("heartbeat-sidecar: {e:#}");
                    Ok(2)
                }
            },
            Command::Check(args) => Ok(check::check(args).await),
            Command::Status(args) => Ok(status::status(args).await),
        }
    });
    drop(runtime);
    match code {
        Ok(code) => std::process::exit(code),
        Err(exit) => exit::end_process(exit),
    }
}
