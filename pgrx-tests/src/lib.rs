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
    Client::connect(&conninfo(db, user), NoTls).unwrap_or_else(|e| match e.as_db_error() {
        Some(d) => panic!(
            "cannot connect to {db} as {user}: {} ({})",
            d.message(),
            d.code().code()
        ),
        None => panic!("cannot connect to {db} as {user}: {e}"),
    })
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
    /// A fixture database with the extension created and the shipped migration run
    /// (scripts/migrate, 000-007), and a superuser connection to it.
    pub fn migrated(tag: &str) -> (FixtureDb, Client) {
        let db = FixtureDb::new(tag);
        let mut c = db.dba();
        c.batch_execute("CREATE EXTENSION vital_tenancy").unwrap();
        let (ok, out, err) = migrate(&db.name, &[]);
        assert!(ok, "migration failed: {out}\n{err}");
        (db, c)
    }

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

/// Whether the server under test has a library (`citus`, `pg_cron`) in its `pkglibdir`:
/// the major's `pg_config` (`VT_PG_CONFIG`, set by scripts/test), else PostgreSQL 15's.
pub fn server_has_library(name: &str) -> bool {
    let pg_config = std::env::var("VT_PG_CONFIG")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".to_string());
    let lib = Command::new(pg_config)
        .arg("--pkglibdir")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    std::path::Path::new(&format!("{lib}/{name}.so")).exists()
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

/// Quote a string as an SQL literal (for the simple-query protocol, which has no
/// parameters; PgBouncer in transaction mode shares named prepared statements
/// between clients, so pooled tests use simple queries only).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The rows of a simple query's last result, as text.
pub fn simple_rows(c: &mut Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, postgres::Error> {
    let mut rows = Vec::new();
    for m in c.simple_query(sql)? {
        match m {
            postgres::SimpleQueryMessage::Row(r) => {
                rows.push((0..r.len()).map(|i| r.get(i).map(String::from)).collect())
            }
            postgres::SimpleQueryMessage::CommandComplete(_) => {}
            _ => {}
        }
    }
    Ok(rows)
}

/// A real PgBouncer (Debian's package) in front of one test database, in transaction
/// pooling mode as Supabase/PostgREST deployments run it, with `pool_size` server
/// connections. Stopped when dropped. A missing pgbouncer binary is a test failure.
pub struct Bouncer {
    child: std::process::Child,
    pub port: u16,
    dir: std::path::PathBuf,
    db: String,
}

impl Bouncer {
    pub fn start(db: &str, users: &[&str], pool_size: u32) -> Bouncer {
        Bouncer::start_at(
            &env("VT_E2E_HOST"),
            &env("VT_E2E_PORT"),
            db,
            users,
            pool_size,
        )
    }

    /// The same in front of the server at `host`:`pgport` (a Citus coordinator).
    pub fn start_at(host: &str, pgport: &str, db: &str, users: &[&str], pool_size: u32) -> Bouncer {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("pgbouncer is not installed (apt-get install pgbouncer; scripts/test does)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = std::env::temp_dir().join(format!("vt-bouncer-{db}-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pgbouncer directory");
        let users_file: String = users
            .iter()
            .chain(["postgres"].iter())
            .map(|u| format!("\"{u}\" \"\"\n"))
            .collect();
        std::fs::write(dir.join("users.txt"), users_file).unwrap();
        let ini = format!(
            "[databases]\n{db} = host={host} port={pgport} dbname={db} pool_size={pool_size}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
             max_client_conn = 500\ndefault_pool_size = {pool_size}\nserver_reset_query =\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {log}\npidfile = {pid}\n",
            users = dir.join("users.txt").display(),
            log = dir.join("pgbouncer.log").display(),
            pid = dir.join("pgbouncer.pid").display(),
        );
        let cfg = dir.join("pgbouncer.ini");
        std::fs::write(&cfg, ini).unwrap();
        // PgBouncer refuses to run as root, like PostgreSQL.
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let mut cmd = if as_root {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status();
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", bin]);
            c
        } else {
            Command::new(bin)
        };
        let child = cmd
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let b = Bouncer {
            child,
            port,
            dir,
            db: db.to_string(),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return b;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "pgbouncer did not start: {}",
            std::fs::read_to_string(b.dir.join("pgbouncer.log")).unwrap_or_default()
        );
    }

    /// A client connection through the pool as `user`.
    pub fn connect(&self, user: &str) -> Client {
        let info = format!(
            "host=127.0.0.1 port={} user={user} dbname={}",
            self.port, self.db
        );
        Client::connect(&info, NoTls)
            .unwrap_or_else(|e| panic!("cannot connect through pgbouncer as {user}: {e}"))
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // runuser's child is pgbouncer itself; make sure it is gone.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Rows of a simple query, as text.
pub type Rows = Vec<Vec<Option<String>>>;

/// A failed statement's SQLSTATE and message.
pub type Failure = (String, String);

/// One request as PostgREST makes it, over the simple protocol: a transaction; `role`,
/// the request's claims and headers set with `set_config(..., true)`; the pre-request
/// hook when asked; then `sql` (one or more statements). Always rolled back. Returns
/// the rows that follow the set-up (the hook's row excluded), or the failure.
pub fn postgrest(
    c: &mut Client,
    role: &str,
    claims: &str,
    headers: &str,
    pre_request: bool,
    sql: &str,
) -> Result<Rows, Failure> {
    let full = format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED;
         SELECT set_config('role', {}, true), set_config('request.jwt.claims', {}, true),
                set_config('request.headers', {}, true);
         {}
         {sql};",
        literal(role),
        literal(claims),
        literal(headers),
        if pre_request {
            "SELECT vital_tenancy.pre_request();"
        } else {
            ""
        }
    );
    let r = simple_rows(c, &full);
    let _ = c.batch_execute("ROLLBACK");
    r.map(|rows| {
        rows.into_iter()
            .skip(1 + usize::from(pre_request))
            .collect()
    })
    .map_err(|e| {
        let d = e.as_db_error();
        (
            d.map(|d| d.code().code().to_string()).unwrap_or_default(),
            d.map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string()),
        )
    })
}

/// The three tenants' ids.
pub const PLATFORM: &str = "00000000-0000-0000-0000-000000000001";
pub const DIGITAL: &str = "11111111-1111-1111-1111-111111111111";
pub const PHARMA: &str = "f7aa6fd4-0af9-4706-8b31-034f1f7accda";
