//! Migration planning, pure: which SQL expression assigns a table's tenant, and which
//! DDL steps add and enforce a tenant column online. The glue (`crate::migrate`)
//! reads the catalog into [`TableInfo`] and runs what is planned here.

use super::ident::quote_ident;
use super::tenants::{uuid_bytes, uuid_text};
use serde_json::Value;
use std::fmt;

/// A column as the planner needs it: name and `format_type()` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_name: String,
}

/// A table as the planner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Schema-qualified, quoted SQL name.
    pub sql_name: String,
    pub columns: Vec<Column>,
}

impl TableInfo {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// How a table's rows get their tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classifier {
    Prompt,
    Knowledge,
    Agent,
    Tool,
    Platform,
    /// One fixed tenant for every row.
    Tenant(String),
    /// The tenant of a parent row, matched on one or more parent columns in order,
    /// with a fallback tenant for rows that match none.
    /// `private`: rows are never given the Platform tenant (a parent on Platform counts
    /// as no match), for data like messages that must stay private to a tenant.
    Parent {
        column: String,
        parent: String,
        keys: Vec<String>,
        fallback: Option<String>,
        private: bool,
    },
}

impl Classifier {
    /// Whether the classification expression can yield NULL (a row it cannot place).
    /// The rule classifiers always end in their rule set's default tenant; only a
    /// parent lookup without a fallback can find nothing. The backfill tests the
    /// expression for NULL (evaluating it a second time per row) only when it can be.
    pub fn may_return_null(&self) -> bool {
        matches!(self, Classifier::Parent { fallback: None, .. })
    }

    /// The tenants the options name, with the option's name: each must exist in the
    /// tenants table (the backfill writes them with the foreign key's trigger off).
    pub fn option_tenants(&self) -> Vec<(&'static str, &str)> {
        match self {
            Classifier::Tenant(id) => vec![("tenant", id.as_str())],
            Classifier::Parent {
                fallback: Some(id), ..
            } => vec![("fallback", id.as_str())],
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    /// SQLSTATE class hint for the glue: "22023", "42703", "42804", "42P01".
    pub code: &'static str,
    pub message: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn err(code: &'static str, message: impl Into<String>) -> PlanError {
    PlanError {
        code,
        message: message.into(),
    }
}

fn opt_str<'a>(options: &'a Value, key: &str) -> Result<Option<&'a str>, PlanError> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(err("22023", format!("option \"{key}\" must be a string"))),
    }
}

impl Classifier {
    /// Parse a classifier name and its options (`{"column": …, "parent": …, "match":
    /// […], "fallback": …}` for `parent`, `{"tenant": …}` for `tenant`).
    pub fn parse(name: &str, options: &Value) -> Result<Classifier, PlanError> {
        if !options.is_object() {
            return Err(err("22023", "options must be a JSON object"));
        }
        let uuid_opt = |key: &str| -> Result<Option<String>, PlanError> {
            match opt_str(options, key)? {
                None => Ok(None),
                // Stored canonical: the text goes into SQL as a constant.
                Some(s) => match uuid_bytes(s) {
                    Some(b) => Ok(Some(uuid_text(&b))),
                    None => Err(err(
                        "22023",
                        format!("option \"{key}\" is not a uuid: \"{s}\""),
                    )),
                },
            }
        };
        let kind = name.trim().to_ascii_lowercase();
        // A key the classifier does not read is refused (a typo such as "fallbak"
        // would otherwise run without its fallback; census N09).
        let allowed: &[&str] = match kind.as_str() {
            "tenant" => &["tenant"],
            "parent" => &["column", "parent", "match", "fallback", "private"],
            _ => &[],
        };
        if let Value::Object(m) = options {
            if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(err(
                    "22023",
                    format!(
                        "unknown option \"{k}\" for classifier \"{kind}\"{}",
                        match allowed {
                            [] => " (it takes no options)".to_string(),
                            a => format!("; it takes {}", a.join(", ")),
                        }
                    ),
                ));
            }
        }
        match kind.as_str() {
            "prompt" => Ok(Classifier::Prompt),
            "knowledge" => Ok(Classifier::Knowledge),
            "agent" => Ok(Classifier::Agent),
            "tool" => Ok(Classifier::Tool),
            "platform" => Ok(Classifier::Platform),
            "tenant" => uuid_opt("tenant")?
                .map(Classifier::Tenant)
                .ok_or_else(|| err("22023", "classifier \"tenant\" needs option \"tenant\" (a uuid)")),
            "parent" => {
                let column = opt_str(options, "column")?
                    .ok_or_else(|| err("22023", "classifier \"parent\" needs option \"column\""))?
                    .to_string();
                let parent = opt_str(options, "parent")?
                    .ok_or_else(|| err("22023", "classifier \"parent\" needs option \"parent\" (a table)"))?
                    .to_string();
                let keys = match options.get("match") {
                    None | Some(Value::Null) => vec!["id".to_string()],
                    Some(Value::Array(a)) if !a.is_empty() => a
                        .iter()
                        .map(|v| {
                            v.as_str()
                                .map(String::from)
                                .ok_or_else(|| err("22023", "option \"match\" must be an array of column names"))
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err(err("22023", "option \"match\" must be a non-empty array of column names")),
                };
                let private = match options.get("private") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(err("22023", "option \"private\" must be a boolean")),
                };
                if private && uuid_opt("fallback")?.is_none() {
                    return Err(err("22023", "option \"private\" needs a \"fallback\" tenant"));
                }
                Ok(Classifier::Parent { column, parent, keys, fallback: uuid_opt("fallback")?, private })
            }
            other => Err(err(
                "22023",
                format!(
                    "unknown classifier \"{other}\"; use prompt, knowledge, agent, tool, platform, tenant or parent"
                ),
            )),
        }
    }

    /// The parent table a `Parent` classifier reads, as given.
    pub fn parent_table(&self) -> Option<&str> {
        match self {
            Classifier::Parent { parent, .. } => Some(parent),
            _ => None,
        }
    }
}

fn col_or_null(t: &TableInfo, name: &str, null_type: &str) -> String {
    match t.column(name) {
        Some(c) => format!("t.{}", quote_ident(&c.name)),
        None => format!("NULL::{null_type}"),
    }
}

fn text_col_or_null(t: &TableInfo, name: &str) -> String {
    match t.column(name) {
        Some(c) => format!("t.{}::text", quote_ident(&c.name)),
        None => "NULL::text".into(),
    }
}

fn require_type(t: &TableInfo, name: &str, allowed: &[&str]) -> Result<(), PlanError> {
    match t.column(name) {
        Some(c) if !allowed.contains(&c.type_name.as_str()) => Err(err(
            "42804",
            format!(
                "column {} of {} is {}, the classifier needs {}",
                quote_ident(name),
                t.sql_name,
                c.type_name,
                allowed.join(" or ")
            ),
        )),
        _ => Ok(()),
    }
}

/// A rule classifier as SQL: the function that decides and its arguments over the row
/// alias `t`, missing columns as typed NULLs. The one definition of what a rule
/// classifier reads from a table, used by the backfill's expression and by
/// `preview_classification` (which decides the same arguments in Rust, per rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCall {
    pub function: &'static str,
    pub args: Vec<String>,
}

/// The rule call of the `prompt`, `knowledge`, `agent` and `tool` classifiers (22023 for
/// the others, which have no rules). A column of a type the rules cannot read is an
/// error (42804).
pub fn rule_call(
    c: &Classifier,
    table: &TableInfo,
    tenant_column: &str,
) -> Result<RuleCall, PlanError> {
    let call = |function, args| Ok(RuleCall { function, args });
    match c {
        Classifier::Prompt => {
            require_type(table, "created_by", &["uuid"])?;
            require_type(table, "is_system_prompt", &["boolean"])?;
            call(
                "classify_prompt_tenant",
                vec![
                    text_col_or_null(table, "name"),
                    text_col_or_null(table, "domain"),
                    col_or_null(table, "created_by", "uuid"),
                    col_or_null(table, "is_system_prompt", "boolean"),
                ],
            )
        }
        Classifier::Knowledge => {
            require_type(table, "tags", &["text[]", "character varying[]"])?;
            let tags = match table.column("tags") {
                Some(_) => "t.\"tags\"::text[]".to_string(),
                None => "NULL::text[]".into(),
            };
            call(
                "classify_knowledge_tenant",
                vec![text_col_or_null(table, "domain"), tags],
            )
        }
        Classifier::Agent => {
            require_type(
                table,
                "knowledge_domains",
                &["text[]", "character varying[]"],
            )?;
            let tier = match table.column("tier") {
                Some(col)
                    if ["integer", "smallint", "bigint"].contains(&col.type_name.as_str()) =>
                {
                    "t.\"tier\"::integer".to_string()
                }
                Some(_) => "t.\"tier\"::text".to_string(),
                None => "NULL::integer".to_string(),
            };
            let kd = match table.column("knowledge_domains") {
                Some(_) => "t.\"knowledge_domains\"::text[]".to_string(),
                None => "NULL::text[]".into(),
            };
            call("classify_agent_tenant", vec![tier, kd])
        }
        // The tool rule reads the row's own tenant; before the column exists, that is NULL.
        Classifier::Tool => call(
            "classify_tool_tenant",
            vec![match table.column(tenant_column) {
                Some(_) => format!("t.{}", quote_ident(tenant_column)),
                None => "NULL::uuid".to_string(),
            }],
        ),
        _ => Err(err("22023", "this classifier has no rules")),
    }
}

/// The SQL expression (over the row alias `t`) that gives a row's tenant. Every
/// identifier is quoted and every constant is a validated uuid: no input reaches
/// the SQL text unchecked.
pub fn expression(
    c: &Classifier,
    table: &TableInfo,
    tenant_column: &str,
    parent: Option<&TableInfo>,
) -> Result<String, PlanError> {
    Ok(match c {
        Classifier::Prompt | Classifier::Knowledge | Classifier::Agent | Classifier::Tool => {
            let r = rule_call(c, table, tenant_column)?;
            format!("vital_tenancy.{}({})", r.function, r.args.join(", "))
        }
        Classifier::Platform => "vital_tenancy.platform_tenant_id()".to_string(),
        Classifier::Tenant(id) => format!("'{id}'::uuid"),
        Classifier::Parent {
            column,
            keys,
            fallback,
            private,
            ..
        } => {
            let parent = parent.ok_or_else(|| err("42P01", "the parent table does not exist"))?;
            let child = table.column(column).ok_or_else(|| {
                err(
                    "42703",
                    format!(
                        "column {} of {} does not exist",
                        quote_ident(column),
                        table.sql_name
                    ),
                )
            })?;
            match parent.column(tenant_column) {
                None => {
                    return Err(err(
                        "42703",
                        format!(
                            "parent table {} has no tenant column {}; backfill it first",
                            parent.sql_name,
                            quote_ident(tenant_column)
                        ),
                    ))
                }
                // Found before anything is written: a text tenant column failed only in
                // the first batch, after the run and the column were committed (N04).
                Some(c) if c.type_name != "uuid" => {
                    return Err(err(
                        "42804",
                        format!(
                            "tenant column {} of parent table {} is {}, not uuid",
                            quote_ident(tenant_column),
                            parent.sql_name,
                            c.type_name
                        ),
                    ))
                }
                Some(_) => {}
            }
            let mut parts = Vec::new();
            for k in keys {
                let pk = parent.column(k).ok_or_else(|| {
                    err(
                        "42703",
                        format!(
                            "column {} of parent table {} does not exist",
                            quote_ident(k),
                            parent.sql_name
                        ),
                    )
                })?;
                let cond = if pk.type_name == child.type_name {
                    format!("p.{} = t.{}", quote_ident(k), quote_ident(column))
                } else {
                    format!(
                        "p.{}::text = t.{}::text",
                        quote_ident(k),
                        quote_ident(column)
                    )
                };
                let lookup = format!(
                    "(SELECT p.{} FROM {} p WHERE {cond} LIMIT 1)",
                    quote_ident(tenant_column),
                    parent.sql_name
                );
                parts.push(if *private {
                    format!("NULLIF({lookup}, vital_tenancy.platform_tenant_id())")
                } else {
                    lookup
                });
            }
            if let Some(f) = fallback {
                parts.push(format!("'{f}'::uuid"));
            }
            if parts.len() == 1 {
                parts.remove(0)
            } else {
                format!("COALESCE({})", parts.join(", "))
            }
        }
    })
}

/// How long the extension's DDL waits for its lock, and how often it tries again
/// (every DDL runner and every function taking `lock_timeout_ms`/`retries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockLimits {
    pub lock_timeout_ms: i32,
    pub retries: i32,
}

impl LockLimits {
    /// The toolkit's defaults: 2 s per attempt, 5 retries.
    pub const DEFAULT: LockLimits = LockLimits {
        lock_timeout_ms: 2000,
        retries: 5,
    };
    /// At most ten minutes per attempt and 100 retries: beyond that a DDL step would
    /// hold its place in the lock queue (and every reader behind it) for hours.
    pub const MAX_LOCK_TIMEOUT_MS: i32 = 600_000;
    pub const MAX_RETRIES: i32 = 100;

    /// The limits, or 22023 naming the argument and its bounds.
    pub fn new(lock_timeout_ms: i32, retries: i32) -> Result<LockLimits, PlanError> {
        if !(1..=Self::MAX_LOCK_TIMEOUT_MS).contains(&lock_timeout_ms) {
            return Err(err(
                "22023",
                format!(
                    "lock_timeout_ms must be between 1 and {}, not {lock_timeout_ms}",
                    Self::MAX_LOCK_TIMEOUT_MS
                ),
            ));
        }
        if !(0..=Self::MAX_RETRIES).contains(&retries) {
            return Err(err(
                "22023",
                format!(
                    "retries must be between 0 and {}, not {retries}",
                    Self::MAX_RETRIES
                ),
            ));
        }
        Ok(LockLimits {
            lock_timeout_ms,
            retries,
        })
    }
}

/// A constraint or index name derived from a table name, within 63 bytes.
pub fn derived_name(table: &str, column: &str, suffix: &str) -> String {
    let mut base = format!("{table}_{column}");
    let max = 63 - suffix.len() - 1;
    while base.len() > max {
        base.pop();
    }
    format!("{base}_{suffix}")
}

/// One DDL step of the online path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub sql: String,
}

/// What the catalog says about a table's tenant column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnState {
    pub exists: bool,
    pub is_uuid: bool,
    pub not_null: bool,
    /// Name of a foreign key from the column to the tenants table, and whether valid.
    pub fk: Option<(String, bool)>,
    /// A CHECK (col IS NOT NULL) left by an interrupted enforce, and whether valid.
    pub not_null_check: Option<(String, bool)>,
    /// The table is partitioned: PostgreSQL 15 cannot add a foreign key NOT VALID to
    /// it, so the key is added (validated) when the column is enforced.
    pub partitioned: bool,
}

/// Steps that add the column (nullable, so no table rewrite) and its foreign key
/// (NOT VALID: no scan under the lock). Nothing for what already exists.
///
/// With `default_tenant` (a tenant id, already checked to exist), the column is
/// added with that constant default and the default dropped again in the same step:
/// PostgreSQL stores the value once in the catalog (`attmissingval`) for every row
/// that exists, without rewriting the table, while rows inserted later arrive
/// without a tenant.
pub fn add_steps(
    table: &str,
    relname: &str,
    column: &str,
    tenants: &str,
    st: &ColumnState,
    default_tenant: Option<uuid::Uuid>,
) -> Vec<Step> {
    let col = quote_ident(column);
    let mut steps = Vec::new();
    if !st.exists {
        steps.push(match default_tenant {
            None => Step {
                name: "add column".into(),
                sql: format!("ALTER TABLE {table} ADD COLUMN {col} uuid"),
            },
            // A uuid's text form is hex digits and dashes: nothing to escape.
            Some(t) => Step {
                name: "add column, existing rows in the catalog default".into(),
                sql: format!(
                    "ALTER TABLE {table} ADD COLUMN {col} uuid DEFAULT '{}'::uuid; \
                     ALTER TABLE {table} ALTER COLUMN {col} DROP DEFAULT",
                    t.hyphenated()
                ),
            },
        });
    }
    if st.fk.is_none() && !st.partitioned {
        let fk = derived_name(relname, column, "vt_fk");
        steps.push(Step {
            name: "add foreign key NOT VALID".into(),
            sql: format!(
                "ALTER TABLE {table} ADD CONSTRAINT {} FOREIGN KEY ({col}) REFERENCES {tenants} (id) NOT VALID",
                quote_ident(&fk)
            ),
        });
    }
    steps
}

/// Steps that make the column `NOT NULL` and its foreign key valid without a long
/// exclusive lock: VALIDATE takes SHARE UPDATE EXCLUSIVE (writes go on), and SET NOT
/// NULL skips its scan because a valid CHECK (col IS NOT NULL) proves it.
pub fn enforce_steps(
    table: &str,
    relname: &str,
    column: &str,
    tenants: &str,
    st: &ColumnState,
) -> Vec<Step> {
    let col = quote_ident(column);
    let mut steps = Vec::new();
    if st.fk.is_none() && st.partitioned {
        // Validated as it is added: SHARE ROW EXCLUSIVE on the table and the tenants
        // table for one scan (writes wait; reads go on).
        steps.push(Step {
            name: "add foreign key (partitioned: validated as added)".into(),
            sql: format!(
                "ALTER TABLE {table} ADD CONSTRAINT {} FOREIGN KEY ({col}) REFERENCES {tenants} (id)",
                quote_ident(&derived_name(relname, column, "vt_fk"))
            ),
        });
    }
    if let Some((fk, false)) = &st.fk {
        steps.push(Step {
            name: "validate foreign key".into(),
            sql: format!(
                "ALTER TABLE {table} VALIDATE CONSTRAINT {}",
                quote_ident(fk)
            ),
        });
    }
    if !st.not_null {
        let check = match &st.not_null_check {
            Some((name, _)) => name.clone(),
            None => derived_name(relname, column, "vt_not_null"),
        };
        let qcheck = quote_ident(&check);
        if st.not_null_check.is_none() {
            steps.push(Step {
                name: "add CHECK (IS NOT NULL) NOT VALID".into(),
                sql: format!("ALTER TABLE {table} ADD CONSTRAINT {qcheck} CHECK ({col} IS NOT NULL) NOT VALID"),
            });
        }
        if !matches!(st.not_null_check, Some((_, true))) {
            steps.push(Step {
                name: "validate CHECK".into(),
                sql: format!("ALTER TABLE {table} VALIDATE CONSTRAINT {qcheck}"),
            });
        }
        steps.push(Step {
            name: "set NOT NULL".into(),
            sql: format!("ALTER TABLE {table} ALTER COLUMN {col} SET NOT NULL"),
        });
        steps.push(Step {
            name: "drop CHECK".into(),
            sql: format!("ALTER TABLE {table} DROP CONSTRAINT {qcheck}"),
        });
    } else if let Some((name, _)) = &st.not_null_check {
        steps.push(Step {
            name: "drop CHECK".into(),
            sql: format!("ALTER TABLE {table} DROP CONSTRAINT {}", quote_ident(name)),
        });
    }
    steps
}

/// `CREATE INDEX CONCURRENTLY` for the tenant column (to run with psql's `\gexec`,
/// outside any transaction).
/// The tenant index, `CONCURRENTLY` (no write lock) — except on a partitioned table,
/// where PostgreSQL 15 cannot build one concurrently: there the plain statement (writes
/// wait while each partition's index is built).
pub fn index_ddl(table: &str, relname: &str, column: &str, partitioned: bool) -> String {
    format!(
        "CREATE INDEX {}IF NOT EXISTS {} ON {table} ({})",
        if partitioned { "" } else { "CONCURRENTLY " },
        quote_ident(&derived_name(relname, column, "idx")),
        quote_ident(column)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_a_parent_lookup_without_fallback_may_return_null() {
        let parent = |fallback: Option<&str>| Classifier::Parent {
            column: "agent_id".into(),
            parent: "public.agents".into(),
            keys: vec!["id".into()],
            fallback: fallback.map(str::to_string),
            private: true,
        };
        assert!(parent(None).may_return_null());
        assert!(!parent(Some("11111111-1111-1111-1111-111111111111")).may_return_null());
        for c in [
            Classifier::Prompt,
            Classifier::Knowledge,
            Classifier::Agent,
            Classifier::Tool,
            Classifier::Platform,
            Classifier::Tenant("11111111-1111-1111-1111-111111111111".into()),
        ] {
            assert!(!c.may_return_null(), "{c:?}");
        }
    }

    fn info(cols: &[(&str, &str)]) -> TableInfo {
        TableInfo {
            sql_name: "public.x".into(),
            columns: cols
                .iter()
                .map(|(n, t)| Column {
                    name: n.to_string(),
                    type_name: t.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn parses_classifiers() {
        assert_eq!(
            Classifier::parse("Prompt", &json!({})),
            Ok(Classifier::Prompt)
        );
        assert_eq!(
            Classifier::parse(
                "tenant",
                &json!({"tenant": "11111111-1111-1111-1111-111111111111"})
            ),
            Ok(Classifier::Tenant(
                "11111111-1111-1111-1111-111111111111".into()
            ))
        );
        assert_eq!(
            Classifier::parse("tenant", &json!({"tenant": "x' OR 1=1 --"}))
                .unwrap_err()
                .code,
            "22023"
        );
        assert_eq!(
            Classifier::parse("tenant", &json!({})).unwrap_err().code,
            "22023"
        );
        assert_eq!(
            Classifier::parse("wat", &json!({})).unwrap_err().code,
            "22023"
        );
        assert_eq!(
            Classifier::parse("prompt", &json!([1])).unwrap_err().code,
            "22023"
        );
        let p = Classifier::parse(
            "parent",
            &json!({"column": "agent_id", "parent": "public.agents", "match": ["id", "name"], "fallback": "11111111-1111-1111-1111-111111111111"}),
        )
        .unwrap();
        assert_eq!(p.parent_table(), Some("public.agents"));
        assert_eq!(
            Classifier::parse("parent", &json!({"parent": "a"}))
                .unwrap_err()
                .code,
            "22023"
        );
        assert_eq!(
            Classifier::parse(
                "parent",
                &json!({"column": "a", "parent": "b", "match": []})
            )
            .unwrap_err()
            .code,
            "22023"
        );
        assert_eq!(
            Classifier::parse(
                "parent",
                &json!({"column": "a", "parent": "b", "private": true})
            )
            .unwrap_err()
            .code,
            "22023"
        );
    }

    #[test]
    fn expressions_use_the_columns_that_exist() {
        let prompts = info(&[
            ("name", "character varying(255)"),
            ("domain", "character varying(100)"),
            ("created_by", "uuid"),
        ]);
        assert_eq!(
            expression(&Classifier::Prompt, &prompts, "tenant_id", None).unwrap(),
            "vital_tenancy.classify_prompt_tenant(t.\"name\"::text, t.\"domain\"::text, t.\"created_by\", NULL::boolean)"
        );
        let agents = info(&[("tier", "integer"), ("knowledge_domains", "text[]")]);
        assert_eq!(
            expression(&Classifier::Agent, &agents, "tenant_id", None).unwrap(),
            "vital_tenancy.classify_agent_tenant(t.\"tier\"::integer, t.\"knowledge_domains\"::text[])"
        );
        let agents_enum = info(&[("tier", "agent_tier")]);
        assert!(
            expression(&Classifier::Agent, &agents_enum, "tenant_id", None)
                .unwrap()
                .contains("t.\"tier\"::text")
        );
        let bad = info(&[("created_by", "text")]);
        assert_eq!(
            expression(&Classifier::Prompt, &bad, "tenant_id", None)
                .unwrap_err()
                .code,
            "42804"
        );
    }

    #[test]
    fn lock_limits_are_bounded_and_name_the_argument() {
        assert_eq!(LockLimits::new(2000, 5), Ok(LockLimits::DEFAULT));
        assert!(LockLimits::new(600_000, 100).is_ok());
        assert!(LockLimits::new(1, 0).is_ok());
        for (ms, r, msg) in [
            (0, 5, "lock_timeout_ms must be between 1 and 600000, not 0"),
            (
                i32::MAX,
                5,
                "lock_timeout_ms must be between 1 and 600000, not 2147483647",
            ),
            (2000, -1, "retries must be between 0 and 100, not -1"),
            (2000, 101, "retries must be between 0 and 100, not 101"),
        ] {
            let e = LockLimits::new(ms, r).unwrap_err();
            assert_eq!((e.code, e.message.as_str()), ("22023", msg));
        }
    }

    #[test]
    fn options_a_classifier_does_not_read_are_refused() {
        let e = Classifier::parse(
            "parent",
            &json!({"column": "name", "parent": "public.agents", "fallbak": "11111111-1111-1111-1111-111111111111"}),
        )
        .unwrap_err();
        assert_eq!(e.code, "22023");
        assert!(
            e.message.starts_with(
                "unknown option \"fallbak\" for classifier \"parent\"; it takes column,"
            ),
            "{e}"
        );
        let e = Classifier::parse(
            "prompt",
            &json!({"tenant": "11111111-1111-1111-1111-111111111111"}),
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "unknown option \"tenant\" for classifier \"prompt\" (it takes no options)"
        );
        let e = Classifier::parse(
            "tenant",
            &json!({"tenant": "11111111-1111-1111-1111-111111111111", "tennant": 1}),
        )
        .unwrap_err();
        assert!(e.message.contains("\"tennant\""), "{e}");
        assert!(Classifier::parse("Prompt", &json!({})).is_ok());
    }

    #[test]
    fn a_parent_whose_tenant_column_is_not_uuid_is_refused() {
        let child = info(&[("name", "text")]);
        let parent = TableInfo {
            sql_name: "fz.par".into(),
            columns: vec![
                Column {
                    name: "name".into(),
                    type_name: "text".into(),
                },
                Column {
                    name: "tenant_id".into(),
                    type_name: "text".into(),
                },
            ],
        };
        let c = Classifier::Parent {
            column: "name".into(),
            parent: "fz.par".into(),
            keys: vec!["name".into()],
            fallback: None,
            private: false,
        };
        let e = expression(&c, &child, "tenant_id", Some(&parent)).unwrap_err();
        assert_eq!(e.code, "42804");
        assert_eq!(
            e.message,
            "tenant column \"tenant_id\" of parent table fz.par is text, not uuid"
        );
    }

    #[test]
    fn parent_expression_matches_in_order_with_fallback() {
        let messages = info(&[("agent_id", "text")]);
        let agents = TableInfo {
            sql_name: "public.agents".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    type_name: "uuid".into(),
                },
                Column {
                    name: "name".into(),
                    type_name: "text".into(),
                },
                Column {
                    name: "tenant_id".into(),
                    type_name: "uuid".into(),
                },
            ],
        };
        let c = Classifier::Parent {
            column: "agent_id".into(),
            parent: "public.agents".into(),
            keys: vec!["id".into(), "name".into()],
            fallback: Some("11111111-1111-1111-1111-111111111111".into()),
            private: false,
        };
        let e = expression(&c, &messages, "tenant_id", Some(&agents)).unwrap();
        assert_eq!(
            e,
            "COALESCE((SELECT p.\"tenant_id\" FROM public.agents p WHERE p.\"id\"::text = t.\"agent_id\"::text LIMIT 1), \
             (SELECT p.\"tenant_id\" FROM public.agents p WHERE p.\"name\" = t.\"agent_id\" LIMIT 1), \
             '11111111-1111-1111-1111-111111111111'::uuid)"
        );
        let private = Classifier::Parent {
            column: "agent_id".into(),
            parent: "public.agents".into(),
            keys: vec!["id".into(), "name".into()],
            fallback: Some("11111111-1111-1111-1111-111111111111".into()),
            private: true,
        };
        let e = expression(&private, &messages, "tenant_id", Some(&agents)).unwrap();
        assert!(
            e.starts_with("COALESCE(NULLIF((SELECT p.\"tenant_id\""),
            "{e}"
        );
        assert!(e.contains("vital_tenancy.platform_tenant_id())"), "{e}");
        let no_tenant = info(&[("id", "uuid")]);
        assert_eq!(
            expression(&c, &messages, "tenant_id", Some(&no_tenant))
                .unwrap_err()
                .code,
            "42703"
        );
        assert_eq!(
            expression(&c, &info(&[]), "tenant_id", Some(&agents))
                .unwrap_err()
                .code,
            "42703"
        );
    }

    #[test]
    fn online_steps() {
        let fresh = ColumnState::default();
        let add = add_steps("public.t", "t", "tenant_id", "public.tenants", &fresh, None);
        assert_eq!(add.len(), 2);
        assert!(add[0].sql.ends_with("ADD COLUMN \"tenant_id\" uuid"));
        assert!(add[1].sql.contains("NOT VALID"));
        let platform = uuid::Uuid::from_u128(1);
        let add = add_steps(
            "public.t",
            "t",
            "tenant_id",
            "public.tenants",
            &fresh,
            Some(platform),
        );
        assert_eq!(
            add[0].sql,
            "ALTER TABLE public.t ADD COLUMN \"tenant_id\" uuid DEFAULT '00000000-0000-0000-0000-000000000001'::uuid; \
             ALTER TABLE public.t ALTER COLUMN \"tenant_id\" DROP DEFAULT"
        );
        let done = ColumnState {
            exists: true,
            is_uuid: true,
            not_null: true,
            fk: Some(("f".into(), true)),
            not_null_check: None,
            partitioned: false,
        };
        assert!(add_steps("public.t", "t", "tenant_id", "public.tenants", &done, None).is_empty());
        assert!(enforce_steps("public.t", "t", "tenant_id", "public.tenants", &done).is_empty());
        let added = ColumnState {
            exists: true,
            is_uuid: true,
            not_null: false,
            fk: Some(("f".into(), false)),
            not_null_check: None,
            partitioned: false,
        };
        let names: Vec<String> =
            enforce_steps("public.t", "t", "tenant_id", "public.tenants", &added)
                .into_iter()
                .map(|s| s.name)
                .collect();
        assert_eq!(
            names,
            [
                "validate foreign key",
                "add CHECK (IS NOT NULL) NOT VALID",
                "validate CHECK",
                "set NOT NULL",
                "drop CHECK"
            ]
        );
        // Resuming after the CHECK was validated.
        let half = ColumnState {
            not_null_check: Some(("c".into(), true)),
            fk: Some(("f".into(), true)),
            ..added
        };
        let names: Vec<String> =
            enforce_steps("public.t", "t", "tenant_id", "public.tenants", &half)
                .into_iter()
                .map(|s| s.name)
                .collect();
        assert_eq!(names, ["set NOT NULL", "drop CHECK"]);
        // A partitioned table gets its foreign key when the column is enforced (F28).
        let parted = ColumnState {
            partitioned: true,
            ..ColumnState::default()
        };
        let add: Vec<String> = add_steps(
            "public.p",
            "p",
            "tenant_id",
            "public.tenants",
            &parted,
            None,
        )
        .into_iter()
        .map(|s| s.name)
        .collect();
        assert_eq!(add, ["add column"]);
        let parted = ColumnState {
            exists: true,
            is_uuid: true,
            ..parted
        };
        let steps = enforce_steps("public.p", "p", "tenant_id", "public.tenants", &parted);
        assert_eq!(
            steps[0].name,
            "add foreign key (partitioned: validated as added)"
        );
        assert!(!steps[0].sql.contains("NOT VALID"));
        assert_eq!(steps.len(), 5);
    }

    #[test]
    fn derived_names_fit_in_63_bytes() {
        let long = "x".repeat(80);
        assert_eq!(derived_name(&long, "tenant_id", "vt_fk").len(), 63);
        assert_eq!(
            derived_name("prompts", "tenant_id", "idx"),
            "prompts_tenant_id_idx"
        );
    }
}
