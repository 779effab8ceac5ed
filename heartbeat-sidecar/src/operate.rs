//! The operator commands: `pause|resume|drain|restart|run-now|enable|disable`,
//! `pool list|set` and `audit`. Every request goes through `hp_control()`
//! (Supabase) or the same rule in the local store; this module shows the
//! impact first, asks, sends, and with `--wait` follows the workers.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::Utc;
use heartbeat_sdk::read::Reader;
use heartbeat_sdk::sidecar::{ControlAnswer, ControlError, ControlRequest, Operator, PoolBudget};
use heartbeat_sdk::StatusRow;
use serde_json::{json, Value};

use crate::cli::{
    AuditArgs, PoolCommand, PoolListArgs, PoolSetArgs, RolloutCommand, RolloutRestartArgs,
    RolloutStatusArgs, SteerArgs,
};
use crate::exit::{fail, Exit, USAGE};
use crate::fleet::open_or_usage as open;
use crate::fleet::{applied, available, declared_actor, field, impact, pool_of, state_of};

/// A request was refused by a rule.
const REFUSED: i32 = 1;
/// `--wait` ran out of time.
const TIMED_OUT: i32 = 3;
/// How often `--wait` reads the rows.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Asks on the terminal; true to go on.
fn confirm_on_terminal(name_needed: Option<&str>) -> bool {
    let prompt = match name_needed {
        Some(pool) => format!("type the pool's name ({pool}) to go on: "),
        None => "go on? [y/N] ".to_owned(),
    };
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    let answer = answer.trim();
    match name_needed {
        Some(pool) => answer == pool,
        None => matches!(answer, "y" | "Y" | "yes"),
    }
}

/// `heartbeat-sidecar pause|resume|drain|restart|run-now|enable|disable`.
pub async fn steer(action: &str, args: SteerArgs) -> Exit {
    // `run-now` on the command line, `run_now` in the store.
    let action = &action.replace('-', "_");
    let (reader, operator) = match open(&args.store) {
        Ok(both) => both,
        Err(exit) => return exit,
    };
    let snapshot = match reader.fetch().await {
        Ok(s) => s,
        Err(e) => {
            return fail(
                USAGE,
                format!("cannot read the workers from {}: {e}", reader.describe()),
            )
        }
    };
    let targets: Vec<&StatusRow> = match &args.pool {
        Some(pool) => {
            let members: Vec<&StatusRow> = snapshot
                .rows
                .iter()
                .filter(|r| pool_of(r) == *pool)
                .collect();
            if members.is_empty() {
                return fail(USAGE, format!("pool {pool:?} has no workers (`heartbeat-sidecar pool list` shows the pools)"));
            }
            members
        }
        None => {
            let mut found = Vec::new();
            let mut seen = BTreeSet::new();
            // A name given twice is one worker.
            for name in args.names.iter().filter(|n| seen.insert(n.as_str())) {
                match snapshot.rows.iter().find(|r| r.worker_name == *name) {
                    Some(r) => found.push(r),
                    None => {
                        return fail(
                            USAGE,
                            format!("no worker named {name:?} in {} (`heartbeat-sidecar status` lists them)", reader.describe()),
                        )
                    }
                }
            }
            found
        }
    };
    // Without the budgets a protected pool would look unprotected.
    let budgets: BTreeMap<String, PoolBudget> = match operator.pools().await {
        Ok(b) => b.into_iter().map(|b| (b.pool.clone(), b)).collect(),
        Err(e) => return fail(USAGE, format!("cannot read the pools' budgets: {e}")),
    };
    let impact = impact(
        action,
        &targets,
        &snapshot,
        &budgets,
        args.pool.is_some(),
        args.force,
    );
    if !args.json {
        for line in &impact.lines {
            println!("{line}");
        }
    }
    if let Some(pools) = &impact.name_conflict {
        return fail(
            USAGE,
            format!("pools {pools} each need their name confirmed: ask one pool at a time"),
        );
    }
    let mut confirm = args.confirm.clone();
    let asks = std::io::stdin().is_terminal() && !args.yes && !args.json;
    if asks {
        if !confirm_on_terminal(impact.name_needed.as_deref()) {
            return fail(USAGE, "not confirmed: nothing was asked of the workers");
        }
        confirm = confirm.or(impact.name_needed.clone());
    } else if !args.yes {
        return fail(
            USAGE,
            "not a terminal: pass --yes to act (and --confirm POOL where a pool's name is needed)",
        );
    } else if let Some(pool) = &impact.name_needed {
        if confirm.as_deref() != Some(pool) {
            return fail(
                USAGE,
                format!("this takes down a whole or protected pool, or forces its budget: pass --confirm {pool}"),
            );
        }
    }
    let mut request = match &args.pool {
        Some(pool) => ControlRequest::pool(action.clone(), pool.clone()),
        None => ControlRequest::workers(action.clone(), args.names.clone()),
    };
    request.reason = args.reason.clone();
    request.confirm = confirm;
    request.force = args.force;
    if !operator.signed_in() {
        request.actor = Some(declared_actor());
    }
    let answer = match operator.control(&request).await {
        Ok(a) => a,
        Err(ControlError::Invalid { message, .. }) => return fail(USAGE, message),
        Err(e) => return fail(USAGE, e),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
    }
    if !answer.accepted() {
        if !args.json {
            println!(
                "refused ({}): {}",
                answer.rule.as_deref().unwrap_or("rule"),
                answer.message
            );
        }
        return Exit::Code(REFUSED);
    }
    if !args.json {
        println!("accepted (audit #{}): {}", answer.audit_id, answer.message);
    }
    if args.wait {
        return follow(&reader, action, &answer, args.timeout, args.json).await;
    }
    Exit::Code(0)
}

/// `--wait`: a line per worker as it applies the request; exit 3 naming who
/// did not within the timeout.
async fn follow(
    reader: &Reader,
    action: &str,
    answer: &ControlAnswer,
    timeout: Duration,
    json: bool,
) -> Exit {
    let generations = answer.generations.clone().unwrap_or_default();
    let mut waiting: BTreeSet<String> = generations.keys().cloned().collect();
    let started = Instant::now();
    let mut last: BTreeMap<String, StatusRow> = BTreeMap::new();
    while !waiting.is_empty() && started.elapsed() < timeout {
        tokio::time::sleep(WAIT_POLL).await;
        let Ok(snapshot) = reader.fetch().await else {
            continue;
        };
        for row in snapshot.rows {
            if !waiting.contains(&row.worker_name) {
                continue;
            }
            let generation = generations.get(&row.worker_name).copied().unwrap_or(0);
            if applied(action, &row, generation) {
                if !json {
                    println!(
                        "  {} {} after {:.1} s",
                        row.worker_name,
                        state_of(&row),
                        started.elapsed().as_secs_f64()
                    );
                }
                waiting.remove(&row.worker_name);
            } else {
                last.insert(row.worker_name.clone(), row);
            }
        }
    }
    if waiting.is_empty() {
        return Exit::Code(0);
    }
    let who: Vec<String> = waiting
        .iter()
        .map(|name| match last.get(name) {
            Some(r) => format!(
                "{name} (state {}, generation {} of {})",
                state_of(r),
                field(r, "control_generation").as_i64().unwrap_or(0),
                generations.get(name).copied().unwrap_or(0)
            ),
            None => name.clone(),
        })
        .collect();
    fail(
        TIMED_OUT,
        format!(
            "not applied within {}: {}",
            humantime::format_duration(timeout),
            who.join(", ")
        ),
    )
}

/// `heartbeat-sidecar pool list|set`.
pub async fn pool(command: PoolCommand) -> Exit {
    match command {
        PoolCommand::List(args) => pool_list(args).await,
        PoolCommand::Set(args) => pool_set(args).await,
    }
}

async fn pool_list(args: PoolListArgs) -> Exit {
    let (reader, operator) = match open(&args.store) {
        Ok(both) => both,
        Err(exit) => return exit,
    };
    let snapshot = match reader.fetch().await {
        Ok(s) => s,
        Err(e) => return fail(USAGE, e),
    };
    let mut budgets: BTreeMap<String, PoolBudget> = match operator.pools().await {
        Ok(b) => b.into_iter().map(|b| (b.pool.clone(), b)).collect(),
        Err(e) => return fail(USAGE, e),
    };
    for row in &snapshot.rows {
        let pool = pool_of(row);
        budgets
            .entry(pool.clone())
            .or_insert_with(|| PoolBudget::default_for(&pool));
    }
    let rows: Vec<Value> = budgets
        .values()
        .map(|b| {
            let members: Vec<&StatusRow> = snapshot
                .rows
                .iter()
                .filter(|r| pool_of(r) == b.pool)
                .collect();
            json!({
                "pool": b.pool,
                "members": members.len(),
                "available": members.iter().filter(|r| available(r, &snapshot)).count(),
                "max_unavailable": b.max_unavailable,
                "min_available": b.min_available,
                "protected": b.protected,
            })
        })
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Exit::Code(0);
    }
    println!(
        "{:<24} {:>7} {:>9} {:>15} {:>13} {:>9}",
        "POOL", "MEMBERS", "AVAILABLE", "MAX_UNAVAILABLE", "MIN_AVAILABLE", "PROTECTED"
    );
    for r in &rows {
        let n = |key: &str| r[key].as_i64().unwrap_or(0);
        println!(
            "{:<24} {:>7} {:>9} {:>15} {:>13} {:>9}",
            r["pool"].as_str().unwrap_or(""),
            n("members"),
            n("available"),
            n("max_unavailable"),
            n("min_available"),
            if r["protected"] == true { "yes" } else { "no" },
        );
    }
    Exit::Code(0)
}

async fn pool_set(args: PoolSetArgs) -> Exit {
    if args.max_unavailable.is_none() && args.min_available.is_none() && args.protected.is_none() {
        return fail(
            USAGE,
            "say what to set: --max-unavailable N, --min-available N or --protected true|false",
        );
    }
    let (_, operator) = match open(&args.store) {
        Ok(both) => both,
        Err(exit) => return exit,
    };
    let actor = (!operator.signed_in()).then(declared_actor);
    match operator
        .pool_set(
            &args.pool,
            args.max_unavailable,
            args.min_available,
            args.protected,
            actor.as_deref(),
        )
        .await
    {
        Ok(answer) => {
            println!(
                "pool {}: at most {} down, at least {} up{} (audit #{})",
                args.pool,
                answer["max_unavailable"],
                answer["min_available"],
                if answer["protected"] == true {
                    ", protected"
                } else {
                    ""
                },
                answer["audit_id"]
            );
            Exit::Code(0)
        }
        Err(e) => fail(USAGE, e),
    }
}

/// `heartbeat-sidecar audit`.
pub async fn audit(args: AuditArgs) -> Exit {
    let (_, operator) = match open(&args.store) {
        Ok(both) => both,
        Err(exit) => return exit,
    };
    let since = chrono::Duration::from_std(args.since)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d));
    let entries = match operator.audit(since, args.worker.as_deref()).await {
        Ok(e) => e,
        Err(e) => return fail(USAGE, e),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).unwrap_or_default()
        );
        return Exit::Code(0);
    }
    if entries.is_empty() {
        println!("Nothing in the audit log for that time.");
        return Exit::Code(0);
    }
    println!(
        "{:<20} {:<32} {:<10} {:<9} {:<28} REASON",
        "AT", "ACTOR", "ACTION", "OUTCOME", "WORKERS"
    );
    for e in entries {
        let workers = match (&e.workers, &e.pool) {
            (Some(w), _) if !w.is_empty() => w.join(","),
            (_, Some(pool)) => format!("pool {pool}"),
            _ => String::new(),
        };
        println!(
            "{:<20} {:<32} {:<10} {:<9} {:<28} {}",
            e.at.format("%Y-%m-%d %H:%M:%S"),
            e.actor,
            e.action,
            e.outcome,
            workers,
            e.reason.unwrap_or_default()
        );
    }
    Exit::Code(0)
}

/// How often a followed rollout is stepped.
const ROLLOUT_STEP_EVERY: Duration = Duration::from_secs(1);
/// A rollout ended stuck.
const STUCK: i32 = 3;
/// Ctrl-C: the rollout is left where it is.
const INTERRUPTED: i32 = 130;

/// `heartbeat-sidecar rollout restart|status|resume|abort`.
pub async fn rollout(command: RolloutCommand) -> Exit {
    match command {
        RolloutCommand::Restart(args) => rollout_restart(args).await,
        RolloutCommand::Status(args) => rollout_status(args).await,
        RolloutCommand::Resume(args) => {
            let (_, operator) = match open(&args.store) {
                Ok(both) => both,
                Err(exit) => return exit,
            };
            follow_rollout(&operator, args.id).await
        }
        RolloutCommand::Abort(args) => {
            let (_, operator) = match open(&args.store) {
                Ok(both) => both,
                Err(exit) => return exit,
            };
            let actor = (!operator.signed_in()).then(declared_actor);
            match operator
                .rollout_abort(args.id, args.reason.as_deref(), actor.as_deref())
                .await
            {
                Ok(summary) => {
                    println!(
                        "rollout {} aborted: {}",
                        args.id,
                        summary["state_reason"].as_str().unwrap_or("")
                    );
                    Exit::Code(0)
                }
                Err(e) => fail(USAGE, e),
            }
        }
    }
}

async fn rollout_restart(args: RolloutRestartArgs) -> Exit {
    let (reader, operator) = match open(&args.store) {
        Ok(both) => both,
        Err(exit) => return exit,
    };
    let snapshot = match reader.fetch().await {
        Ok(s) => s,
        Err(e) => return fail(USAGE, e),
    };
    let members: Vec<&StatusRow> = snapshot
        .rows
        .iter()
        .filter(|r| pool_of(r) == args.pool)
        .collect();
    if members.is_empty() {
        return fail(
            USAGE,
            format!(
                "pool {:?} has no workers (`heartbeat-sidecar pool list` shows the pools)",
                args.pool
            ),
        );
    }
    let up = members.iter().filter(|r| available(r, &snapshot)).count();
    println!(
        "rollout restart of pool {}: {} workers, {up} available now; {} at a time, each settled {} before the next",
        args.pool,
        members.len(),
        args.max_unavailable
            .map_or_else(|| "the budget's max_unavailable".to_owned(), |n| n.to_string()),
        humantime::format_duration(args.settle),
    );
    for r in &members {
        if let Some(how) = field(r, "controls")["restart"].as_str() {
            let line = if how == "no" {
                format!(
                    "  {} does not honour restart: the rollout will be stuck on it",
                    r.worker_name
                )
            } else {
                format!("  {}: restart {how}", r.worker_name)
            };
            println!("{line}");
        }
    }
    if std::io::stdin().is_terminal() && !args.yes {
        if !confirm_on_terminal(None) {
            return fail(USAGE, "not confirmed: no rollout was started");
        }
    } else if !args.yes {
        return fail(USAGE, "not a terminal: pass --yes to start the rollout");
    }
    let actor = (!operator.signed_in()).then(declared_actor);
    let started = operator
        .rollout_start(
            &args.pool,
            args.max_unavailable,
            i64::try_from(args.settle.as_secs()).unwrap_or(i64::MAX),
            i64::try_from(args.timeout.as_secs().max(1)).unwrap_or(i64::MAX),
            args.reason.as_deref(),
            args.confirm.as_deref(),
            actor.as_deref(),
        )
        .await;
    let answer = match started {
        Ok(a) => a,
        Err(ControlError::Invalid { message, .. }) => return fail(USAGE, message),
        Err(e) => return fail(USAGE, e),
    };
    if answer["outcome"] != "accepted" {
        println!(
            "refused ({}): {}",
            answer["rule"].as_str().unwrap_or("rule"),
            answer["message"].as_str().unwrap_or("")
        );
        return Exit::Code(REFUSED);
    }
    let Some(id) = answer["rollout_id"].as_i64() else {
        return fail(USAGE, format!("the store answered no rollout id: {answer}"));
    };
    println!(
        "{} (audit #{}); Ctrl-C leaves it where it is: `heartbeat-sidecar rollout resume {id}` picks it up",
        answer["message"].as_str().unwrap_or(""),
        answer["audit_id"]
    );
    follow_rollout(&operator, id).await
}

/// Steps the rollout every second until it ends, a line per worker as it
/// changes and a progress bar on a terminal; Ctrl-C leaves it running.
async fn follow_rollout(operator: &Operator, id: i64) -> Exit {
    let bar = indicatif::ProgressBar::new(0);
    let terminal = std::io::stderr().is_terminal();
    if terminal {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} workers  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let say = |line: String| {
        if terminal {
            bar.println(line);
        } else {
            println!("{line}");
        }
    };
    let started = Instant::now();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let step = tokio::select! {
            _ = &mut ctrl_c => {
                bar.abandon();
                say(format!("left rollout {id} where it is: `heartbeat-sidecar rollout resume {id}` follows it again, `rollout abort {id}` stops it"));
                return Exit::Code(INTERRUPTED);
            }
            step = operator.rollout_step(id) => step,
        };
        let summary = match step {
            Ok(s) => s,
            Err(ControlError::Invalid { message, .. }) => return fail(USAGE, message),
            Err(e) => {
                // A store that blinks does not end the rollout: it lives there.
                say(format!("  could not step rollout {id} ({e}); trying again"));
                tokio::time::sleep(ROLLOUT_STEP_EVERY).await;
                continue;
            }
        };
        let workers = summary["workers"].as_object().cloned().unwrap_or_default();
        bar.set_length(workers.len() as u64);
        let finished = workers
            .values()
            .filter(|s| {
                s.as_str()
                    .is_some_and(|s| s.starts_with("done") || s.starts_with("skipped"))
            })
            .count();
        bar.set_position(finished as u64);
        for (name, state) in &workers {
            let state = state.as_str().unwrap_or("").to_owned();
            if seen.get(name) != Some(&state) {
                if seen.contains_key(name) || state != "pending" {
                    say(format!(
                        "  {name} {state} ({:.0} s)",
                        started.elapsed().as_secs_f64()
                    ));
                }
                seen.insert(name.clone(), state);
            }
        }
        let reason = summary["state_reason"].as_str().unwrap_or("").to_owned();
        match summary["state"].as_str().unwrap_or("") {
            "running" => bar.set_message(format!("rollout {id} running")),
            "done" => {
                bar.finish_and_clear();
                println!("rollout {id} done: {reason}");
                return Exit::Code(0);
            }
            "stuck" => {
                bar.abandon();
                return fail(STUCK, format!("rollout {id} is stuck: {reason}"));
            }
            other => {
                bar.abandon();
                return fail(REFUSED, format!("rollout {id} is {other}: {reason}"));
            }
        }
        tokio::select! {
            _ = &mut ctrl_c => {
                bar.abandon();
                say(format!("left rollout {id} where it is: `heartbeat-sidecar rollout resume {id}` follows it again, `rollout abort {id}` stops it"));
                return Exit::Code(INTERRUPTED);
            }
            _ = tokio::time::sleep(ROLLOUT_STEP_EVERY) => {}
        }
    }
}

async fn rollout_status(args: RolloutStatusArgs) -> Exit {
    let (_, operator) = match open(&args.store) {
        Ok(both) => both,
        Err(exit) => return exit,
    };
    let summary = match operator.rollout_status(args.id, args.pool.as_deref()).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return fail(
                USAGE,
                "no rollout yet (`heartbeat-sidecar rollout restart --pool POOL` starts one)",
            )
        }
        Err(e) => return fail(USAGE, e),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
        return Exit::Code(0);
    }
    println!(
        "rollout {} of pool {}: {}{} ({} at a time)",
        summary["rollout_id"],
        summary["pool"].as_str().unwrap_or(""),
        summary["state"].as_str().unwrap_or(""),
        summary["state_reason"]
            .as_str()
            .map(|r| format!(": {r}"))
            .unwrap_or_default(),
        summary["batch_size"]
    );
    for (name, state) in summary["workers"].as_object().into_iter().flatten() {
        println!("  {name:<24} {}", state.as_str().unwrap_or(""));
    }
    Exit::Code(0)
}
