//! Harness for vital_tenancy's end-to-end tests: each test gets its own database on
//! a running cluster, loaded with the real VITAL pre-migration fixture by the
//! fixture's own `load.sh`, and talks to it over the wire like an application.
//!
//! The cluster is named by the environment (`scripts/test` sets it):
//! `VT_E2E_HOST` (socket directory or host), `VT_E2E_PORT`, `VT_FIXTURE` (fixture
//! directory), `VT_PSQL` (psql binary). Missing settings are a test failure, never a
//! silent skip.

use postgres::{Client, NoTls};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the e2e tests through scripts/test, which starts the cluster"
        )
    })
}

/// Connection parameters of the test cluster.
pub fn conninfo(db: &str, user: &str) -> String {
    format!(
        "host={} port={} user={} dbname={}",
        env("VT_E2E_HOST"),
        env("VT_E2E_PORT"),
        user,
        db
    )
}

/// Connect to `db` as `user` (trust authentication on the private test cluster).
pub fn connect(db: &str, user: &str) -> Client {
    Client::connect(&conninfo(db, user), NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to {db} as {user}: {e}"))
}

/// A throwaway database holding the real fixture, dropped when the test ends.
pub struct FixtureDb {
    pub name: String,
}

impl FixtureDb {
    /// Create a fresh database named after `tag` and load the fixture into it.
    pub fn new(tag: &str) -> FixtureDb {
        Self::with_env(tag, &[])
    }

    /// Like `new`, with extra environment for load.sh (e.g. `WITH_ORG_TABLES=1`).
    pub fn with_env(tag: &str, vars: &[(&str, &str)]) -> FixtureDb {
        let name = format!(
            "vt_e2e_{tag}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = connect("postgres", "postgres");
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .expect("drop old test database");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        let fixture = env("VT_FIXTURE");
        let mut cmd = Command::new("bash");
        cmd.arg(format!("{fixture}/load.sh"))
            .arg(conninfo(&name, "postgres"))
            .env("PSQL", env("VT_PSQL"));
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run load.sh");
        assert!(
            out.status.success(),
            "load.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        FixtureDb { name }
    }

    /// A connection as the cluster's superuser (the DBA).
    pub fn dba(&self) -> Client {
        connect(&self.name, "postgres")
    }

    /// A connection as another login role.
    pub fn connect_as(&self, role: &str) -> Client {
        connect(&self.name, role)
    }
}

impl Drop for FixtureDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&conninfo("postgres", "postgres"), NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// The SQLSTATE of a failed statement, or a panic naming the unexpected success.
pub fn sqlstate<T: std::fmt::Debug>(r: Result<T, postgres::Error>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => match e.as_db_error() {
            Some(db) => db.code().code().to_string(),
            None => panic!("expected a database error, got {e}"),
        },
    }
}

/// The message of a failed statement.
pub fn message<T: std::fmt::Debug>(r: Result<T, postgres::Error>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}

/// Row counts of every ordinary table in schema `public`, sorted by table name.
pub fn public_counts(c: &mut Client) -> Vec<(String, i64)> {
    let tables: Vec<String> = c
        .query(
            "SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tables
        .into_iter()
        .map(|t| {
            let n: i64 = c
                .query_one(&format!("SELECT count(*) FROM public.\"{t}\""), &[])
                .unwrap()
                .get(0);
            (t, n)
        })
        .collect()
}

/// The repository root (for scripts and SQL files).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Run `scripts/migrate` against `db` with extra arguments; returns (success, stdout, stderr).
pub fn migrate(db: &str, args: &[&str]) -> (bool, String, String) {
    let report = std::env::temp_dir().join(format!("vt-report-{db}.md"));
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/migrate"))
        .arg(conninfo(db, "postgres"))
        .args(["--no-backup", "--report"])
        .arg(&report)
        .args(args)
        .env(
            "PG_BIN",
            std::path::Path::new(&env("VT_PSQL"))
                .parent()
                .unwrap_or(std::path::Path::new("/")),
        )
        .output()
        .expect("run scripts/migrate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run one SQL file with psql (ON_ERROR_STOP); returns (success, stderr).
pub fn psql_file(db: &str, file: &std::path::Path) -> (bool, String) {
    let out = Command::new(env("VT_PSQL"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(conninfo(db, "postgres"))
        .arg("-f")
        .arg(file)
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// md5 over every row of every table in `public` (as jsonb, minus the given keys),
/// table by table: equal checksums mean equal data.
pub fn checksums(c: &mut Client, minus_keys: &[&str]) -> Vec<(String, String)> {
    let minus: Vec<String> = minus_keys.iter().map(|s| s.to_string()).collect();
    let tables: Vec<String> = c
        .query(
            "SELECT oid::regclass::text FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tables
        .into_iter()
        .map(|t| {
            let sum: Option<String> = c
                .query_one(
                    &format!("SELECT md5(string_agg((to_jsonb(x) - $1::text[])::text, '|' ORDER BY (to_jsonb(x) - $1::text[])::text)) FROM {t} x"),
                    &[&minus],
                )
                .unwrap()
                .get(0);
            (t, sum.unwrap_or_default())
        })
        .collect()
}
