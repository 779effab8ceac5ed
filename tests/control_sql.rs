//! Control in PostgreSQL (`sql/20261124000001_hp_control.sql`), exercised as
//! PostgREST does: logged in as `authenticator`, switched per request to the
//! JWT's role with `set_config('role', ..)` and `set_config('request.jwt.claims', ..)`,
//! then `select public.fn(arg := value, ...)` for `POST /rest/v1/rpc/fn`.
//!
//! The rules themselves are data, `tests/control_scenarios.json`, an array of
//! scenarios, each starting from an empty store:
//!
//! - `name`; `pools`: `hp_pool` rows (`pool`, and optionally
//!   `max_unavailable`, `min_available`, `protected`);
//! - `workers`: status rows `{name, pool, status, age_seconds, interval}`
//!   (stale after 2.5 intervals), optionally `exit_code`, and `desired` /
//!   `restart_pending`, which also give the worker a control row at
//!   generation 1;
//! - `request`: the `hp_control` arguments, made as service_role;
//! - `expect`: `outcome`, `rule` (null for none), `available_before`,
//!   `available_after`, optionally `forced`, `pool`, `message_contains`, and
//!   `control` (worker -> fields its control row must have, or null for no
//!   row); or `error` (SQLSTATE) with `message_contains`.
//!
//! The full format, and the checks every scenario gets beyond `expect`, are in
//! `hp_heartbeat_tests::control_scenarios`, which also holds the comparison:
//! a runner for another store only builds the rows, makes the request and
//! returns an `Observed`, as [`run_scenario`] does here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hp_heartbeat_tests::control_scenarios::{self, AuditRow, ControlRow, Observed, StoreError};
use hp_heartbeat_tests::pg::{self, migrated, Database};
use hp_heartbeat_tests::postgrest_sql::{self, quote_literal, COLUMN_TYPES_SQL};
use serde_json::{json, Value};

fn service() -> Value {
    json!({"role": "service_role"})
}

fn operator() -> Value {
    json!({
        "role": "authenticated",
        "sub": "6f2c1a7e-0000-4000-8000-000000000001",
        "email": "ops@example.com",
        "app_metadata": {"provider": "email", "hp_role": "operator"},
    })
}

fn signed_in_user() -> Value {
    json!({
        "role": "authenticated",
        "sub": "6f2c1a7e-0000-4000-8000-000000000002",
        "email": "someone@example.com",
        "app_metadata": {"provider": "email"},
        // user_metadata is the user's own to edit: it must not make an operator.
        "user_metadata": {"hp_role": "operator"},
    })
}

/// `sql` as PostgREST runs a request with these JWT claims: a session of
/// `authenticator`, role and claims set for the transaction. `None`: the
/// owner with no claims (SQL editor, psql, pg_cron).
fn api(db: &Database, claims: Option<&Value>, sql: &str) -> Result<String, String> {
    match claims {
        None => db.sql(&format!("{sql};\n")),
        Some(claims) => {
            let role = claims["role"].as_str().unwrap_or("anon");
            db.sql(&format!(
                "set session authorization authenticator;\nbegin;\n\
                 select set_config('role', {}, true), set_config('request.jwt.claims', {}, true) \\g /dev/null\n\
                 {sql};\ncommit;\n",
                quote_literal(role),
                quote_literal(&claims.to_string()),
            ))
        }
    }
}

/// `POST /rest/v1/rpc/<function>` with `args` as the body; the answer as JSON.
fn rpc(
    db: &Database,
    claims: Option<&Value>,
    function: &str,
    args: Value,
) -> Result<Value, String> {
    let sql = postgrest_sql::rpc(function, &args)?;
    let out = api(db, claims, &sql)?;
    serde_json::from_str(&out).map_err(|e| format!("{function} answered {out:?}: {e}"))
}

fn columns(db: &Database) -> BTreeMap<String, String> {
    postgrest_sql::parse_column_types(&db.sql(COLUMN_TYPES_SQL).expect("columns"))
}

/// A beat: the upsert supabase-js makes for this row.
fn beat(db: &Database, claims: &Value, row: &Value) -> Result<String, String> {
    let sql = postgrest_sql::upsert(row, &columns(db))?;
    api(db, Some(claims), &sql)
}

fn instance(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn worker_row(name: &str, pool: &str, instance_n: u64) -> Value {
    json!({
        "worker_name": name,
        "pool": pool,
        "status": "running",
        "instance_id": instance(instance_n),
        "heartbeat_interval_seconds": 30,
        "jobs_processed": 1,
    })
}

/// Running workers, written by their first beats (as service_role).
fn add_workers(db: &Database, pool: &str, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        beat(db, &service(), &worker_row(name, pool, 1000 + i as u64)).expect("first beat");
    }
}

fn one(db: &Database, sql: &str) -> String {
    db.sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn sqlstate(err: &str) -> &str {
    err.lines()
        .find_map(|l| l.strip_prefix("ERROR:  "))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or("")
}

// ---------------------------------------------------------------------------
// The scenario table.

/// Builds a scenario's rows, makes its request as service_role and reads
/// what it left, all in one transaction that is rolled back (so every
/// scenario starts empty and `now()` is one instant for the ages).
fn run_scenario(db: &Database, s: &control_scenarios::Scenario) -> Observed {
    let mut sql = String::from("begin;\n");
    let or_default = |v: Option<String>| v.unwrap_or_else(|| "default".into());
    for p in &s.pools {
        sql.push_str(&format!(
            "insert into public.hp_pool (pool, max_unavailable, min_available, protected) values ({}, {}, {}, {});\n",
            quote_literal(&p.pool),
            or_default(p.max_unavailable.map(|v| v.to_string())),
            or_default(p.min_available.map(|v| v.to_string())),
            or_default(p.protected.map(|v| v.to_string())),
        ));
    }
    // Rows as they would stand, with their ages: the stamp triggers are off.
    sql.push_str("set local session_replication_role = replica;\n");
    for (i, w) in s.workers.iter().enumerate() {
        sql.push_str(&format!(
            "insert into public.hp_worker_status (worker_name, pool, status, last_heartbeat, heartbeat_interval_seconds, instance_id, instance_since, exit_code) \
             values ({}, {}, {}, now() - make_interval(secs => {}), {}, '{}', now() - interval '1 hour', {});\n",
            quote_literal(&w.name),
            quote_literal(&w.pool),
            quote_literal(&w.status),
            w.age_seconds,
            w.interval,
            instance(i as u64 + 1),
            w.exit_code.map_or("null".into(), |c| c.to_string()),
        ));
        if w.has_control_row() {
            let pending = w.restart_pending.unwrap_or(false);
            sql.push_str(&format!(
                "insert into public.hp_worker_control (worker_name, desired, generation, restart_seq, restart_requested_at) \
                 values ({}, {}, 1, {}, {});\n",
                quote_literal(&w.name),
                quote_literal(w.desired.as_deref().unwrap_or("active")),
                i32::from(pending),
                if pending { "now() - interval '1 second'" } else { "null" },
            ));
        }
    }
    sql.push_str("set local session_replication_role = origin;\n");
    sql.push_str(
        "set local session authorization authenticator;\n\
         select set_config('role', 'service_role', true), set_config('request.jwt.claims', '{\"role\":\"service_role\"}', true) \\g /dev/null\n",
    );
    let r = &s.request;
    let mut args = serde_json::Map::new();
    args.insert("action".into(), json!(r.action));
    let mut opt = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            args.insert(k.into(), v);
        }
    };
    opt("workers", r.workers.clone().map(Value::from));
    opt("pool", r.pool.clone().map(Value::from));
    opt("reason", r.reason.clone().map(Value::from));
    opt("confirm", r.confirm.clone().map(Value::from));
    opt("force", r.force.map(Value::from));
    opt("actor", r.actor.clone().map(Value::from));
    let call = postgrest_sql::rpc("hp_control", &Value::Object(args)).expect("rpc");
    // A failed call is observed too: back to the savepoint, then read.
    sql.push_str(&format!(
        "savepoint request;\n\\set ON_ERROR_STOP 0\n\\echo '#answer'\n{call};\n\\set ON_ERROR_STOP 1\n\
         \\if :ERROR\nrollback to savepoint request;\n\\endif\n"
    ));
    sql.push_str(
        "\\echo '#control'\n\
         select coalesce(json_agg(json_build_object('worker_name', c.worker_name, 'desired', c.desired, \
           'generation', c.generation, 'restart_seq', c.restart_seq, 'run_now_seq', c.run_now_seq, \
           'drain_seq', c.drain_seq, 'restart_pending', a.restart_pending) order by c.worker_name), '[]') \
         from public.hp_worker_control c join public.hp_worker_availability a using (worker_name);\n\
         \\echo '#audit'\n\
         select coalesce(json_agg(json_build_object('actor', l.actor, 'action', l.action, \
           'outcome', l.outcome, 'detail', l.detail) order by l.id), '[]') from public.hp_audit_log l;\n\
         rollback;\n",
    );
    let out = db.sql_output(&sql).expect("psql runs");
    assert!(
        out.success,
        "{}: setup or read failed: {}",
        s.name, out.stderr
    );
    let section = |tag: &str| -> Option<String> {
        let mut lines = out.stdout.lines().skip_while(|l| *l != tag);
        lines.next()?;
        lines
            .next()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
    };
    let answer = match section("#answer") {
        Some(json) => Ok(serde_json::from_str(&json).expect("answer is JSON")),
        None => {
            let line = out
                .stderr
                .lines()
                .find_map(|l| l.strip_prefix("ERROR:  "))
                .unwrap_or_else(|| panic!("{}: no answer and no error: {out:?}", s.name));
            let (code, message) = line.split_once(": ").unwrap_or(("", line));
            Err(StoreError {
                code: code.to_owned(),
                message: message.to_owned(),
            })
        }
    };
    let control: Vec<Value> =
        serde_json::from_str(&section("#control").expect("control rows")).expect("json");
    let control = control
        .into_iter()
        .map(|v| {
            let name = v["worker_name"].as_str().unwrap_or_default().to_owned();
            (
                name,
                serde_json::from_value::<ControlRow>(v).expect("control row"),
            )
        })
        .collect();
    let audit: Vec<AuditRow> =
        serde_json::from_str(&section("#audit").expect("audit rows")).expect("json");
    Observed {
        answer,
        control,
        audit,
    }
}

#[test]
fn scenarios_hold_in_postgres() {
    let Some(db) = migrated("scenarios") else {
        return;
    };
    let scenarios = control_scenarios::load(&pg::repo_root().join("tests/control_scenarios.json"));
    assert!(scenarios.len() >= 40, "the table covers every rule");
    let mut failures = Vec::new();
    for s in &scenarios {
        let seen = run_scenario(&db, s);
        let bad = control_scenarios::check(s, &seen);
        if !bad.is_empty() {
            failures.push(format!("{}:\n    {}", s.name, bad.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        scenarios.len(),
        failures.join("\n")
    );
}

/// The checker itself fails on a wrong store: a run whose answers are
/// tampered with is caught.
#[test]
fn scenario_checker_catches_a_wrong_answer() {
    let Some(db) = migrated("checker") else {
        return;
    };
    let scenarios = control_scenarios::load(&pg::repo_root().join("tests/control_scenarios.json"));
    let refused = scenarios
        .iter()
        .find(|s| s.expect.rule.as_deref() == Some("max_unavailable"))
        .expect("a max_unavailable scenario");
    let mut seen = run_scenario(&db, refused);
    assert!(control_scenarios::check(refused, &seen).is_empty());
    if let Ok(answer) = &mut seen.answer {
        answer["outcome"] = json!("accepted");
    }
    seen.audit.clear();
    let bad = control_scenarios::check(refused, &seen);
    assert!(
        bad.iter().any(|b| b.starts_with("outcome")) && bad.iter().any(|b| b.contains("audit")),
        "{bad:?}"
    );
}

// ---------------------------------------------------------------------------
// Who may call.

#[test]
fn security_definer_sees_the_owner_and_the_claims_not_the_caller() {
    // What a SECURITY DEFINER function sees when PostgREST calls it: the
    // claims are the only reliable identity of the caller.
    let Some(db) = migrated("definer") else {
        return;
    };
    db.sql(
        "create function public.probe() returns text language sql security definer set search_path = '' \
         as $$ select current_user || ' ' || session_user || ' ' || current_setting('role') || ' ' \
               || coalesce(current_setting('request.jwt.claims', true), '') $$;\n\
         grant execute on function public.probe() to service_role, authenticated;",
    )
    .expect("probe");
    let seen = api(&db, Some(&operator()), "select public.probe()").expect("probe call");
    let mut parts = seen.splitn(4, ' ');
    assert_eq!(parts.next(), Some("postgres"), "current_user is the owner");
    assert_eq!(
        parts.next(),
        Some("authenticator"),
        "session_user is the login role"
    );
    assert_eq!(
        parts.next(),
        Some("authenticated"),
        "the role setting is the JWT's role"
    );
    let claims: Value = serde_json::from_str(parts.next().unwrap_or("")).expect("claims");
    assert_eq!(claims["email"], "ops@example.com");
}

#[test]
fn each_role_gets_its_answer() {
    let Some(db) = migrated("roles") else { return };
    add_workers(&db, "orders", &["orders-1", "orders-2", "orders-3"]);
    db.sql(
        "select public.hp_pool_set(pool := 'orders', max_unavailable := 3, min_available := 0);",
    )
    .expect("budget");
    let run_now = |w: &str| json!({"action": "run_now", "workers": [w]});

    // anon: no EXECUTE, whatever the function.
    let anon = json!({"role": "anon"});
    for (f, args) in [
        ("hp_control", run_now("orders-1")),
        ("hp_pool_set", json!({"pool": "orders"})),
        ("hp_rollout_start", json!({"pool": "orders"})),
        ("hp_rollout_step", json!({"id": 1})),
        ("hp_rollout_abort", json!({"id": 1})),
    ] {
        let e = rpc(&db, Some(&anon), f, args).expect_err("anon calls");
        assert!(
            sqlstate(&e) == "42501" && e.contains("permission denied for function"),
            "{f}: {e}"
        );
    }
    // Signed in, without the operator claim (user_metadata does not count).
    for (f, args) in [
        ("hp_control", run_now("orders-1")),
        ("hp_pool_set", json!({"pool": "orders"})),
        ("hp_rollout_start", json!({"pool": "orders"})),
        ("hp_rollout_step", json!({"id": 1})),
        ("hp_rollout_abort", json!({"id": 1})),
    ] {
        let e = rpc(&db, Some(&signed_in_user()), f, args).expect_err("a plain user calls");
        assert!(
            sqlstate(&e) == "42501"
                && e.contains("needs an operator")
                && e.contains("app_metadata.hp_role"),
            "{f}: {e}"
        );
    }
    // The reporter role has no EXECUTE either.
    let reporter = json!({"role": "hp_reporter", "worker_name": "orders-1"});
    let e = rpc(&db, Some(&reporter), "hp_control", run_now("orders-1")).expect_err("reporter");
    assert_eq!(sqlstate(&e), "42501", "{e}");

    // Operators: actor from email, else sub.
    let a = rpc(&db, Some(&operator()), "hp_control", run_now("orders-1")).expect("operator");
    assert_eq!(a["outcome"], "accepted");
    let mut no_email = operator();
    if let Some(claims) = no_email.as_object_mut() {
        claims.remove("email");
    }
    rpc(&db, Some(&no_email), "hp_control", run_now("orders-2")).expect("operator by sub");
    // service_role, with and without a declared actor.
    rpc(
        &db,
        Some(&service()),
        "hp_control",
        json!({"action": "run_now", "workers": ["orders-3"], "actor": "alice@laptop"}),
    )
    .expect("service_role declared");
    rpc(&db, Some(&service()), "hp_control", run_now("orders-3")).expect("service_role");
    // The owner with no claims (SQL editor, pg_cron).
    rpc(&db, None, "hp_control", run_now("orders-1")).expect("owner");

    let audit = one(
        &db,
        "select string_agg(actor || '|' || (detail->>'role') || '|' || (detail->>'actor_declared'), E'\\n' order by id) from hp_audit_log where action = 'run_now';",
    );
    assert_eq!(
        audit.lines().collect::<Vec<_>>(),
        [
            "ops@example.com|authenticated|false",
            "6f2c1a7e-0000-4000-8000-000000000001|authenticated|false",
            "service_role (declared alice@laptop)|service_role|true",
            "service_role|service_role|false",
            "database:postgres|database|false",
        ]
    );
    // Under REPEATABLE READ the counts could be stale: refused.
    let e = db
        .sql("begin isolation level repeatable read; select public.hp_control(action := 'run_now', workers := array['orders-1']); commit;")
        .expect_err("repeatable read");
    assert!(
        sqlstate(&e) == "0A000" && e.contains("REPEATABLE READ"),
        "{e}"
    );
    // An API role without claims did not come through PostgREST: refused.
    let e = db
        .sql("begin; set local role service_role; select public.hp_control(action := 'run_now', workers := array['orders-1']); commit;")
        .expect_err("service_role without claims");
    assert!(
        sqlstate(&e) == "42501" && e.contains("without JWT claims"),
        "{e}"
    );
}

#[test]
fn reads_are_scoped_per_role() {
    let Some(db) = migrated("reads") else { return };
    add_workers(&db, "orders", &["orders-1", "orders-2"]);
    rpc(
        &db,
        Some(&service()),
        "hp_control",
        json!({"action": "run_now", "pool": "orders"}),
    )
    .expect("rows");
    rpc(
        &db,
        Some(&service()),
        "hp_pool_set",
        json!({"pool": "orders", "max_unavailable": 1}),
    )
    .expect("pool");
    let count = |claims: &Value, table: &str| {
        api(
            &db,
            Some(claims),
            &format!("select count(*) from public.{table}"),
        )
    };
    // Dashboards (any signed-in user) read control rows, pools, rollouts, availability.
    for table in [
        "hp_worker_control",
        "hp_pool",
        "hp_rollout",
        "hp_rollout_worker",
        "hp_worker_availability",
    ] {
        count(&signed_in_user(), table).unwrap_or_else(|e| panic!("{table}: {e}"));
    }
    assert_eq!(
        count(&signed_in_user(), "hp_worker_control").as_deref(),
        Ok("2")
    );
    // The audit log: operators and service_role only.
    assert_eq!(count(&signed_in_user(), "hp_audit_log").as_deref(), Ok("0"));
    assert_eq!(count(&operator(), "hp_audit_log").as_deref(), Ok("2"));
    assert_eq!(count(&service(), "hp_audit_log").as_deref(), Ok("2"));
    let anon = json!({"role": "anon"});
    for table in [
        "hp_worker_control",
        "hp_pool",
        "hp_audit_log",
        "hp_rollout",
        "hp_worker_availability",
    ] {
        let e = count(&anon, table).expect_err("anon reads");
        assert_eq!(sqlstate(&e), "42501", "{table}: {e}");
    }
    // Nobody writes the control tables directly, not even service_role.
    for claims in [service(), operator()] {
        for write in [
            "update public.hp_worker_control set desired = 'paused'",
            "insert into public.hp_worker_control (worker_name) values ('orders-1')",
            "delete from public.hp_worker_control",
            "insert into public.hp_pool (pool) values ('x')",
            "update public.hp_pool set protected = true",
            "insert into public.hp_audit_log (actor, action, outcome) values ('me', 'pause', 'accepted')",
            "update public.hp_rollout set state = 'done'",
        ] {
            let e = api(&db, Some(&claims), write).expect_err(write);
            assert_eq!(sqlstate(&e), "42501", "{claims}: {write}: {e}");
        }
    }
}

#[test]
fn the_audit_log_is_insert_only_even_for_its_owner() {
    let Some(db) = migrated("insertonly") else {
        return;
    };
    add_workers(&db, "orders", &["orders-1"]);
    rpc(
        &db,
        None,
        "hp_control",
        json!({"action": "run_now", "workers": ["orders-1"]}),
    )
    .expect("an audit row");
    for sql in [
        "update public.hp_audit_log set actor = 'someone else'",
        "delete from public.hp_audit_log",
        "truncate public.hp_audit_log",
    ] {
        let e = api(&db, Some(&service()), sql).expect_err("service_role");
        assert!(
            sqlstate(&e) == "42501" && e.contains("permission denied"),
            "service_role: {sql}: {e}"
        );
        // The owner here is a superuser: privileges do not stop it, the trigger does.
        let e = db.sql(&format!("{sql};")).expect_err("owner");
        assert!(
            sqlstate(&e) == "42501" && e.contains("hp_audit_log is insert-only"),
            "owner: {sql}: {e}"
        );
    }
    assert_eq!(
        one(
            &db,
            "select count(*) || ' ' || max(actor) from hp_audit_log;"
        ),
        "1 database:postgres"
    );
    // No role other than the owner holds a write privilege on it.
    let holders = one(
        &db,
        "select coalesce(string_agg(distinct a.grantee::regrole::text || ':' || a.privilege_type, ','), 'none') \
         from pg_class c, aclexplode(c.relacl) a \
         where c.oid = 'public.hp_audit_log'::regclass and a.privilege_type in ('UPDATE', 'DELETE', 'TRUNCATE');",
    );
    assert_eq!(holders, "none");
}

#[test]
fn functions_are_security_definer_with_an_empty_search_path_and_explicit_grants() {
    let Some(db) = migrated("catalog") else {
        return;
    };
    let rows = one(
        &db,
        "select string_agg(p.oid::regprocedure::text || ' ' || p.prosecdef || ' ' || coalesce(array_to_string(p.proconfig, ','), '-') \
           || ' anon=' || has_function_privilege('anon', p.oid, 'execute') \
           || ' authenticated=' || has_function_privilege('authenticated', p.oid, 'execute') \
           || ' service_role=' || has_function_privilege('service_role', p.oid, 'execute'), E'\\n' order by 1) \
         from pg_proc p where p.pronamespace = 'public'::regnamespace and p.proname like 'hp\\_%';",
    );
    let api_functions = [
        "hp_control(",
        "hp_pool_set(",
        "hp_rollout_start(",
        "hp_rollout_step(",
        "hp_rollout_abort(",
    ];
    // The sweep, prune and alert cursor: the secret key's (a watcher,
    // pg_cron, the CLI), no one else's.
    let service_functions = [
        "hp_sweep(",
        "hp_prune(",
        "hp_alert_claim(",
        "hp_alert_ack(",
        "hp_alert_release(",
    ];
    let mut seen_api = 0;
    for line in rows.lines() {
        assert!(line.contains("search_path=\"\""), "{line}");
        assert!(line.contains("anon=false"), "{line}");
        if service_functions.iter().any(|f| line.starts_with(f)) {
            assert!(
                line.contains(" true ")
                    && line.contains("authenticated=false")
                    && line.contains("service_role=true"),
                "{line}"
            );
        } else if api_functions.iter().any(|f| line.starts_with(f)) {
            seen_api += 1;
            assert!(
                line.contains(" true ")
                    && line.contains("authenticated=true")
                    && line.contains("service_role=true"),
                "{line}"
            );
        } else {
            assert!(
                line.contains("authenticated=false") && line.contains("service_role=false"),
                "internal: {line}"
            );
        }
    }
    assert_eq!(seen_api, api_functions.len(), "{rows}");
}

// ---------------------------------------------------------------------------
// Migrations.

/// Everything the control migration defines (and the status table's parts
/// it adds to), in a comparable text form.
fn control_snapshot(db: &Database) -> String {
    db.sql(
        "with t(rel) as (values ('hp_worker_status'), ('hp_worker_control'), ('hp_pool'), ('hp_audit_log'),
                                ('hp_control_pending'), ('hp_rollout'), ('hp_rollout_worker'), ('hp_worker_availability'))
         select 'col ' || c.relname || '.' || attname || ' ' || format_type(atttypid, atttypmod) || ' ' || attnotnull
                || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ' ' || coalesce((select string_agg(x::text, ',' order by x::text) from unnest(attacl) x), '')
           from pg_attribute a join pg_class c on c.oid = a.attrelid join t on t.rel = c.relname
           left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
          where c.relnamespace = 'public'::regnamespace and attnum > 0 and not attisdropped
         union all select 'con ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) || ' ' || convalidated
           from pg_constraint where connamespace = 'public'::regnamespace
         union all select 'idx ' || indexrelid::regclass::text || ' ' || pg_get_indexdef(indexrelid) from pg_index
          where indrelid in (select oid from pg_class where relnamespace = 'public'::regnamespace)
         union all select 'trg ' || tgrelid::regclass::text || ' ' || tgname || ' ' || tgenabled::text || ' ' || pg_get_triggerdef(oid)
           from pg_trigger where not tgisinternal
         union all select 'pol ' || tablename || ' ' || policyname || ' ' || cmd || ' ' || roles::text || ' ' || coalesce(qual, '') || ' ' || coalesce(with_check, '')
           from pg_policies where schemaname = 'public'
         union all select 'acl ' || relname || ' ' || coalesce((select string_agg(x::text, ',' order by x::text) from unnest(relacl) x), '') || ' ' || coalesce(reloptions::text, '') || ' ' || relrowsecurity
           from pg_class where relnamespace = 'public'::regnamespace
         union all select 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid) from pg_class c where c.relkind = 'v' and c.relnamespace = 'public'::regnamespace
         union all select 'fn ' || oid::regprocedure::text || ' ' || md5(prosrc) || ' ' || prosecdef || ' ' || coalesce(proconfig::text, '') || ' ' || coalesce((select string_agg(x::text, ',' order by x::text) from unnest(proacl) x), '')
           from pg_proc where pronamespace = 'public'::regnamespace
         order by 1;",
    )
    .expect("snapshot")
}

#[test]
fn control_migration_applies_twice_changing_nothing() {
    let Some(db) = migrated("ctl_idem") else {
        return;
    };
    add_workers(&db, "orders", &["orders-1", "orders-2"]);
    rpc(
        &db,
        None,
        "hp_control",
        json!({"action": "pause", "workers": ["orders-1"]}),
    )
    .expect("a request");
    let first = control_snapshot(&db);
    assert!(
        first.contains("fn hp_control(text,text[],text,text,text,boolean,text)"),
        "{first}"
    );
    db.migrate(true).expect("all files again, in order");
    assert_eq!(
        first,
        control_snapshot(&db),
        "a second apply changed the schema"
    );
    assert_eq!(
        one(&db, "select count(*) || ' ' || max(desired) || ' ' || (select count(*) from hp_audit_log) from hp_worker_control;"),
        "1 paused 1",
        "rows are kept"
    );
}

#[test]
fn either_order_with_the_reporter_file_gives_the_same_schema() {
    let Some(server) = pg::server() else { return };
    let files = pg::migration_files(true);
    let (core, optional): (Vec<_>, Vec<_>) = files
        .iter()
        .partition(|f| !f.to_string_lossy().contains("/optional/"));
    // Ours: sql/*.sql then sql/optional/*.sql. The Supabase CLI's: by the
    // timestamp in the name, so the reporter file comes before control.
    let ours = server.fresh_database("order_ours");
    for f in core.iter().chain(optional.iter()) {
        ours.apply_file(f).expect("apply");
    }
    let mut by_name: Vec<_> = files.clone();
    by_name.sort_by_key(|f| f.file_name().map(|n| n.to_owned()));
    let cli = server.fresh_database("order_cli");
    for f in &by_name {
        cli.apply_file(f).expect("apply");
    }
    assert_ne!(by_name, files, "the two orders differ");
    assert_eq!(control_snapshot(&ours), control_snapshot(&cli));
    // And re-applying everything, either way, changes nothing.
    let before = control_snapshot(&cli);
    for f in &by_name {
        cli.apply_file(f).expect("again");
    }
    ours.migrate(true).expect("again");
    assert_eq!(before, control_snapshot(&cli));
    assert_eq!(before, control_snapshot(&ours));
    assert!(
        before.contains("pol hp_worker_control hp_reporter_read_own_control"),
        "{before}"
    );
}

#[test]
fn control_migration_onto_live_rows_keeps_them() {
    let Some(server) = pg::server() else { return };
    let db = server.fresh_database("ctl_live");
    let files = pg::migration_files(true);
    let control = files
        .iter()
        .find(|f| f.to_string_lossy().ends_with("_hp_control.sql"))
        .expect("the control migration")
        .clone();
    for f in files.iter().filter(|f| **f != control) {
        db.apply_file(f)
            .expect("the first migration and the optional files");
    }
    // Live workers, as the SDK writes them before control exists.
    for (i, name) in ["live-1", "live-2"].iter().enumerate() {
        let row = json!({"worker_name": name, "status": "running", "instance_id": instance(i as u64), "jobs_processed": 41});
        beat(&db, &service(), &row).expect("a beat before control");
    }
    let reporter = json!({"role": "hp_reporter", "worker_name": "live-2"});
    db.apply_file(&control).expect("control onto live rows");
    assert_eq!(
        one(&db, "select string_agg(worker_name || ' ' || jobs_processed || ' ' || pool || ' ' || (instance_since is not null), ',' order by 1) from hp_worker_status;"),
        "live-1 41 default true,live-2 41 default true"
    );
    // The next beats carry on, with the control columns, as service_role and as the reporter.
    let mut row = json!({"worker_name": "live-1", "status": "running", "instance_id": instance(0), "jobs_processed": 42,
                         "pool": "orders", "state": "active", "control_generation": 0,
                         "controls": {"pause": "stops taking jobs", "run_now": "no"}});
    beat(&db, &service(), &row).expect("a beat after control");
    row["worker_name"] = json!("live-2");
    row["instance_id"] = json!(instance(1));
    beat(&db, &reporter, &row).expect("the reporter writes the control columns");
    let answer = rpc(
        &db,
        None,
        "hp_control",
        json!({"action": "pause", "workers": ["live-1"]}),
    )
    .expect("control works on them");
    assert_eq!(answer["outcome"], "accepted", "{answer}");
    db.apply_file(&control).expect("and again");
}

// ---------------------------------------------------------------------------
// The worker's side.

#[test]
fn hp_reporter_reads_only_its_own_control_row() {
    let Some(db) = migrated("rep_ctl") else {
        return;
    };
    add_workers(&db, "orders", &["orders-1", "orders-2"]);
    rpc(
        &db,
        None,
        "hp_control",
        json!({"action": "run_now", "pool": "orders"}),
    )
    .expect("rows");
    let me = json!({"role": "hp_reporter", "worker_name": "orders-1"});
    assert_eq!(
        api(
            &db,
            Some(&me),
            "select string_agg(worker_name, ',') from public.hp_worker_control"
        )
        .as_deref(),
        Ok("orders-1")
    );
    let e = api(
        &db,
        Some(&me),
        "update public.hp_worker_control set desired = 'active'",
    )
    .expect_err("writes");
    assert_eq!(sqlstate(&e), "42501", "{e}");
    for table in ["hp_audit_log", "hp_pool", "hp_rollout"] {
        let e = api(&db, Some(&me), &format!("select * from public.{table}"))
            .expect_err("reads others");
        assert_eq!(sqlstate(&e), "42501", "{table}: {e}");
    }
    // It reports control columns, but cannot set instance_since.
    let row = json!({"worker_name": "orders-1", "status": "running", "state": "active", "control_generation": 1});
    beat(&db, &me, &row).expect("control columns");
    let e = api(
        &db,
        Some(&me),
        "update public.hp_worker_status set instance_since = now()",
    )
    .expect_err("instance_since");
    assert_eq!(sqlstate(&e), "42501", "{e}");
}

/// The poll a worker makes every 5 s, as PostgREST runs it.
fn poll(db: &Database, claims: &Value, worker: &str, generation: i64) -> Vec<Value> {
    let read = postgrest_sql::read(
        "hp_worker_control",
        &[
            ("worker_name", "eq", worker),
            ("generation", "gt", &generation.to_string()),
        ],
        &[
            "desired",
            "generation",
            "restart_seq",
            "run_now_seq",
            "drain_seq",
        ],
    )
    .expect("read");
    let body = api(
        db,
        Some(claims),
        &format!("select body from ({read}) pgrst_response"),
    )
    .expect("poll");
    serde_json::from_str(&body).expect("body is JSON")
}

#[test]
fn the_poll_is_empty_until_the_generation_moves() {
    let Some(db) = migrated("poll") else { return };
    add_workers(&db, "orders", &["orders-1", "orders-2"]);
    let me = json!({"role": "hp_reporter", "worker_name": "orders-1"});
    for claims in [service(), me.clone()] {
        assert!(
            poll(&db, &claims, "orders-1", 0).is_empty(),
            "no row yet: nothing to do"
        );
    }
    rpc(
        &db,
        Some(&operator()),
        "hp_control",
        json!({"action": "pause", "workers": ["orders-1"]}),
    )
    .expect("pause");
    for claims in [service(), me.clone()] {
        let rows = poll(&db, &claims, "orders-1", 0);
        assert_eq!(
            rows,
            [
                json!({"desired": "paused", "generation": 1, "restart_seq": 0, "run_now_seq": 0, "drain_seq": 0})
            ]
        );
        assert!(
            poll(&db, &claims, "orders-1", 1).is_empty(),
            "unchanged: empty"
        );
    }
    rpc(
        &db,
        Some(&operator()),
        "hp_control",
        json!({"action": "drain", "workers": ["orders-1"]}),
    )
    .expect("drain");
    assert_eq!(
        poll(&db, &me, "orders-1", 1),
        [
            json!({"desired": "paused", "generation": 2, "restart_seq": 0, "run_now_seq": 0, "drain_seq": 1})
        ]
    );
    // Another worker's row is not the reporter's to see.
    rpc(
        &db,
        None,
        "hp_control",
        json!({"action": "run_now", "workers": ["orders-2"]}),
    )
    .expect("run_now");
    assert!(poll(&db, &me, "orders-2", 0).is_empty());
    assert_eq!(poll(&db, &service(), "orders-2", 0).len(), 1);
}

#[test]
fn applied_is_audited_when_the_worker_reports_the_generation() {
    let Some(db) = migrated("applied") else {
        return;
    };
    add_workers(&db, "orders", &["orders-1", "orders-2"]);
    let pause = rpc(
        &db,
        Some(&operator()),
        "hp_control",
        json!({"action": "pause", "workers": ["orders-1"]}),
    )
    .expect("pause");
    let applied = || {
        one(
            &db,
            "select count(*) from hp_audit_log where outcome = 'applied';",
        )
    };
    let mut row = worker_row("orders-1", "orders", 1000);
    row["state"] = json!("paused");
    beat(&db, &service(), &row).expect("a beat that has not applied it");
    assert_eq!(applied(), "0");
    row["control_generation"] = json!(1);
    beat(&db, &service(), &row).expect("the beat that reports it");
    let got: Value = serde_json::from_str(&one(
        &db,
        "select row_to_json(l) from hp_audit_log l where outcome = 'applied';",
    ))
    .expect("json");
    assert_eq!(got["actor"], "worker:orders-1");
    assert_eq!(got["action"], "pause");
    assert_eq!(got["workers"], json!(["orders-1"]));
    assert_eq!(got["detail"]["request_audit_id"], pause["audit_id"]);
    assert_eq!(got["detail"]["generation"], 1);
    beat(&db, &service(), &row).expect("the same report again");
    assert_eq!(applied(), "1", "applied once per request");
    // Two requests, applied at once (by the reporter role): one row each.
    for action in ["resume", "run_now"] {
        rpc(
            &db,
            None,
            "hp_control",
            json!({"action": action, "workers": ["orders-1"]}),
        )
        .expect(action);
    }
    row["control_generation"] = json!(3);
    beat(
        &db,
        &json!({"role": "hp_reporter", "worker_name": "orders-1"}),
        &row,
    )
    .expect("reporter beat");
    assert_eq!(
        one(&db, "select string_agg(action || ' ' || (detail->>'generation'), ',' order by id) from hp_audit_log where outcome = 'applied';"),
        "pause 1,resume 2,run_now 3"
    );
}

#[test]
fn a_beat_never_touches_the_control_row() {
    let Some(db) = migrated("beat") else { return };
    add_workers(&db, "orders", &["orders-1", "orders-2"]);
    rpc(
        &db,
        None,
        "hp_control",
        json!({"action": "pause", "workers": ["orders-1"]}),
    )
    .expect("pause");
    let control = || {
        one(&db, "select xmin || ' ' || generation || ' ' || desired || ' ' || updated_at from hp_worker_control;")
    };
    let before = control();
    let mut row = worker_row("orders-1", "orders", 1000);
    for (i, state) in ["paused", "active", "draining"].iter().enumerate() {
        row["state"] = json!(state);
        row["control_generation"] = json!(i);
        row["jobs_processed"] = json!(10 + i);
        beat(&db, &service(), &row).expect("beat");
        beat(
            &db,
            &json!({"role": "hp_reporter", "worker_name": "orders-1"}),
            &row,
        )
        .expect("reporter beat");
    }
    row["instance_id"] = json!(instance(77));
    beat(&db, &service(), &row).expect("a new instance");
    assert_eq!(control(), before, "beats left the control row as it was");
}

#[test]
fn instance_since_is_the_database_clock_of_the_instance_first_write() {
    let Some(db) = migrated("since") else { return };
    let since = || one(&db, "select instance_since from hp_worker_status;");
    let mut row = worker_row("w", "default", 1);
    row["instance_since"] = json!("2001-01-01T00:00:00Z");
    beat(&db, &service(), &row).expect("first write, with a client's value");
    let first = since();
    assert!(
        !first.starts_with("2001"),
        "the client's value is ignored: {first}"
    );
    assert_eq!(
        one(
            &db,
            "select instance_since = last_heartbeat from hp_worker_status;"
        ),
        "t",
        "the first write's database clock"
    );
    row["jobs_processed"] = json!(5);
    beat(&db, &service(), &row).expect("same instance");
    assert_eq!(since(), first, "the same instance keeps it");
    row["instance_since"] = json!("2099-01-01T00:00:00Z");
    beat(&db, &service(), &row).expect("same instance, a client's value");
    assert_eq!(since(), first);
    db.sql("update hp_worker_status set status = 'stopped';")
        .expect("another update");
    assert_eq!(since(), first);
    if let Some(fields) = row.as_object_mut() {
        fields.remove("instance_since");
    }
    row["instance_id"] = json!(instance(2));
    beat(&db, &service(), &row).expect("a new instance");
    assert_eq!(
        one(&db, &format!("select instance_since > '{first}' and instance_since = last_heartbeat from hp_worker_status;")),
        "t",
        "a new instance starts it again"
    );
}

// ---------------------------------------------------------------------------
// Atomicity.

const GATE: i64 = 4242;

/// Twenty sessions each pause a different worker of a 20-worker pool with
/// max_unavailable = 3, released at once: exactly 3 are accepted. Twenty rounds.
#[test]
fn concurrent_pauses_never_exceed_the_budget() {
    let Some(db) = migrated("race") else { return };
    let names: Vec<String> = (1..=20).map(|i| format!("crowd-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    add_workers(&db, "crowd", &refs);
    rpc(
        &db,
        None,
        "hp_pool_set",
        json!({"pool": "crowd", "max_unavailable": 3, "min_available": 1}),
    )
    .expect("budget");
    let waiting = |granted: bool| {
        one(
            &db,
            &format!(
                "select count(*) from pg_locks where locktype = 'advisory' and objid = {GATE} and granted = {granted} \
                 and database = (select oid from pg_database where datname = current_database());"
            ),
        )
    };
    for round in 0..20 {
        let last_id = one(&db, "select coalesce(max(id), 0) from hp_audit_log;");
        let mut gate = db.session().expect("gate session");
        gate.send(&format!("select pg_advisory_lock({GATE}) \\g /dev/null\n"))
            .expect("close the gate");
        wait_for(|| waiting(true) == "1", "the gate to close");
        let answers: Vec<Result<String, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = names
                .iter()
                .map(|name| {
                    let db = &db;
                    scope.spawn(move || {
                        let call = postgrest_sql::rpc(
                            "hp_control",
                            &json!({"action": "pause", "workers": [name], "reason": format!("round {round}")}),
                        )
                        .expect("rpc");
                        db.sql(&format!(
                            "select pg_advisory_lock_shared({GATE}) \\g /dev/null\n\
                             select pg_advisory_unlock_shared({GATE}) \\g /dev/null\n\
                             set session authorization authenticator;\nbegin;\n\
                             select set_config('role', 'service_role', true), set_config('request.jwt.claims', '{{\"role\":\"service_role\"}}', true) \\g /dev/null\n\
                             {call};\ncommit;\n"
                        ))
                    })
                })
                .collect();
            wait_for(
                || waiting(false) == "20",
                "all 20 sessions to queue at the gate",
            );
            gate.finish().expect("open the gate");
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let mut accepted = 0;
        let mut refused = 0;
        for answer in &answers {
            let answer: Value =
                serde_json::from_str(answer.as_ref().expect("a call")).expect("json");
            match answer["outcome"].as_str() {
                Some("accepted") => accepted += 1,
                Some("refused") => {
                    assert_eq!(answer["rule"], "max_unavailable", "{answer}");
                    refused += 1;
                }
                _ => panic!("{answer}"),
            }
        }
        assert_eq!((accepted, refused), (3, 17), "round {round}");
        assert_eq!(
            one(&db, &format!("select count(*) || ' ' || count(*) filter (where outcome = 'accepted') from hp_audit_log where id > {last_id};")),
            "20 3",
            "round {round}: one audit row per request"
        );
        assert_eq!(
            one(
                &db,
                "select count(*) from hp_worker_control where desired = 'paused';"
            ),
            "3"
        );
        rpc(
            &db,
            None,
            "hp_control",
            json!({"action": "resume", "pool": "crowd"}),
        )
        .expect("resume for the next round");
    }
}

fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Rollouts.

/// A worker process as the rollout sees it: it notices a restart request,
/// exits (a stopped row), and a little later a new instance beats, reporting
/// the generation it found.
struct SimulatedWorker {
    name: String,
    pool: String,
    instance: u64,
    restarts_seen: i64,
    /// Down since this poll; comes back at the next one.
    down: bool,
    /// Never comes back, with this final row.
    dies_with: Option<Value>,
}

impl SimulatedWorker {
    fn new(name: &str, pool: &str, instance: u64) -> Self {
        SimulatedWorker {
            name: name.into(),
            pool: pool.into(),
            instance,
            restarts_seen: 0,
            down: false,
            dies_with: None,
        }
    }

    /// One look at its control row; returns whether it wrote anything.
    fn tick(&mut self, db: &Database) -> bool {
        let rows = poll(db, &service(), &self.name, 0);
        let (restart_seq, generation) = rows.first().map_or((0, 0), |r| {
            (
                r["restart_seq"].as_i64().unwrap_or(0),
                r["generation"].as_i64().unwrap_or(0),
            )
        });
        if self.down {
            self.down = false;
            self.instance += 100;
            let mut row = worker_row(&self.name, &self.pool, self.instance);
            row["control_generation"] = json!(generation);
            row["state"] = json!("active");
            beat(db, &service(), &row).expect("the new instance beats");
            return true;
        }
        if restart_seq > self.restarts_seen {
            self.restarts_seen = restart_seq;
            let last = self
                .dies_with
                .clone()
                .unwrap_or_else(|| json!({"status": "stopped", "exit_code": 0}));
            let mut row = worker_row(&self.name, &self.pool, self.instance);
            row["state"] = json!("restarting");
            for (k, v) in last.as_object().into_iter().flatten() {
                row[k] = v.clone();
            }
            beat(db, &service(), &row).expect("the old instance's last row");
            self.down = self.dies_with.is_none();
            return true;
        }
        false
    }
}

fn unavailable(db: &Database, pool: &str) -> usize {
    one(
        db,
        &format!(
            "select count(*) from hp_worker_availability where pool = '{pool}' and not available;"
        ),
    )
    .parse()
    .expect("count")
}

#[test]
fn a_rollout_restarts_a_pool_never_more_than_the_budget_down() {
    let Some(db) = migrated("rollout") else {
        return;
    };
    let names: Vec<String> = (1..=6).map(|i| format!("web-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    add_workers(&db, "web", &refs);
    rpc(
        &db,
        None,
        "hp_pool_set",
        json!({"pool": "web", "max_unavailable": 2, "min_available": 1}),
    )
    .expect("budget");
    let old: Vec<String> = one(
        &db,
        "select string_agg(instance_id::text, ',' order by worker_name) from hp_worker_status;",
    )
    .split(',')
    .map(str::to_owned)
    .collect();
    let mut workers: Vec<SimulatedWorker> = names
        .iter()
        .enumerate()
        .map(|(i, n)| SimulatedWorker::new(n, "web", 1000 + i as u64))
        .collect();

    let start = rpc(&db, Some(&operator()), "hp_rollout_start",
                    json!({"pool": "web", "settle_seconds": 1, "timeout_seconds": 60, "reason": "release 2.4.0"}))
        .expect("start");
    assert_eq!(start["outcome"], "accepted", "{start}");
    assert_eq!(start["batch_size"], 2, "the pool's max_unavailable");
    let id = start["rollout_id"].as_i64().expect("id");
    // A second rollout of the pool is refused while this one runs.
    let second = rpc(
        &db,
        Some(&operator()),
        "hp_rollout_start",
        json!({"pool": "web"}),
    )
    .expect("second");
    assert_eq!(
        (second["outcome"].as_str(), second["rule"].as_str()),
        (Some("refused"), Some("rollout_running")),
        "{second}"
    );

    let mut most_down = 0;
    let mut steps = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // Steps may come from many sessions at once: two here, in parallel.
        let summaries: Vec<Value> = std::thread::scope(|scope| {
            let a = scope.spawn(|| rpc(&db, None, "hp_rollout_step", json!({"id": id})));
            let b =
                scope.spawn(|| rpc(&db, Some(&service()), "hp_rollout_step", json!({"id": id})));
            vec![a.join().expect("step"), b.join().expect("step")]
        })
        .into_iter()
        .map(|r| r.expect("step answers"))
        .collect();
        steps += 1;
        most_down = most_down.max(unavailable(&db, "web"));
        let state = summaries[1]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if state == "done" {
            break;
        }
        assert_eq!(state, "running", "{}", summaries[1]);
        for w in &mut workers {
            if w.tick(&db) {
                most_down = most_down.max(unavailable(&db, "web"));
            }
        }
        assert!(
            Instant::now() < deadline,
            "rollout not done: {}",
            summaries[1]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(most_down <= 2, "{most_down} down at once; the budget is 2");
    assert_eq!(most_down, 2, "the batch used the budget");
    assert!(steps >= 3, "three batches");
    let now: Vec<String> = one(
        &db,
        "select string_agg(instance_id::text, ',' order by worker_name) from hp_worker_status;",
    )
    .split(',')
    .map(str::to_owned)
    .collect();
    for (a, b) in old.iter().zip(&now) {
        assert_ne!(a, b, "every worker has a new instance");
    }
    assert_eq!(
        one(&db, &format!("select string_agg(state, ',' order by position) from hp_rollout_worker where rollout_id = {id};")),
        "done,done,done,done,done,done"
    );
    let audit = one(
        &db,
        &format!(
            "select string_agg(action || ':' || outcome || ':' || coalesce(array_to_string(workers, '+'), ''), E'\\n' order by id) \
             from hp_audit_log where action <> 'pool_set' and (detail->>'rollout_id' = '{id}' or action = 'rollout_start' or actor like 'worker:%');"
        ),
    );
    let lines: Vec<&str> = audit.lines().collect();
    assert_eq!(
        lines[0],
        "rollout_start:accepted:web-1+web-2+web-3+web-4+web-5+web-6"
    );
    assert_eq!(lines[1], "rollout_start:refused:");
    for batch in ["web-1+web-2", "web-3+web-4", "web-5+web-6"] {
        assert!(
            lines.contains(&format!("restart:accepted:{batch}").as_str()),
            "{audit}"
        );
    }
    for w in &names {
        assert!(
            lines.contains(&format!("restart:applied:{w}").as_str()),
            "{w} settled: {audit}"
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| **l == format!("restart:applied:{w}"))
                .count(),
            2,
            "{w}: applied by its report and settled in the rollout: {audit}"
        );
    }
    assert_eq!(
        lines.last().copied(),
        Some("rollout:applied:web-1+web-2+web-3+web-4+web-5+web-6")
    );
    // Stepping a finished rollout changes nothing.
    let count = one(&db, "select count(*) from hp_audit_log;");
    let again = rpc(&db, None, "hp_rollout_step", json!({"id": id})).expect("step");
    assert_eq!(again["state"], "done");
    assert_eq!(one(&db, "select count(*) from hp_audit_log;"), count);
}

#[test]
fn a_worker_that_never_comes_back_leaves_the_rollout_stuck() {
    let Some(db) = migrated("stuck") else { return };
    add_workers(&db, "api", &["api-1", "api-2", "api-3"]);
    add_workers(&db, "cron", &["cron-1", "cron-2"]);
    add_workers(&db, "busy", &["busy-1", "busy-2"]);
    let mut api = vec![
        SimulatedWorker::new("api-1", "api", 1000),
        SimulatedWorker::new("api-2", "api", 1001),
        SimulatedWorker::new("api-3", "api", 1002),
    ];
    api[1].dies_with = Some(json!({"status": "crashed", "exit_code": 3}));
    let start = |pool: &str| {
        // Long enough for the healthy workers to come back on a loaded machine.
        rpc(
            &db,
            None,
            "hp_rollout_start",
            json!({"pool": pool, "settle_seconds": 0, "timeout_seconds": 8}),
        )
        .expect("start")["rollout_id"]
            .as_i64()
            .expect("id")
    };
    // api: api-2 crashes when restarted and never returns.
    let api_id = start("api");
    // cron: cron-2 stays on its old instance (a worker that ignores restarts).
    let cron_id = start("cron");
    // busy: the pool's other worker is crashed, so the batch of 1 has no room.
    db.sql("update hp_worker_status set status = 'crashed', exit_code = 1 where worker_name = 'busy-2';").expect("crash");
    let busy_id = rpc(
        &db,
        None,
        "hp_rollout_start",
        json!({"pool": "busy", "settle_seconds": 0, "timeout_seconds": 1}),
    )
    .expect("start")["rollout_id"]
        .as_i64()
        .expect("id");
    let mut cron_1 = SimulatedWorker::new("cron-1", "cron", 2000);
    let state = |id: i64| {
        one(&db, &format!("select state || '|' || coalesce(state_reason, '') from hp_rollout where id = {id};"))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for id in [api_id, cron_id, busy_id] {
            rpc(&db, None, "hp_rollout_step", json!({"id": id})).expect("step");
        }
        for w in &mut api {
            w.tick(&db);
        }
        cron_1.tick(&db);
        let all: Vec<String> = [api_id, cron_id, busy_id]
            .iter()
            .map(|id| state(*id))
            .collect();
        if all.iter().all(|s| s.starts_with("stuck")) {
            break;
        }
        assert!(
            all.iter()
                .all(|s| s.starts_with("running") || s.starts_with("stuck")),
            "{all:?}"
        );
        assert!(Instant::now() < deadline, "not stuck: {all:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let api_state = state(api_id);
    assert!(
        api_state
            .contains("api-2 did not come back within 8 s: its row says crashed with exit code 3"),
        "{api_state}"
    );
    assert_eq!(
        one(&db, &format!("select string_agg(worker_name || ' ' || state, ',' order by position) from hp_rollout_worker where rollout_id = {api_id};")),
        "api-1 done,api-2 restarting,api-3 pending",
        "api-3 was never restarted"
    );
    let cron_state = state(cron_id);
    assert!(
        cron_state.contains("cron-2 did not come back within 8 s: still the old instance"),
        "{cron_state}"
    );
    let busy_state = state(busy_id);
    assert!(
        busy_state.contains("no capacity for 1 s")
            && busy_state.contains("busy-2 (crashed with exit code 1)"),
        "{busy_state}"
    );
    assert_eq!(
        one(
            &db,
            "select count(*) from hp_audit_log where outcome = 'timed_out';"
        ),
        "3"
    );
    // A stuck rollout is not running: another may start; this one can be aborted.
    let abort = rpc(
        &db,
        Some(&operator()),
        "hp_rollout_abort",
        json!({"id": api_id, "reason": "api-2 needs a fix"}),
    )
    .expect("abort");
    assert_eq!(abort["state"], "aborted");
    let e = rpc(&db, None, "hp_rollout_abort", json!({"id": api_id})).expect_err("abort twice");
    assert!(
        sqlstate(&e) == "22023" && e.contains("already aborted"),
        "{e}"
    );
}

#[test]
fn rollout_start_checks_its_arguments_and_protection() {
    let Some(db) = migrated("ro_args") else {
        return;
    };
    add_workers(&db, "vault", &["vault-1", "vault-2"]);
    db.sql("update hp_worker_status set status = 'stopped' where worker_name = 'vault-2';")
        .expect("stop");
    rpc(
        &db,
        None,
        "hp_pool_set",
        json!({"pool": "vault", "protected": true}),
    )
    .expect("protect");
    for (args, want) in [
        (json!({"pool": "nope"}), "pool 'nope' has no workers"),
        (
            json!({"pool": "vault", "max_unavailable": 0}),
            "max_unavailable is 0",
        ),
        (
            json!({"pool": "vault", "timeout_seconds": 0}),
            "timeout_seconds is 0",
        ),
        (
            json!({"pool": "vault", "settle_seconds": -1}),
            "settle_seconds is -1",
        ),
    ] {
        let e = rpc(&db, None, "hp_rollout_start", args).expect_err("bad arguments");
        assert!(sqlstate(&e) == "22023" && e.contains(want), "{e}");
    }
    let refused = rpc(&db, None, "hp_rollout_start", json!({"pool": "vault"})).expect("answer");
    assert_eq!(
        (refused["outcome"].as_str(), refused["rule"].as_str()),
        (Some("refused"), Some("protected"))
    );
    // A batch over the pool's budget (1 by default) is a choice made by name.
    let over = rpc(
        &db,
        None,
        "hp_rollout_start",
        json!({"pool": "vault", "max_unavailable": 2, "confirm": "not-vault"}),
    )
    .expect("answer");
    assert!(
        over["rule"] == "protected" || over["rule"] == "max_unavailable",
        "{over}"
    );
    rpc(
        &db,
        None,
        "hp_pool_set",
        json!({"pool": "vault", "protected": false}),
    )
    .expect("unprotect");
    let over = rpc(
        &db,
        None,
        "hp_rollout_start",
        json!({"pool": "vault", "max_unavailable": 2}),
    )
    .expect("answer");
    assert_eq!(
        (over["outcome"].as_str(), over["rule"].as_str()),
        (Some("refused"), Some("max_unavailable")),
        "{over}"
    );
    assert!(
        over["message"]
            .as_str()
            .is_some_and(|m| m.contains("confirm = 'vault'")),
        "{over}"
    );
    rpc(
        &db,
        None,
        "hp_pool_set",
        json!({"pool": "vault", "protected": true}),
    )
    .expect("protect");
    let started = rpc(
        &db,
        None,
        "hp_rollout_start",
        json!({"pool": "vault", "confirm": "vault", "max_unavailable": 1}),
    )
    .expect("answer");
    assert_eq!(started["outcome"], "accepted", "{started}");
    assert_eq!(
        started["workers"],
        json!({"vault-1": "pending", "vault-2": "skipped: stopped"})
    );
    let e = rpc(&db, None, "hp_rollout_step", json!({"id": 999})).expect_err("no such rollout");
    assert!(
        sqlstate(&e) == "22023" && e.contains("no rollout with id 999"),
        "{e}"
    );
}

#[test]
fn pool_set_keeps_what_it_is_not_given_and_audits() {
    let Some(db) = migrated("poolset") else {
        return;
    };
    let a = rpc(
        &db,
        Some(&operator()),
        "hp_pool_set",
        json!({"pool": "orders", "max_unavailable": 2}),
    )
    .expect("set");
    assert_eq!(
        (
            a["max_unavailable"].as_i64(),
            a["min_available"].as_i64(),
            a["protected"].as_bool()
        ),
        (Some(2), Some(1), Some(false))
    );
    let b = rpc(
        &db,
        Some(&operator()),
        "hp_pool_set",
        json!({"pool": "orders", "protected": true}),
    )
    .expect("set");
    assert_eq!(
        (b["max_unavailable"].as_i64(), b["protected"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(
        one(&db, "select string_agg(actor || ' ' || action || ' ' || (detail->'after'->>'protected'), ',' order by id) from hp_audit_log;"),
        "ops@example.com pool_set false,ops@example.com pool_set true"
    );
    for (args, want) in [
        (json!({"pool": "has space"}), "is not a pool name"),
        (
            json!({"pool": "orders", "max_unavailable": -1}),
            "must be 0 or more",
        ),
    ] {
        let e = rpc(&db, None, "hp_pool_set", args).expect_err("bad");
        assert!(sqlstate(&e) == "22023" && e.contains(want), "{e}");
    }
}

// ---------------------------------------------------------------------------
// docs/control.md

/// The ```sql blocks of a Markdown text in order, each with the ```json
/// block that follows it before the next ```sql block (its output), if any.
fn sql_blocks(markdown: &str) -> Vec<(String, Option<String>)> {
    let mut blocks: Vec<(String, Option<String>)> = Vec::new();
    let mut open: Option<(&str, String)> = None;
    for line in markdown.lines() {
        match (&mut open, line.trim_end()) {
            (None, "```sql") => open = Some(("sql", String::new())),
            (None, "```json") => open = Some(("json", String::new())),
            (Some((kind, body)), "```") => {
                let body = std::mem::take(body);
                match *kind {
                    "sql" => blocks.push((body, None)),
                    _ => {
                        let last = blocks.last_mut().expect("a json block follows a sql block");
                        assert!(last.1.is_none(), "two outputs for one block: {body}");
                        last.1 = Some(body);
                    }
                }
                open = None;
            }
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(open.is_none(), "an unclosed block");
    blocks
}

#[test]
fn every_sql_block_of_the_control_docs_runs_as_written() {
    let Some(server) = pg::server() else { return };
    // pg_cron keeps its jobs in one database: the docs run there when it exists.
    let (db, cron) = match server.cron_database() {
        Ok(db) => (db, true),
        Err(why) => {
            hp_heartbeat_tests::skip::or_require(
                "DB",
                &format!("the pg_cron blocks of docs/control.md cannot run: {why}"),
            );
            (server.fresh_database("docs"), false)
        }
    };
    db.migrate(true).expect("migrations");
    // The page's situation: pool orders with five running workers, and a user.
    add_workers(
        &db,
        "orders",
        &["orders-1", "orders-2", "orders-3", "orders-4", "orders-5"],
    );
    db.sql("insert into auth.users (id, email) values ('6f2c1a7e-0000-4000-8000-000000000001', 'ops@example.com');")
        .expect("a user");

    let text =
        std::fs::read_to_string(pg::repo_root().join("docs/control.md")).expect("docs/control.md");
    let blocks = sql_blocks(&text);
    assert!(blocks.len() >= 10, "{} blocks", blocks.len());
    let mut outputs_checked = 0;
    for (sql, shown) in &blocks {
        if sql.contains("cron") && !cron {
            hp_heartbeat_tests::skip::loudly(&format!("no pg_cron for: {sql}"));
            continue;
        }
        let rollout_touched = || {
            one(
                &db,
                "select coalesce(max(updated_at)::text, '') from hp_rollout;",
            )
        };
        let before = rollout_touched();
        let out = db
            .sql(sql)
            .unwrap_or_else(|e| panic!("docs/control.md:\n{sql}\nfailed: {e}"));
        if let Some(shown) = shown {
            let shown: Value =
                serde_json::from_str(shown).unwrap_or_else(|e| panic!("{shown}: {e}"));
            let real: Value =
                serde_json::from_str(&out).unwrap_or_else(|e| panic!("{sql} printed {out}: {e}"));
            assert_eq!(
                shown, real,
                "docs/control.md shows another output for\n{sql}\nreal: {out}"
            );
            outputs_checked += 1;
        }
        if sql.contains("\"hp_role\": \"operator\"") {
            assert_eq!(
                one(
                    &db,
                    "select raw_app_meta_data ->> 'hp_role' from auth.users;"
                ),
                "operator"
            );
        }
        if sql.contains("- 'hp_role'") {
            assert_eq!(
                one(
                    &db,
                    "select coalesce(raw_app_meta_data ->> 'hp_role', 'none') from auth.users;"
                ),
                "none"
            );
        }
        if sql.contains("cron.schedule(") {
            // The job really runs and steps the rollout: pg_cron fires at the next minute.
            let deadline = Instant::now() + Duration::from_secs(150);
            let runs = || {
                one(&db, "select string_agg(status, ',') from cron.job_run_details d join cron.job j using (jobid) where j.jobname = 'hp-rollout-step';")
            };
            while runs().is_empty() || runs().contains("running") || runs().contains("starting") {
                assert!(
                    Instant::now() < deadline,
                    "pg_cron did not run the job: {}",
                    runs()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            assert!(runs().starts_with("succeeded"), "{}", runs());
            assert!(rollout_touched() > before, "the job stepped the rollout");
        }
    }
    assert!(outputs_checked >= 5, "{outputs_checked} outputs compared");
    assert!(
        text.contains("would leave pool orders with 2 of 5 workers unavailable; its budget allows 1 (max_unavailable)"),
        "the worked refusal is shown"
    );
}

// ---------------------------------------------------------------------------
// The same scenarios on the local store (SQLite), and both stores compared.

/// Builds a scenario's rows in a fresh local store, makes its request and
/// reads what it left: the local store's twin of [`run_scenario`].
fn run_scenario_locally(s: &control_scenarios::Scenario) -> Observed {
    use heartbeat_sdk::sidecar::{ControlRequest, SqliteStore};
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("control.db");
    let store = SqliteStore::new(&path);
    // The store makes its tables on first use; a pool_set is a first use
    // that leaves no status row.
    store
        .pool_set("setup", None, None, None, None)
        .expect("tables");
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch("delete from hp_pool; drop trigger hp_audit_log_no_delete; delete from hp_audit_log; create trigger hp_audit_log_no_delete before delete on hp_audit_log begin select raise(abort, 'hp_audit_log is insert-only: DELETE is not allowed'); end;")
        .expect("a clean slate");
    let now = chrono::Utc::now();
    let at = |secs_ago: f64| {
        (now - chrono::Duration::microseconds((secs_ago * 1e6) as i64))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    for p in &s.pools {
        conn.execute(
            "insert into hp_pool (pool, max_unavailable, min_available, protected) values (?1, coalesce(?2, 1), coalesce(?3, 1), coalesce(?4, 0))",
            rusqlite::params![p.pool, p.max_unavailable, p.min_available, p.protected.map(i64::from)],
        )
        .expect("pool");
    }
    for (i, w) in s.workers.iter().enumerate() {
        conn.execute(
            "insert into hp_worker_status (worker_name, pool, status, last_heartbeat, heartbeat_interval_seconds, instance_id, instance_since, exit_code) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![w.name, w.pool, w.status, at(w.age_seconds), w.interval, instance(i as u64 + 1), at(3600.0), w.exit_code],
        )
        .expect("status row");
        if w.has_control_row() {
            let pending = w.restart_pending.unwrap_or(false);
            conn.execute(
                "insert into hp_worker_control (worker_name, desired, generation, restart_seq, restart_requested_at) values (?1, ?2, 1, ?3, ?4)",
                rusqlite::params![w.name, w.desired.as_deref().unwrap_or("active"), i64::from(pending), pending.then(|| at(1.0))],
            )
            .expect("control row");
        }
    }
    let r = &s.request;
    let mut request = ControlRequest::default();
    request.action = r.action.clone();
    request.workers = r.workers.clone();
    request.pool = r.pool.clone();
    request.reason = r.reason.clone();
    request.confirm = r.confirm.clone();
    request.force = r.force.unwrap_or(false);
    request.actor = r.actor.clone();
    let answer = match store.control(&request) {
        Ok(a) => Ok(serde_json::to_value(a).expect("json")),
        Err(heartbeat_sdk::sidecar::ControlError::Invalid { code, message }) => {
            Err(StoreError { code, message })
        }
        Err(e) => panic!("{}: the store failed: {e}", s.name),
    };
    let mut control = std::collections::BTreeMap::new();
    let mut stmt = conn
        .prepare("select c.worker_name, c.desired, c.generation, c.restart_seq, c.run_now_seq, c.drain_seq, c.restart_requested_at, s.instance_since from hp_worker_control c left join hp_worker_status s using (worker_name) order by c.worker_name")
        .expect("read control");
    let rows = stmt
        .query_map([], |row| {
            let asked: Option<String> = row.get(6)?;
            let since: Option<String> = row.get(7)?;
            Ok((
                row.get::<_, String>(0)?,
                ControlRow {
                    desired: row.get(1)?,
                    generation: row.get(2)?,
                    restart_seq: row.get(3)?,
                    run_now_seq: row.get(4)?,
                    drain_seq: row.get(5)?,
                    restart_pending: asked.is_some_and(|a| since.is_none_or(|s| s < a)),
                },
            ))
        })
        .expect("control rows");
    for row in rows {
        let (name, row) = row.expect("row");
        control.insert(name, row);
    }
    let mut stmt = conn
        .prepare("select actor, action, outcome, detail from hp_audit_log order by id")
        .expect("read audit");
    let audit = stmt
        .query_map([], |row| {
            Ok(AuditRow {
                actor: row.get(0)?,
                action: row.get(1)?,
                outcome: row.get(2)?,
                detail: serde_json::from_str(&row.get::<_, String>(3)?).unwrap_or(Value::Null),
            })
        })
        .expect("audit rows")
        .collect::<Result<Vec<_>, _>>()
        .expect("audit");
    Observed {
        answer,
        control,
        audit,
    }
}

#[test]
fn scenarios_hold_in_the_local_store() {
    let scenarios = control_scenarios::load(&pg::repo_root().join("tests/control_scenarios.json"));
    let mut failures = Vec::new();
    for s in &scenarios {
        let bad = control_scenarios::check(s, &run_scenario_locally(s));
        if !bad.is_empty() {
            failures.push(format!("{}:\n    {}", s.name, bad.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed on the local store:\n{}",
        failures.len(),
        scenarios.len(),
        failures.join("\n")
    );
}

/// Beyond each store meeting the expectations: the two give the same
/// answer, word for word and number for number, to every scenario.
#[test]
fn both_stores_give_the_same_answer_to_every_scenario() {
    let Some(db) = migrated("both") else { return };
    let scenarios = control_scenarios::load(&pg::repo_root().join("tests/control_scenarios.json"));
    let comparable = |answer: &Result<Value, StoreError>| -> Value {
        match answer {
            Ok(a) => {
                let mut a = a.clone();
                if let Some(obj) = a.as_object_mut() {
                    obj.remove("audit_id");
                }
                a
            }
            Err(e) => json!({"error": e.code, "message": e.message}),
        }
    };
    let mut differ = Vec::new();
    for s in &scenarios {
        let (pg, local) = (run_scenario(&db, s), run_scenario_locally(s));
        let (pg_answer, local_answer) = (comparable(&pg.answer), comparable(&local.answer));
        if pg_answer != local_answer {
            differ.push(format!(
                "{}:\n  postgres {pg_answer}\n  local    {local_answer}",
                s.name
            ));
        }
        if pg.control != local.control {
            differ.push(format!(
                "{}: control rows {:?} vs {:?}",
                s.name, pg.control, local.control
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// The local store's twin of the 20-session test: 20 threads, each with its
/// own connection, pause 20 different workers of a pool whose budget allows
/// 3 at once: exactly 3 accepted, 17 refused, 20 audit rows, every round.
#[test]
fn the_local_store_holds_the_budget_under_20_concurrent_requests() {
    use heartbeat_sdk::sidecar::{ControlRequest, SqliteStore};
    for round in 0..5 {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("race.db");
        SqliteStore::new(&path)
            .pool_set("race", Some(3), Some(0), None, None)
            .expect("budget");
        let conn = rusqlite::Connection::open(&path).expect("open");
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        for i in 0..20 {
            conn.execute(
                "insert into hp_worker_status (worker_name, pool, status, last_heartbeat, heartbeat_interval_seconds, instance_id, instance_since) values (?1, 'race', 'running', ?2, 30, ?3, ?2)",
                rusqlite::params![format!("race-{i:02}"), now, instance(i)],
            )
            .expect("worker");
        }
        let gate = std::sync::Arc::new(std::sync::Barrier::new(20));
        let answers: Vec<String> = (0..20)
            .map(|i| {
                let (path, gate) = (path.clone(), std::sync::Arc::clone(&gate));
                std::thread::spawn(move || {
                    let store = SqliteStore::new(&path);
                    gate.wait();
                    store
                        .control(&ControlRequest::workers(
                            "pause",
                            vec![format!("race-{i:02}")],
                        ))
                        .expect("an answer")
                        .outcome
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let accepted = answers.iter().filter(|o| *o == "accepted").count();
        assert_eq!(
            (accepted, answers.len() - accepted),
            (3, 17),
            "round {round}"
        );
        let audit: i64 = conn
            .query_row(
                "select count(*) from hp_audit_log where action = 'pause'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(audit, 20, "round {round}");
    }
}

#[test]
fn the_local_audit_log_is_insert_only() {
    use heartbeat_sdk::sidecar::SqliteStore;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("audit.db");
    SqliteStore::new(&path)
        .pool_set("orders", Some(2), None, None, Some("ann@host"))
        .expect("an audited change");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let actor: String = conn
        .query_row("select actor from hp_audit_log", [], |r| r.get(0))
        .expect("audit row");
    assert_eq!(actor, "local (declared ann@host)");
    for sql in [
        "update hp_audit_log set actor = 'x'",
        "delete from hp_audit_log",
    ] {
        let e = conn.execute(sql, []).expect_err(sql).to_string();
        assert!(e.contains("insert-only"), "{sql}: {e}");
    }
}
