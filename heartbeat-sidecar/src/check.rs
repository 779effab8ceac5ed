//! `heartbeat-sidecar check`: one row written, and plain words about what is wrong.

use heartbeat_sdk::{CheckError, Heartbeat};

use crate::cli::CheckArgs;

/// Prints the outcome; returns the exit code (0 good, 1 refused, 2 configuration).
pub async fn check(args: CheckArgs) -> i32 {
    let settings = args.store.settings();
    let target = match settings.resolve() {
        Ok(t) => t,
        Err(e) => {
            println!("✗ configuration: {e}");
            return 2;
        }
    };
    println!("target:  {}", target.describe());
    if let heartbeat_sdk::Target::Supabase(config) = &target {
        let source = settings
            .key
            .as_ref()
            .map(|(_, s)| s.as_str())
            .unwrap_or("?");
        println!("key:     {:?} from {source}", config.key);
        println!("schema:  {}", config.schema);
    }
    // A worker already reporting under this name: writing an `unknown` row
    // over it would mislead readers until its next beat. Leave it alone.
    let existing = match crate::status::Source::open(&target) {
        Ok(source) => source.fetch().await.ok(),
        Err(_) => None,
    };
    if let Some(snapshot) = existing {
        if let Some(row) = snapshot.rows.iter().find(|r| r.worker_name == args.name) {
            if row.health(snapshot.now) == heartbeat_sdk::Health::Running {
                let seen = row
                    .last_heartbeat
                    .map(|t| crate::status::ago(snapshot.now, t))
                    .unwrap_or_default();
                println!(
                    "✓ {:?} is already reporting (last beat {seen}); its row was left alone.\nReading works; to test writing too, run check with another --name.",
                    args.name
                );
                return 0;
            }
        }
    }
    let result = Heartbeat::builder(&args.name)
        .settings(settings)
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
            0
        }
        Err(CheckError::Config(e)) => {
            println!("✗ configuration: {e}");
            2
        }
        Err(CheckError::Send(e)) => {
            println!("✗ the row was not written: {e}");
            1
        }
    }
}
