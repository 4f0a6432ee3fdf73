//! The census of 0.2.0 (`../shared/findings/census-2026-12-02.md`) as tests: the
//! defects that need a backfill that commits, a second session or a cancel (N01, N02,
//! N04, N05, N06), and the catalog-generated bad-input suite of the bad-input issue:
//! every routine of the extension from `pg_proc`, every argument replaced in turn by
//! the bad values of its type. (The single-transaction defects are in
//! tests/pg_regress/sql/census.sql.)

use postgres::Client;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use vital_tenancy_e2e::{sqlstate, FixtureDb};

/// Fixture + extension + tenants + `fz.rv`: the fixture's prompts repeated `copies`
/// times (their names, domains and authors), integer keys, no tenant column, with the
/// tenant the prompt rules give each row kept aside in `fz.rv_expected`.
fn prompts_copy(tag: &str, copies: i32) -> (FixtureDb, Client) {
    let db = FixtureDb::new(tag);
    let mut c = db.dba();
    c.batch_execute("CREATE EXTENSION vital_tenancy").unwrap();
    c.query(
        r#"SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}')"#,
        &[],
    )
    .unwrap();
    c.batch_execute(&format!(
        "CREATE SCHEMA fz;
         CREATE TABLE fz.rv AS
           SELECT (row_number() OVER ())::int AS id, p.name || '-' || g AS name, p.domain::text AS domain, p.created_by
             FROM public.prompts p CROSS JOIN generate_series(1, {copies}) g;
         ALTER TABLE fz.rv ADD PRIMARY KEY (id);
         CREATE TABLE fz.rv_expected AS
           SELECT id, vital_tenancy.classify_prompt_tenant(name, domain, created_by, NULL) AS tenant FROM fz.rv;"
    ))
    .unwrap();
    (db, c)
}

/// Rows of `fz.rv` whose tenant is not what the rules give them.
fn misplaced(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM fz.rv r JOIN fz.rv_expected e USING (id) WHERE r.tenant_id IS DISTINCT FROM e.tenant",
        &[],
    )
    .unwrap()
    .get(0)
}

/// N05 (and N01's second half): a catalog-default backfill cancelled midway, marked
/// finished, is not "nothing to do" on a re-run, and its revert puts back every row
/// (none had a tenant before the run), not only the journaled ones; after it the
/// backfill places every row as the rules say.
#[test]
fn n05_an_interrupted_catalog_default_backfill_reverts_every_row() {
    let (_db, mut c) = prompts_copy("n05", 20);
    let n: i64 = c
        .query_one("SELECT count(*) FROM fz.rv", &[])
        .unwrap()
        .get(0);
    c.batch_execute("SET statement_timeout = '1500ms'").unwrap();
    let r = c.batch_execute(
        "CALL vital_tenancy.backfill('fz.rv', 'prompt', 1000, sleep_ms => 200, run_name => 'n05')",
    );
    assert_eq!(sqlstate(r), "57014", "the CALL is cancelled midway");
    c.batch_execute("RESET statement_timeout").unwrap();
    let (phase, done): (String, i64) = {
        let r = c
            .query_one(
                "SELECT phase, rows_done FROM vital_tenancy.migration_steps",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(phase, "queue");
    assert!(
        done > 0 && done < n,
        "{done} of {n} rows walked before the cancel"
    );
    assert!(
        misplaced(&mut c) > 0,
        "rows past the checkpoint hold the majority tenant"
    );
    c.query_one("SELECT vital_tenancy.finish_run('n05')", &[])
        .unwrap();
    // A re-run does not say "nothing to do" for the rows the batches never reached.
    let r =
        c.batch_execute("CALL vital_tenancy.backfill('fz.rv', 'prompt', 1000, run_name => 'n05b')");
    assert_eq!(sqlstate(r), "55000");
    let rows = c
        .query(
            "SELECT reverted, skipped_changed_since FROM vital_tenancy.revert_run(
                    (SELECT run_id FROM vital_tenancy.migration_runs WHERE name = 'n05'))",
            &[],
        )
        .unwrap();
    assert_eq!((rows[0].get::<_, i64>(0), rows[0].get::<_, i64>(1)), (n, 0));
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM fz.rv WHERE tenant_id IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "every row back to no tenant, as before the run");
    c.batch_execute("CALL vital_tenancy.backfill('fz.rv', 'prompt', 1000, run_name => 'n05c')")
        .unwrap();
    assert_eq!(
        misplaced(&mut c),
        0,
        "every row as the rules say after the re-run"
    );
}

/// N01: a tenant column name PostgreSQL would cut is refused before anything is read or
/// written: no column, no run; the same backfill with a valid name then places every row.
#[test]
fn n01_a_long_tenant_column_is_refused_before_anything_is_written() {
    let (_db, mut c) = prompts_copy("n01", 2);
    for _ in 0..2 {
        let r = c.batch_execute(&format!(
            "CALL vital_tenancy.backfill('fz.rv', 'prompt', tenant_column => '{}', run_name => 'n01')",
            "c".repeat(64)
        ));
        assert_eq!(sqlstate(r), "42622");
    }
    let (cols, runs): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM pg_attribute WHERE attrelid = 'fz.rv'::regclass AND attname LIKE 'ccc%'),
                        (SELECT count(*) FROM vital_tenancy.migration_runs)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((cols, runs), (0, 0));
    c.batch_execute("CALL vital_tenancy.backfill('fz.rv', 'prompt', run_name => 'n01')")
        .unwrap();
    assert_eq!(misplaced(&mut c), 0);
}

/// N04: a parent whose tenant column is text is refused by the plan, before the
/// backfill adds the child's column (with a majority tenant) or records a run.
#[test]
fn n04_a_text_parent_tenant_column_is_refused_before_anything_is_written() {
    let (_db, mut c) = prompts_copy("n04", 1);
    c.batch_execute(
        "CREATE TABLE fz.par (id int PRIMARY KEY, name text, tenant_id text);
         INSERT INTO fz.par VALUES (1, 'a', '00000000-0000-0000-0000-000000000001'), (2, 'b', 'f7aa6fd4-0af9-4706-8b31-034f1f7accda');
         CREATE TABLE fz.ch (id int PRIMARY KEY, name text);
         INSERT INTO fz.ch SELECT g, CASE WHEN g % 5 = 0 THEN 'b' ELSE 'a' END FROM generate_series(1, 50) g;",
    )
    .unwrap();
    let r = c.batch_execute(
        r#"CALL vital_tenancy.backfill('fz.ch', 'parent', options => '{"column": "name", "parent": "fz.par", "match": ["name"]}', run_name => 'n04')"#,
    );
    assert_eq!(sqlstate(r), "42804");
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_attribute WHERE attrelid = 'fz.ch'::regclass AND attname = 'tenant_id'),
                    (SELECT count(*) FROM vital_tenancy.migration_runs)",
            &[],
        )
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (0, 0));
}

/// N02: behind an open reader of the registry, protect_tenants_table() gives up with
/// 55P03 naming the registry within its lock limits (2 s, 5 retries), and a reader
/// arriving meanwhile waits no longer than one attempt; ensure_tenants behind an open
/// writer gives up after one lock timeout.
#[test]
fn n02_registry_ddl_gives_up_behind_an_open_reader() {
    let db = FixtureDb::new("n02");
    let mut c = db.dba();
    c.batch_execute("CREATE EXTENSION vital_tenancy").unwrap();
    c.query(
        r#"SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}')"#,
        &[],
    )
    .unwrap();
    let mut reader = db.dba();
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM public.tenants")
        .unwrap();
    let name = db.name.clone();
    let ddl = std::thread::spawn(move || {
        let mut c = vital_tenancy_e2e::connect(&name, "postgres");
        let t = Instant::now();
        let r = c.query("SELECT * FROM vital_tenancy.protect_tenants_table()", &[]);
        let took = t.elapsed();
        let msg = r
            .as_ref()
            .err()
            .and_then(|e| e.as_db_error())
            .map(|d| d.message().to_string());
        (took, sqlstate(r.map(|_| ())), msg.unwrap_or_default())
    });
    std::thread::sleep(Duration::from_millis(1000));
    let mut late = db.dba();
    let t = Instant::now();
    late.query_one("SELECT count(*) FROM public.tenants", &[])
        .unwrap();
    let waited = t.elapsed();
    let (took, code, msg) = ddl.join().unwrap();
    assert_eq!(code, "55P03");
    // N13: the message names the table and the step.
    assert!(
        msg.starts_with("public.tenants: ")
            && msg.contains("could not get its lock within 2000 ms, 6 attempts"),
        "{msg}"
    );
    assert!(
        took < Duration::from_secs(30),
        "gave up after {took:?}, within 6 attempts of 2 s and their backoff"
    );
    assert!(
        waited < Duration::from_millis(2500),
        "a reader queued {waited:?} behind the DDL (at most one attempt)"
    );
    reader.batch_execute("ROLLBACK").unwrap();
    // ensure_tenants behind an open writer of the registry.
    reader
        .batch_execute("BEGIN; UPDATE public.tenants SET name = name WHERE false")
        .unwrap();
    let t = Instant::now();
    let r = c.query(
        r#"SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}')"#,
        &[],
    );
    assert_eq!(sqlstate(r), "55P03");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    reader.batch_execute("ROLLBACK").unwrap();
    // Unblocked, the registry is protected as before.
    c.query("SELECT * FROM vital_tenancy.protect_tenants_table()", &[])
        .unwrap();
}

/// N06: two sessions adding one slug at the same moment both get its id, in each of
/// ten rounds, as two calls one after the other would.
#[test]
fn n06_concurrent_add_tenant_of_one_slug_returns_one_id() {
    let db = FixtureDb::new("n06");
    let mut c = db.dba();
    c.batch_execute("CREATE EXTENSION vital_tenancy").unwrap();
    c.query(
        r#"SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}')"#,
        &[],
    )
    .unwrap();
    for round in 0..10 {
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (name, barrier) = (db.name.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut c = vital_tenancy_e2e::connect(&name, "postgres");
                    barrier.wait();
                    c.query_one(
                        &format!(
                            r#"SELECT vital_tenancy.add_tenant('Conc {round}', 'conc-{round}', '{{"type": "industry"}}')::text"#
                        ),
                        &[],
                    )
                    .map(|r| r.get::<_, String>(0))
                    .map_err(|e| e.to_string())
                })
            })
            .collect();
        let ids: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(ids[0].is_ok() && ids[0] == ids[1], "round {round}: {ids:?}");
    }
}

/// The bad values of a type, as SQL literals with their cast.
fn bad_values(ty: &str, dropped: u32) -> Vec<String> {
    let dropped_oid = dropped.to_string();
    let cast =
        |vals: &[&str]| -> Vec<String> { vals.iter().map(|v| format!("{v}::{ty}")).collect() };
    let mut v = vec![format!("NULL::{ty}")];
    v.extend(match ty {
        "text" | "name" => cast(&[
            "''",
            "' '",
            "repeat('x', 100000)",
            "repeat('c', 64)",
            "'\"unterminated'",
            "'pg_catalog.pg_proc'",
            "E'\\t\\n'",
        ]),
        "text[]" => cast(&[
            "'{}'",
            "ARRAY[NULL]",
            "ARRAY['']",
            "ARRAY[repeat('x', 100000)]",
        ]),
        "regclass" => cast(&[
            "0",
            "1",
            "4294967295",
            &dropped_oid,
            "'pg_catalog.pg_class'",
            "'vital_tenancy.settings'",
            "'public.prompts_pkey'",
            "'fz.v'",
        ]),
        "uuid" => cast(&[
            "'00000000-0000-0000-0000-000000000000'",
            "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
        ]),
        "jsonb" => cast(&[
            "'[]'",
            "'\"x\"'",
            "'null'",
            "('{\"a\":' || repeat('[', 200) || repeat(']', 200) || '}')",
            "jsonb_build_object('a', repeat('x', 100000))",
            "'{\"a\": 1e400}'",
        ]),
        "integer" => cast(&["0", "-1", "2147483647", "(-2147483648)"]),
        "bigint" => cast(&["0", "-1", "9223372036854775807"]),
        "interval" => cast(&["'-1 day'", "'100000 years'"]),
        "timestamp with time zone" => cast(&["'infinity'", "'-infinity'"]),
        "double precision" => cast(&["'NaN'", "'-1'", "'Infinity'"]),
        _ => Vec::new(),
    });
    v
}

/// A value of the type and argument that the routine may accept: its default where it
/// has one, else one by the argument's name, else one by its type.
fn good_value(name: &str, ty: &str, default: Option<&str>) -> String {
    if let Some(d) = default {
        return format!("({d})::{ty}");
    }
    let v = match (name, ty) {
        (_, "regclass") => "'fz.bf'",
        ("kind" | "classifier", _) => "'prompt'",
        ("tenant_column" | "column_name" | "child_column" | "user_column", _) => "'tenant_id'",
        ("tenants_table", _) => "'public.tenants'",
        ("tbl", "text") => "'fz.bf'",
        ("status", _) => "'active'",
        ("access", _) => "'read-only'",
        ("phase", _) => "'queue'",
        ("dry_run", _) => "true",
        // The internal helpers that run SQL they are given (run_ddl, a backfill batch).
        ("ddl", _) => "'SELECT 1'",
        ("batch_sql", _) => "'SELECT 1::bigint, 0::bigint, 1::bigint, 1::bigint'",
        (_, "text") | (_, "name") => "'census'",
        (_, "text[]") => "'{public}'",
        (_, "uuid") => "'11111111-1111-1111-1111-111111111111'",
        (_, "jsonb") => "'{}'",
        (_, "integer") | (_, "bigint") => "1",
        (_, "boolean") => "false",
        (_, "interval") => "'1 hour'",
        (_, "timestamp with time zone") => "now()",
        (_, "double precision") => "1",
        _ => "NULL",
    };
    format!("{v}::{ty}")
}

/// Text no message of the extension may carry: PL/pgSQL's, Rust's and SQL's internals,
/// or a constraint of the extension's own tables caught after the fact.
const INTERNAL: &[&str] = &[
    "is not assigned yet",
    "Datum error",
    "panicked",
    "unwrap()",
    "RUST_BACKTRACE",
    "cache lookup failed",
    "syntax error at or near",
    "null value in column",
    "array contains NULL",
    "query returned no rows",
    "there is no parameter",
    "could not determine data type",
];

/// One routine's arguments: (name, type, default SQL or None), IN arguments only.
type Args = Vec<(String, String, Option<String>)>;

fn routines(c: &mut Client) -> Vec<(String, String, Args)> {
    let rows = c
        .query(
            "SELECT p.oid::regprocedure::text, p.prokind::text, p.proname::text,
                    ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY a(t, i) ORDER BY i),
                    ARRAY(SELECT coalesce((p.proargnames)[i], '') FROM generate_series(1, p.pronargs) i),
                    p.pronargdefaults::int,
                    coalesce(pg_get_expr(p.proargdefaults, 0), '')
               FROM pg_proc p
              WHERE p.pronamespace = 'vital_tenancy'::regnamespace
                AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype)
              ORDER BY 1",
            &[],
        )
        .unwrap();
    rows.iter()
        .map(|r| {
            let types: Vec<String> = r.get(3);
            let names: Vec<String> = r.get(4);
            let ndef: i32 = r.get(5);
            let defaults = split_defaults(&r.get::<_, String>(6));
            let first_default = types.len() as i32 - ndef;
            let args = types
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let d = (i as i32 >= first_default)
                        .then(|| defaults.get((i as i32 - first_default) as usize).cloned())
                        .flatten();
                    (names[i].clone(), t.clone(), d)
                })
                .collect();
            (r.get::<_, String>(2), r.get::<_, String>(1), args)
        })
        .collect()
}

/// `pg_get_expr(proargdefaults)`: the defaults separated by ", " outside quotes and
/// parentheses.
fn split_defaults(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quoted) = (Vec::new(), String::new(), 0, false);
    for ch in s.chars() {
        match ch {
            '\'' => quoted = !quoted,
            '(' | '[' if !quoted => depth += 1,
            ')' | ']' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Everything a failed call could have changed: the rows and definitions of the
/// application's tables and the extension's.
fn state(c: &mut Client) -> String {
    let tables: Vec<String> = c
        .query(
            "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND n.nspname IN ('public', 'fz', 'vital_tenancy') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let rows = tables
        .iter()
        .map(|t| format!("SELECT {}::text || md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x", vital_tenancy_e2e::literal(t)))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let data: String = c
        .query_one(
            &format!("SELECT md5(string_agg(s, ',' ORDER BY s)) FROM ({rows}) q(s)"),
            &[],
        )
        .unwrap()
        .get(0);
    let catalog: String = c
        .query_one(
            "SELECT md5(coalesce(string_agg(l, ',' ORDER BY l), '')) FROM (
               SELECT a.attrelid::regclass::text || '.' || a.attname || ':' || format_type(a.atttypid, a.atttypmod) || a.attnotnull
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname IN ('public', 'fz') AND a.attnum > 0 AND NOT a.attisdropped
               UNION ALL SELECT polrelid::regclass::text || polname FROM pg_policy
               UNION ALL SELECT tgrelid::regclass::text || tgname FROM pg_trigger WHERE NOT tgisinternal
               UNION ALL SELECT conrelid::regclass::text || conname || convalidated FROM pg_constraint WHERE conrelid <> 0
               UNION ALL SELECT c.oid::regclass::text || c.relrowsecurity || c.relforcerowsecurity FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'fz')) q(l)",
            &[],
        )
        .unwrap()
        .get(0);
    format!("{data}/{catalog}")
}

/// The catalog-generated bad-input suite: every routine of the extension, every IN
/// argument replaced in turn by each bad value of its type, the others given values
/// it may accept. Functions run in a transaction rolled back after them (their effects
/// go with it); procedures, which commit, run on their own and a failed CALL must leave
/// every table and definition as it found them. No call may fail with XX000, crash the
/// server, hang past its statement timeout or speak of PL/pgSQL's, Rust's or SQL's
/// internals.
#[test]
fn catalog_generated_bad_input_suite() {
    let (db, mut c) = FixtureDb::migrated("census");
    c.batch_execute(
        "CREATE SCHEMA fz;
         CREATE TABLE fz.bf AS SELECT (row_number() OVER ())::int AS id, name, domain::text AS domain, created_by FROM public.prompts;
         ALTER TABLE fz.bf ADD PRIMARY KEY (id);
         CREATE VIEW fz.v AS SELECT 1 AS x;
         CREATE TABLE fz.gone (id int);
",
    )
    .unwrap();
    // A dropped table's OID, as a stored regclass keeps it.
    let dropped: u32 = c
        .query_one("SELECT 'fz.gone'::regclass::oid", &[])
        .unwrap()
        .get(0);
    c.batch_execute("DROP TABLE fz.gone").unwrap();
    let all = routines(&mut c);
    assert!(all.len() > 80, "{} routines", all.len());
    let (mut calls, mut errors, mut problems) = (0, 0, Vec::new());
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for (name, kind, args) in &all {
        for (i, (_, ty, _)) in args.iter().enumerate() {
            for bad in bad_values(ty, dropped) {
                let list: Vec<String> = args
                    .iter()
                    .enumerate()
                    .map(|(j, (n, t, d))| {
                        if j == i {
                            bad.clone()
                        } else {
                            good_value(n, t, d.as_deref())
                        }
                    })
                    .collect();
                let call = format!("vital_tenancy.{name}({})", list.join(", "));
                calls += 1;
                let before = (kind == "p").then(|| state(&mut c));
                let r = if kind == "p" {
                    // Alone in its simple query: a CALL in a multi-statement one is in a
                    // transaction block, where the procedure cannot commit.
                    c.batch_execute("SET statement_timeout = '20s'; SET lock_timeout = '2s'")
                        .unwrap();
                    c.batch_execute(&format!("CALL {call}"))
                } else {
                    c.batch_execute(&format!(
                        "BEGIN; SET LOCAL statement_timeout = '20s'; SET LOCAL lock_timeout = '2s'; SELECT * FROM {call}"
                    ))
                };
                let outcome = r.as_ref().err().map(|e| {
                    (
                        e.as_db_error()
                            .map(|d| d.code().code().to_string())
                            .unwrap_or_default(),
                        e.as_db_error()
                            .map(|d| d.message().to_string())
                            .unwrap_or_else(|| e.to_string()),
                    )
                });
                if c.is_closed() || c.simple_query("ROLLBACK").is_err() {
                    problems.push(format!("{call}: the connection died ({outcome:?})"));
                    c = db.dba();
                    continue;
                }
                c.batch_execute("RESET statement_timeout; RESET lock_timeout")
                    .unwrap();
                let Some((code, msg)) = outcome else { continue };
                errors += 1;
                *codes.entry(code.clone()).or_default() += 1;
                let short: String = msg.chars().take(200).collect();
                if std::env::var("VT_CENSUS_VERBOSE").is_ok() {
                    eprintln!("{code} {call}: {short}");
                }
                if code.is_empty() || code == "XX000" || code.starts_with("58") || code == "57014" {
                    problems.push(format!("{call}: {code} {short}"));
                } else if let Some(w) = INTERNAL
                    .iter()
                    // SQL given as SQL: a syntax error is PostgreSQL's answer to it.
                    .filter(|w| {
                        !(**w == "syntax error at or near"
                            && ["ddl", "batch_sql"].contains(&args[i].0.as_str()))
                    })
                    .find(|w| msg.contains(*w))
                {
                    problems.push(format!("{call}: {code} speaks of internals ({w}): {short}"));
                }
                if let Some(before) = before {
                    if state(&mut c) != before {
                        problems.push(format!("{call}: failed with {code} and changed the state"));
                    }
                }
            }
        }
    }
    eprintln!(
        "census: {} routines, {calls} calls, {errors} refused; SQLSTATEs {codes:?}",
        all.len()
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
