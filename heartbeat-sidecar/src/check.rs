//! `heartbeat-sidecar check`: one row written, and plain words about what is wrong.

use heartbeat_sdk::read::Reader;
use heartbeat_sdk::{CheckError, Health, Heartbeat};

use crate::cli::CheckArgs;
use crate::exit::{Exit, USAGE};
use crate::table::ago;

/// Prints the outcome; exit 0 good, 1 refused, 2 configuration.
pub async fn check(args: CheckArgs) -> Exit {
    let settings = match args.store.settings() {
        Ok(s) => s,
        Err(e) => {
            println!("✗ configuration: {e}");
            return Exit::Code(USAGE);
        }
    };
    let target = match heartbeat_sdk::sidecar::resolve(&settings) {
        Ok(t) => t,
        Err(e) => {
            println!("✗ configuration: {e}");
            return Exit::Code(USAGE);
        }
    };
    println!("target:  {}", target.describe());
    if let heartbeat_sdk::sidecar::Target::Supabase(config) = &target {
        if let Some(key) = heartbeat_sdk::sidecar::describe_key(&settings) {
            println!("key:     {key}");
        }
        println!("schema:  {}", config.schema);
    }
    // A worker already reporting under this name: writing an `unknown` row
    // over it would mislead readers until its next beat. Leave it alone.
    let existing = match Reader::open(&settings) {
        Ok(reader) => reader.fetch().await.ok(),
        Err(_) => None,
    };
    if let Some(snapshot) = existing {
        if let Some(row) = snapshot.rows.iter().find(|r| r.worker_name == args.name) {
            if row.health(snapshot.now) == Health::Running {
                let seen = row
                    .last_heartbeat
                    .map(|t| ago(snapshot.now, t))
                    .unwrap_or_default();
                println!(
                    "✓ {:?} is already reporting (last beat {seen}); its row was left alone.\nReading works; to test writing too, run check with another --name.",
                    args.name
                );
                return Exit::Code(0);
            }
        }
    }
    let result = Heartbeat::builder(&args.name)
        .store_settings(settings)
        .handle_signals(false)
        .reporter(concat!("heartbeat-sidecar/", env!("CARGO_PKG_VERSION")))
        .check()
        .await;
    match result {
        Ok(()) => {
            println!(
                "✓ wrote a row for {:?} (status unknown until the worker's first beat replaces it)\nAll good: workers with this configuration will report.",
                args.name
            );
            Exit::Code(0)
        }
        Err(CheckError::Config(e)) => {
            println!("✗ configuration: {e}");
            Exit::Code(USAGE)
        }
        Err(CheckError::Send(e)) => {
            println!("✗ the row was not written: {e}");
            Exit::Code(1)
        }
    }
}
