//! The statement PostgREST (v12) runs for supabase-js's upsert:
//! `POST /hp_worker_status?on_conflict=worker_name` with
//! `Prefer: resolution=merge-duplicates`.

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
