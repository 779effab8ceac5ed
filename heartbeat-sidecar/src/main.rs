//! heartbeat-sidecar: wraps any worker process and reports for it to
//! hp_worker_status; also `check` and `status`.

mod alerts;
mod check;
mod cli;
mod events;
mod exit;
mod fleet;
mod group;
mod lines;
mod notify;
mod operate;
mod output;
mod reaper;
mod run;
mod socket;
mod status;
mod table;
mod watch;

use crate::exit::Exit;

fn main() {
    // glibc gives each thread its own malloc arena; the sidecar's few threads
    // allocate little, and one shared arena keeps its footprint small.
    // SAFETY: mallopt before any other thread exists.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let cli = cli::parse();
    output::init_logging();

    // One thread: the worker is spawned from it, and Linux's parent-death
    // signal follows the thread that spawned, so it must live as long as we do.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("heartbeat-sidecar: cannot start: {e}");
            exit::end_process(Exit::Code(exit::USAGE));
        }
    };
    let exit = runtime.block_on(async {
        match cli.command {
            cli::Command::Run(args) => run::run(args).await,
            cli::Command::Once(args) => run::once(args).await,
            cli::Command::Pause(args) => operate::steer("pause", args).await,
            cli::Command::Resume(args) => operate::steer("resume", args).await,
            cli::Command::Drain(args) => operate::steer("drain", args).await,
            cli::Command::Restart(args) => operate::steer("restart", args).await,
            cli::Command::RunNow(args) => operate::steer("run-now", args).await,
            cli::Command::Enable(args) => operate::steer("enable", args).await,
            cli::Command::Disable(args) => operate::steer("disable", args).await,
            cli::Command::Pool(command) => operate::pool(command).await,
            cli::Command::Rollout(command) => operate::rollout(command).await,
            cli::Command::Audit(args) => operate::audit(args).await,
            cli::Command::Events(args) => events::events(args).await,
            cli::Command::Alerts(args) => alerts::alerts(args).await,
            cli::Command::Prune(args) => events::prune(args).await,
            cli::Command::Check(args) => check::check(args).await,
            cli::Command::Status(args) => status::status(args).await,
        }
    });
    drop(runtime);
    output::flush_held();
    exit::end_process(exit)
}
