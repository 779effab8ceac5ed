//! `heartbeat-sidecar check`: prove the configuration, reading and writing,
//! without touching any worker's row; say in plain words what is wrong.

use heartbeat_sdk::read::Reader;
use heartbeat_sdk::sidecar::Target;
use heartbeat_sdk::{CheckError, Checked, Heartbeat};

use crate::cli::CheckArgs;
use crate::exit::{Exit, USAGE};
use crate::table::ago;

/// Prints the outcome; exit 0 good, 1 refused, 2 configuration.
pub async fn check(args: CheckArgs) -> Exit {
    let settings = match args.store.settings() {
        Ok(s) => s,
        Err(e) => return config_error(&e),
    };
    let target = match heartbeat_sdk::sidecar::resolve(&settings) {
        Ok(t) => t,
        Err(e) => return config_error(&e),
    };
    println!("target:  {}", target.describe());
    if let Target::Supabase(config) = &target {
        if let Some(key) = heartbeat_sdk::sidecar::describe_key(&settings) {
            println!("key:     {key}");
        }
        println!("schema:  {}", config.schema);
        if let Some(warning) = config.key_warning() {
            println!("! {warning}");
        }
    }
    let mut failed = false;

    // Reading: what `status` and the workers' start-up look at.
    match Reader::open(&settings) {
        Ok(reader) => match reader.fetch().await {
            Ok(snapshot) => {
                println!("✓ read {} worker row(s)", snapshot.rows.len());
                if let Some(name) = &args.name {
                    match snapshot.rows.iter().find(|r| &r.worker_name == name) {
                        Some(row) => println!(
                            "  {name}: {}, last beat {}",
                            row.health(snapshot.now).as_str(),
                            row.last_heartbeat
                                .map(|t| ago(snapshot.now, t))
                                .unwrap_or_else(|| "never".into())
                        ),
                        None => println!("  {name}: no row yet"),
                    }
                }
            }
            // A store nobody wrote yet is not a failure: the write below makes it.
            Err(e) if matches!(target, Target::Local(_)) => {
                println!("· nothing to read yet ({e})");
            }
            Err(e) => {
                println!("✗ reading failed: {e}");
                failed = true;
            }
        },
        Err(e) => return config_error(&e),
    }

    // Writing, under a throwaway name: no worker's row is touched.
    let result = Heartbeat::builder(args.name.as_deref().unwrap_or("heartbeat-check"))
        .store_settings(settings)
        .handle_signals(false)
        .reporter(concat!("heartbeat-sidecar/", env!("CARGO_PKG_VERSION")))
        .check()
        .await;
    match result {
        Ok(Checked::Wrote { probe }) => {
            println!("✓ wrote a probe row ({probe}) and removed it; no worker's row was touched");
        }
        Ok(Checked::ReadScoped { worker }) => println!(
            "✓ the key is scoped to worker {worker:?} (hp_reporter): its row was read; writing was not probed, so the row stays as it is"
        ),
        Ok(_) => {}
        Err(CheckError::Config(e)) => return config_error(&e),
        Err(e) => {
            println!("✗ writing failed: {e}");
            failed = true;
        }
    }
    if failed {
        Exit::Code(1)
    } else {
        println!("All good: workers with this configuration will report.");
        Exit::Code(0)
    }
}

fn config_error(e: &dyn std::fmt::Display) -> Exit {
    println!("✗ configuration: {e}");
    Exit::Code(USAGE)
}
