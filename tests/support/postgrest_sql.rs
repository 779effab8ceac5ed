//! The statements PostgREST (v12) runs: supabase-js's upsert
//! (`POST /hp_worker_status?on_conflict=worker_name` with
//! `Prefer: resolution=merge-duplicates`), a filtered read, and an RPC call.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The SQL to list the table's columns with their types, one `name|type` a line.
pub const COLUMN_TYPES_SQL: &str = "select attname || '|' || format_type(atttypid, atttypmod) \
     from pg_attribute where attrelid = 'public.hp_worker_status'::regclass \
     and attnum > 0 and not attisdropped order by attnum;";

/// Parses the output of [`COLUMN_TYPES_SQL`].
pub fn parse_column_types(psql_output: &str) -> BTreeMap<String, String> {
    psql_output
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect()
}

/// Builds the upsert for one JSON object, as PostgREST does: the payload's
/// keys (sorted, as PostgREST's set of columns is) typed from the table,
/// read with `json_to_recordset`, and every key updated on conflict.
///
/// # Errors
/// `PGRST204`-style, when a key is not a column (PostgREST answers 400 then).
pub fn upsert(row: &Value, columns: &BTreeMap<String, String>) -> Result<String, String> {
    let obj = row.as_object().ok_or("the payload is not an object")?;
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let mut typed = Vec::new();
    for k in &keys {
        let ty = columns
            .get(*k)
            .ok_or_else(|| format!("PGRST204: Could not find the '{k}' column of 'hp_worker_status' in the schema cache"))?;
        typed.push(format!("\"{k}\" {ty}"));
    }
    let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    let body_cols: Vec<String> = keys
        .iter()
        .map(|k| format!("\"pgrst_body\".\"{k}\""))
        .collect();
    let sets: Vec<String> = keys
        .iter()
        .map(|k| format!("\"{k}\" = EXCLUDED.\"{k}\""))
        .collect();
    let json = row.to_string();
    if json.contains("$hpjson$") {
        return Err("payload contains the quoting tag".into());
    }
    Ok(format!(
        "INSERT INTO \"public\".\"hp_worker_status\"({cols}) SELECT {body} \
         FROM (SELECT $hpjson${json}$hpjson$::json AS json_data) pgrst_payload, \
         LATERAL (SELECT CASE WHEN json_typeof(pgrst_payload.json_data) = 'array' THEN pgrst_payload.json_data ELSE json_build_array(pgrst_payload.json_data) END AS val) pgrst_uniform_json, \
         LATERAL (SELECT {cols} FROM json_to_recordset(pgrst_uniform_json.val) AS _({typed}) ) pgrst_body \
         ON CONFLICT(\"worker_name\") DO UPDATE SET {sets} RETURNING 1",
        cols = quoted.join(", "),
        body = body_cols.join(", "),
        typed = typed.join(", "),
        sets = sets.join(", "),
    ))
}

/// The read PostgREST runs for `GET /rest/v1/<table>?<col>=<op>.<value>&...&select=<cols>`
/// with `eq` and `gt` filters; its `body` column is the JSON array of rows
/// (`[]` when none).
///
/// # Errors
/// For an operator other than `eq`/`gt`.
pub fn read(
    table: &str,
    filters: &[(&str, &str, &str)],
    select: &[&str],
) -> Result<String, String> {
    let qualified = format!("\"public\".\"{table}\"");
    let cols: Vec<String> = select
        .iter()
        .map(|c| format!("{qualified}.\"{c}\""))
        .collect();
    let mut conds = Vec::new();
    for (col, op, value) in filters {
        let op = match *op {
            "eq" => "=",
            "gt" => ">",
            other => return Err(format!("operator {other} is not built here; use eq or gt")),
        };
        conds.push(format!(
            " {qualified}.\"{col}\" {op} {}",
            quote_literal(value)
        ));
    }
    Ok(format!(
        "WITH pgrst_source AS ( SELECT {cols} FROM {qualified} WHERE {conds}  ) \
         SELECT null::bigint AS total_result_set, pg_catalog.count(_postgrest_t) AS page_total, \
         coalesce(json_agg(_postgrest_t), '[]') AS body, \
         nullif(current_setting('response.headers', true), '') AS response_headers, \
         nullif(current_setting('response.status', true), '') AS response_status, \
         '' AS response_inserted FROM ( SELECT * FROM pgrst_source ) _postgrest_t",
        cols = cols.join(", "),
        conds = conds.join(" AND "),
    ))
}

/// The call PostgREST makes for `POST /rest/v1/rpc/<function>` with this
/// JSON object as body: each key a named argument; keys left out take the
/// function's defaults. Values go in as untyped literals, typed by the
/// function's parameters (arrays as array literals).
///
/// # Errors
/// When `args` is not an object, or holds a nested object.
pub fn rpc(function: &str, args: &Value) -> Result<String, String> {
    let obj = args.as_object().ok_or("the RPC body is not an object")?;
    let mut named = Vec::new();
    for (key, value) in obj {
        named.push(format!("\"{key}\" := {}", literal(value)?));
    }
    Ok(format!(
        "SELECT \"public\".\"{function}\"({})",
        named.join(", ")
    ))
}

fn literal(value: &Value) -> Result<String, String> {
    Ok(match value {
        Value::Null => "NULL".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote_literal(s),
        Value::Array(items) => {
            let mut elems = Vec::new();
            for item in items {
                elems.push(match item {
                    Value::Null => "NULL".to_owned(),
                    Value::String(s) => {
                        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
                    }
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err("nested arrays or objects in an RPC argument".into()),
                });
            }
            quote_literal(&format!("{{{}}}", elems.join(",")))
        }
        Value::Object(_) => return Err("an object as an RPC argument".into()),
    })
}

/// A SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
