//! Scale-out on Citus: which role each table would take (distributed by tenant_id,
//! reference, local), what stops Citus from distributing it, the DDL that removes
//! each blocker, applying that DDL safely, and distributing everything in one call.
//!
//! Citus distributes a table only if every primary key and unique constraint includes
//! the distribution column, and every foreign key between distributed tables does too;
//! tables referenced from everywhere must be reference tables.

use crate::errors::{raise_full, OrRaise};
use crate::logic::ident::quote_ident;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

#[derive(Clone, Debug, PartialEq)]
enum Role {
    Distributed,
    Reference,
    Local,
}

impl Role {
    fn as_str(&self) -> &'static str {
        match self {
            Role::Distributed => "distributed",
            Role::Reference => "reference",
            Role::Local => "local",
        }
    }
}

struct Table {
    oid: pg_sys::Oid,
    name: String,
    relname: String,
    role: Role,
    /// The tenant column as the rest of the extension defines it (rls_tables'
    /// tenant_column, else `tenant_id`), when the table has it as uuid.
    tenant_column: String,
    tenant_attnum: Option<i16>,
}

/// One blocker: what it is, the DDL that removes it (if any can be generated), and
/// for the ones prepare_for_citus applies, the unique index it needs first.
struct Blocker {
    table: String,
    what: String,
    ddl: Option<String>,
    index: Option<(String, String)>,
    apply: Option<Vec<String>>,
    kind: BlockerKind,
}

/// What prepare_for_citus() does with a blocker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockerKind {
    /// A foreign key rewritten with tenant_id: dropped before the key swap, re-added
    /// (NOT VALID, then VALIDATE) after.
    ForeignKeyRewrite,
    /// A primary key or unique constraint swapped to its unique index with tenant_id.
    KeySwap,
    /// Reported with the DDL or the decision it needs; not applied.
    ForTheDba,
}

use crate::catalog::value as one;

fn tables(c: &SpiClient<'_>, schemas: &Option<Vec<String>>) -> Vec<Table> {
    let tenants: String = crate::catalog::require_tenants_table(c);
    if let Some(list) = schemas {
        crate::catalog::check_schemas(c, list);
    }
    // The schemas by default: those holding a tenant table (catalog::tenant_tables, the
    // extension's one definition of a tenant table and its column).
    let default_schemas: Vec<String> = {
        let mut v: Vec<String> = crate::catalog::tenant_tables(c, &None)
            .into_iter()
            .filter_map(|t| {
                one::<String>(
                    c,
                    "SELECT n.nspname::text FROM pg_catalog.pg_class k JOIN pg_catalog.pg_namespace n ON n.oid = k.relnamespace
                      WHERE k.oid = $1::pg_catalog.regclass",
                    &[t.table.as_str().into()],
                )
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let schemas_sql: Vec<String> = schemas.clone().unwrap_or(default_schemas);
    let rows: Vec<(pg_sys::Oid, String, String, String, Option<i16>)> = c
        .select(
            "SELECT c.oid, c.oid::pg_catalog.regclass::pg_catalog.text, c.relname::text, COALESCE(r.tenant_column, 'tenant_id')::text,
                    (SELECT a.attnum FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attname = COALESCE(r.tenant_column, 'tenant_id')
                                                         AND NOT a.attisdropped AND a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype)
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN vital_tenancy.rls_tables r ON r.tbl = c.oid
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                AND n.nspname = ANY ($1::text[])
                AND n.nspname NOT IN ('vital_tenancy', 'pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
              ORDER BY 2",
            None,
            &[schemas_sql.into()],
        )
        .or_raise("listing tables")
        .map(|r| {
            (
                r.get::<pg_sys::Oid>(1).ok().flatten().unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2).ok().flatten().unwrap_or_default(),
                r.get::<String>(3).ok().flatten().unwrap_or_default(),
                r.get::<String>(4).ok().flatten().unwrap_or_default(),
                r.get::<i16>(5).ok().flatten(),
            )
        })
        .collect();
    rows.into_iter()
        .map(|(oid, name, relname, tenant_column, tenant_attnum)| {
            let role = if name == tenants {
                Role::Reference
            } else if tenant_attnum.is_none() {
                Role::Local
            } else {
                // A Platform-only lookup is a reference table: every row belongs to
                // Platform, and other tables point at it or the migration gave the
                // whole table to Platform.
                let platform_only: bool = one(
                    c,
                    &format!(
                        "SELECT NOT EXISTS (SELECT 1 FROM {name} WHERE {} IS DISTINCT FROM vital_tenancy.platform_tenant_id())",
                        quote_ident(&tenant_column)
                    ),
                    &[],
                )
                .unwrap_or(false);
                let referenced: bool = one(
                    c,
                    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE contype = 'f' AND confrelid = $1 AND conrelid <> $1)
                         OR EXISTS (SELECT 1 FROM vital_tenancy.migration_steps WHERE tbl = $1 AND classifier = 'platform')",
                    &[oid.into()],
                )
                .unwrap_or(false);
                if platform_only && referenced {
                    Role::Reference
                } else {
                    Role::Distributed
                }
            };
            Table {
                oid,
                name,
                relname,
                role,
                tenant_column,
                tenant_attnum,
            }
        })
        .collect()
}

/// (name, parent table, child columns, parent columns, definition) of a foreign key.
/// A foreign key of a table: name, parent, key columns, parent columns, options.
struct ForeignKey {
    name: String,
    parent: pg_sys::Oid,
    key: Vec<i16>,
    parent_key: Vec<i16>,
    options: crate::logic::fk::FkOptions,
}

fn letter(s: Option<String>) -> char {
    s.and_then(|s| s.chars().next()).unwrap_or('a')
}

/// Primary keys and unique constraints without the tenant column (the computation the
/// keys step shares).
fn key_blockers(c: &SpiClient<'_>, t: &Table) -> Vec<Blocker> {
    let mut out = Vec::new();
    let tatt = t.tenant_attnum.unwrap_or(0);
    // Primary key and unique constraints without tenant_id (the computation the
    // keys step shares).
    for k in crate::keys::key_changes(c, t.oid, &t.name, &t.relname, &t.tenant_column, tatt, true) {
        out.push(Blocker {
            table: t.name.clone(),
            what: format!(
                "{} {} ({}) does not include tenant_id",
                if k.primary {
                    "primary key"
                } else {
                    "unique constraint"
                },
                k.con,
                k.columns.join(", ")
            ),
            ddl: Some(format!("{};\n{}", k.index_ddl, k.swap_ddl)),
            index: Some((k.index, k.index_ddl)),
            apply: Some(vec![k.swap_ddl]),
            kind: BlockerKind::KeySwap,
        });
    }
    out
}

/// Unique indexes that back no constraint and lack the tenant column.
fn unique_index_blockers(c: &SpiClient<'_>, t: &Table) -> Vec<Blocker> {
    let mut out = Vec::new();
    let tatt = t.tenant_attnum.unwrap_or(0);
    // Unique indexes that back no constraint.
    let plain: Vec<String> = c
        .select(
            "SELECT i.indexrelid::pg_catalog.regclass::text FROM pg_catalog.pg_index i
              WHERE i.indrelid = $1 AND i.indisunique AND NOT ($2 = ANY (i.indkey::int2[]))
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = i.indexrelid)",
            None,
            &[t.oid.into(), tatt.into()],
        )
        .or_raise("reading unique indexes")
        .filter_map(|r| r.get::<String>(1).ok().flatten())
        .collect();
    for ix in plain {
        out.push(Blocker {
            table: t.name.clone(),
            what: format!("unique index {ix} does not include tenant_id"),
            ddl: Some(format!("-- recreate {ix} with tenant_id as its first column, then: DROP INDEX CONCURRENTLY {ix}")),
            index: None,
            apply: None,
            kind: BlockerKind::ForTheDba,
        });
    }
    out
}

/// Foreign keys to distributed tables without the tenant column; to local tables.
fn foreign_key_blockers(c: &SpiClient<'_>, t: &Table, all: &[Table]) -> Vec<Blocker> {
    let mut out = Vec::new();
    let tatt = t.tenant_attnum.unwrap_or(0);
    let role_of = |oid: pg_sys::Oid| all.iter().find(|t| t.oid == oid).map(|t| t.role.clone());
    // Foreign keys to other distributed tables without tenant_id; to local tables.
    let fks: Vec<ForeignKey> = c
        .select(
            "SELECT conname::text, confrelid, conkey, confkey, confupdtype::text, confdeltype::text,
                    confmatchtype::text, condeferrable, condeferred,
                    ARRAY(SELECT pg_catalog.quote_ident(a.attname) FROM unnest(confdelsetcols) WITH ORDINALITY k(n, i)
                            JOIN pg_catalog.pg_attribute a ON a.attrelid = conrelid AND a.attnum = k.n ORDER BY k.i)
               FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND contype = 'f' ORDER BY conname",
            None,
            &[t.oid.into()],
        )
        .or_raise("reading foreign keys")
        .map(|r| ForeignKey {
            name: r.get::<String>(1).ok().flatten().unwrap_or_default(),
            parent: r
                .get::<pg_sys::Oid>(2)
                .ok()
                .flatten()
                .unwrap_or(pg_sys::InvalidOid),
            key: r.get::<Vec<i16>>(3).ok().flatten().unwrap_or_default(),
            parent_key: r.get::<Vec<i16>>(4).ok().flatten().unwrap_or_default(),
            options: crate::logic::fk::FkOptions {
                on_update: letter(r.get::<String>(5).ok().flatten()),
                on_delete: letter(r.get::<String>(6).ok().flatten()),
                match_type: letter(r.get::<String>(7).ok().flatten()),
                deferrable: r.get::<bool>(8).ok().flatten().unwrap_or(false),
                deferred: r.get::<bool>(9).ok().flatten().unwrap_or(false),
                delete_set_columns: r.get::<Vec<String>>(10).ok().flatten().unwrap_or_default(),
            },
        })
        .collect();
    for ForeignKey {
        name: con,
        parent,
        key,
        parent_key: pkey,
        options,
    } in fks
    {
        // A parent outside the application's schemas (auth.users, say) stays local.
        let prole = role_of(parent).unwrap_or(Role::Local);
        let pt = all.iter().find(|x| x.oid == parent);
        let parent_name = pt.map(|x| x.name.clone()).unwrap_or_else(|| {
            one::<String>(
                c,
                "SELECT $1::pg_catalog.regclass::pg_catalog.text",
                &[parent.into()],
            )
            .unwrap_or_default()
        });
        match prole {
            Role::Distributed if !key.contains(&tatt) => {
                let pname = pt.map(|x| x.name.clone()).unwrap_or_default();
                let child_cols = crate::keys::column_names(c, t.oid, &key);
                let parent_cols = crate::keys::column_names(c, parent, &pkey);
                let q = |v: &[String]| {
                    v.iter()
                        .map(|x| quote_ident(x))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                // Every option of the key kept (from pg_constraint's columns); a SET
                // NULL / SET DEFAULT on delete limited to the key's own columns so
                // that tenant_id is never nulled.
                let quoted: Vec<String> = child_cols.iter().map(|x| quote_ident(x)).collect();
                let clauses = options.clauses(&quoted);
                let drop = format!(
                    "ALTER TABLE {} DROP CONSTRAINT {}",
                    t.name,
                    quote_ident(&con)
                );
                let add = format!(
                    "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}, {}) REFERENCES {pname} ({}, {}){clauses} NOT VALID",
                    t.name,
                    quote_ident(&con),
                    quote_ident(&t.tenant_column),
                    q(&child_cols),
                    quote_ident(&pt.map(|x| x.tenant_column.clone()).unwrap_or_else(|| "tenant_id".into())),
                    q(&parent_cols)
                );
                let validate = format!(
                    "ALTER TABLE {} VALIDATE CONSTRAINT {}",
                    t.name,
                    quote_ident(&con)
                );
                out.push(Blocker {
                    table: t.name.clone(),
                    what: match options.caveat() {
                        None => format!("foreign key {con} to distributed table {pname} does not include tenant_id"),
                        Some(c) => format!("foreign key {con} to distributed table {pname} does not include tenant_id ({c})"),
                    },
                    ddl: Some(format!("{drop};\n{add};\n{validate}")),
                    index: None,
                    apply: Some(vec![drop, add, validate]),
                    kind: BlockerKind::ForeignKeyRewrite,
                });
            }
            Role::Local => out.push(Blocker {
                table: t.name.clone(),
                what: format!("foreign key {con} to local table {parent_name}"),
                ddl: Some(
                    "-- make the referenced table a reference table, or drop the foreign key"
                        .into(),
                ),
                index: None,
                apply: None,
                kind: BlockerKind::ForTheDba,
            }),
            _ => {}
        }
    }
    out
}

/// Triggers, which Citus runs on distributed tables only when told to.
fn trigger_blockers(c: &SpiClient<'_>, t: &Table) -> Vec<Blocker> {
    let mut out = Vec::new();
    // Triggers Citus refuses on distributed tables unless told otherwise.
    let triggers: Vec<String> = c
        .select("SELECT tgname::text FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal ORDER BY 1", None, &[t.oid.into()])
        .or_raise("reading triggers")
        .filter_map(|r| r.get::<String>(1).ok().flatten())
        .collect();
    for tg in triggers {
        out.push(Blocker {
            table: t.name.clone(),
            what: format!("trigger {tg}: Citus runs triggers on distributed tables only with citus.enable_unsafe_triggers"),
            ddl: Some("-- SET citus.enable_unsafe_triggers = on (ALTER DATABASE ... SET) after checking the trigger only touches the same tenant's rows".into()),
            index: None,
            apply: None,
            kind: BlockerKind::ForTheDba,
        });
    }
    out
}

/// Sequence defaults on columns that are not bigint.
fn sequence_blockers(c: &SpiClient<'_>, t: &Table) -> Vec<Blocker> {
    let mut out = Vec::new();
    // Sequence defaults on non-bigint columns (shard-wide sequences need bigint).
    let seqs: Vec<String> = c
        .select(
            "SELECT a.attname::text FROM pg_catalog.pg_attrdef d
               JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
              WHERE d.adrelid = $1
                    -- a default that depends on a sequence (pg_depend, not the deparsed text)
                    AND EXISTS (SELECT 1 FROM pg_catalog.pg_depend dep
                                  JOIN pg_catalog.pg_class q ON q.oid = dep.refobjid AND q.relkind = 'S'
                                 WHERE dep.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND dep.objid = d.oid
                                   AND dep.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass)
                AND a.atttypid <> 'pg_catalog.int8'::pg_catalog.regtype ORDER BY 1",
            None,
            &[t.oid.into()],
        )
        .or_raise("reading defaults")
        .filter_map(|r| r.get::<String>(1).ok().flatten())
        .collect();
    for col in seqs {
        out.push(Blocker {
            table: t.name.clone(),
            what: format!("column {col} takes a sequence default but is not bigint"),
            ddl: Some(format!(
                "ALTER TABLE {} ALTER COLUMN {} TYPE bigint",
                t.name,
                quote_ident(&col)
            )),
            index: None,
            apply: None,
            kind: BlockerKind::ForTheDba,
        });
    }
    out
}

/// A reference table must not point at a distributed table.
fn reference_table_blockers(c: &SpiClient<'_>, t: &Table, all: &[Table]) -> Vec<Blocker> {
    let mut out = Vec::new();
    let role_of = |oid: pg_sys::Oid| all.iter().find(|t| t.oid == oid).map(|t| t.role.clone());
    let fks: Vec<(String, pg_sys::Oid)> = c
        .select("SELECT conname::text, confrelid FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND contype = 'f'", None, &[t.oid.into()])
        .or_raise("reading foreign keys")
        .map(|r| (r.get::<String>(1).ok().flatten().unwrap_or_default(), r.get::<pg_sys::Oid>(2).ok().flatten().unwrap_or(pg_sys::InvalidOid)))
        .collect();
    for (con, parent) in fks {
        if role_of(parent) == Some(Role::Distributed) {
            out.push(Blocker {
                table: t.name.clone(),
                what: format!("reference table has foreign key {con} to a distributed table"),
                ddl: Some(format!(
                    "ALTER TABLE {} DROP CONSTRAINT {}",
                    t.name,
                    quote_ident(&con)
                )),
                index: None,
                apply: None,
                kind: BlockerKind::ForTheDba,
            });
        }
    }
    out
}

fn blockers(c: &SpiClient<'_>, all: &[Table]) -> Vec<Blocker> {
    let mut out = Vec::new();
    for t in all.iter().filter(|t| t.role == Role::Distributed) {
        out.extend(key_blockers(c, t));
        out.extend(unique_index_blockers(c, t));
        out.extend(foreign_key_blockers(c, t, all));
        out.extend(trigger_blockers(c, t));
        out.extend(sequence_blockers(c, t));
    }
    for t in all.iter().filter(|t| t.role == Role::Reference) {
        out.extend(reference_table_blockers(c, t, all));
    }
    out
}

/// Every table of the application's schemas (those with tenant tables, or the given
/// ones): its proposed Citus role and each blocker with the DDL that removes it.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn citus_readiness(
    schemas: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(proposed_role, String),
        name!(blocker, Option<String>),
        name!(ddl, Option<String>),
    ),
> {
    let schemas = schemas.map(|v| crate::errors::no_null_elements("schemas", v));
    let rows = Spi::connect(|c| {
        let all = tables(c, &schemas);
        let bl = blockers(c, &all);
        let mut out = Vec::new();
        for t in &all {
            let mine: Vec<&Blocker> = bl.iter().filter(|b| b.table == t.name).collect();
            if mine.is_empty() {
                out.push((t.name.clone(), t.role.as_str().to_string(), None, None));
            }
            for b in mine {
                out.push((
                    t.name.clone(),
                    t.role.as_str().to_string(),
                    Some(b.what.clone()),
                    b.ddl.clone(),
                ));
            }
        }
        // Once distributed: every shard placement whose policies do not hold the
        // boundary, or differ from its table's, is a blocker too; putting the table's
        // policies in the Citus shape again re-creates them on every shard.
        if has_placements_to_check(c) {
            for (table, placement, problem) in boundary_status(c) {
                let Some(problem) = problem else { continue };
                // Only the tables of the schemas asked about.
                let Some(role) = all
                    .iter()
                    .find(|t| t.name == table)
                    .map(|t| t.role.as_str().to_string())
                else {
                    continue;
                };
                let ddl: Option<String> = one(
                    c,
                    "SELECT pg_catalog.format('SELECT * FROM vital_tenancy.citus_safe_policies(%L)', $1::text)",
                    &[table.as_str().into()],
                );
                out.push((table, role, Some(format!("{placement}: {problem}")), ddl));
            }
        }
        out
    });
    TableIterator::new(rows)
}

/// Apply the DDL that removes the key and foreign-key blockers. The unique indexes
/// must be built CONCURRENTLY, which cannot run here: while any is missing, their
/// statements come back in `ddl` (run them with `\gexec`, then call again). Then the
/// foreign keys to rewrite are dropped, each key is swapped to its new index
/// (`ADD CONSTRAINT … USING INDEX`), and the foreign keys come back with tenant_id,
/// NOT VALID then VALIDATE; each step under lock_timeout with retries, logged.
/// Idempotent; data unchanged.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn prepare_for_citus(
    lock_timeout_ms: default!(i32, 2000),
    retries: default!(i32, 5),
) -> TableIterator<
    'static,
    (
        name!(step, String),
        name!(detail, String),
        name!(ddl, Option<String>),
    ),
> {
    let limits = crate::ddl::limits(lock_timeout_ms, retries);
    let rows = Spi::connect_mut(|c| {
        let all = tables(c, &None);
        let bl = blockers(c, &all);
        let mut out: Vec<(String, String, Option<String>)> = Vec::new();
        let missing: Vec<&Blocker> = bl
            .iter()
            .filter(|b| {
                b.index.as_ref().is_some_and(|(ix, _)| {
                    !one::<bool>(
                        c,
                        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class x JOIN pg_catalog.pg_index i ON i.indexrelid = x.oid
                                         WHERE x.relname = $1 AND i.indisvalid)",
                        &[ix.as_str().into()],
                    )
                    .unwrap_or(false)
                })
            })
            .collect();
        if !missing.is_empty() {
            for b in missing {
                let (_, ddl) = b.index.clone().unwrap_or_default();
                out.push((
                    "build unique index (run with \\gexec, then call again)".into(),
                    b.what.clone(),
                    Some(ddl),
                ));
            }
            return out;
        }
        let run = |c: &mut SpiClient<'_>, table: &str, step: &str, sql: &str| {
            crate::ddl::run(c, table, step, sql, limits)
        };
        // 1. drop the foreign keys to rewrite, 2. swap keys, 3. re-add and validate.
        for b in bl
            .iter()
            .filter(|b| b.kind == BlockerKind::ForeignKeyRewrite)
        {
            if let Some(steps) = &b.apply {
                run(c, &b.table, "drop foreign key", &steps[0]);
                out.push(("drop foreign key".into(), b.what.clone(), None));
            }
        }
        for b in bl.iter().filter(|b| b.kind == BlockerKind::KeySwap) {
            if let Some(steps) = &b.apply {
                run(c, &b.table, "attach key USING INDEX", &steps[0]);
                out.push(("attach key using index".into(), b.what.clone(), None));
            }
        }
        for b in bl
            .iter()
            .filter(|b| b.kind == BlockerKind::ForeignKeyRewrite)
        {
            if let Some(steps) = &b.apply {
                run(
                    c,
                    &b.table,
                    "add foreign key with tenant_id NOT VALID",
                    &steps[1],
                );
                run(c, &b.table, "validate foreign key", &steps[2]);
                out.push(("foreign key with tenant_id".into(), b.what.clone(), None));
            }
        }
        for b in bl.iter().filter(|b| b.kind == BlockerKind::ForTheDba) {
            out.push((
                "left for the DBA".into(),
                format!("{}: {}", b.table, b.what),
                b.ddl.clone(),
            ));
        }
        if out.is_empty() {
            out.push((
                "nothing to do".into(),
                "every key and foreign key already includes tenant_id".into(),
                None,
            ));
        }
        out
    });
    TableIterator::new(rows)
}

/// On a Citus coordinator: `create_reference_table` for the reference tables, then
/// `create_distributed_table(tbl, 'tenant_id', colocate_with => …)` for the tenant
/// tables, all co-located, parents before children.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn distribute_all() -> TableIterator<'static, (name!(table_name, String), name!(action, String))> {
    let rows = Spi::connect_mut(|c| {
        let citus = crate::catalog::citus_installed(c);
        if !citus {
            raise_full(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "distribute_all() needs the citus extension, which is not installed in this database",
                None,
                Some("On a Citus coordinator: CREATE EXTENSION citus; add the workers; CREATE EXTENSION vital_tenancy on every node; then run vital_tenancy.prepare_for_citus().".into()),
            );
        }
        let all = tables(c, &None);
        let open: Vec<String> = blockers(c, &all)
            .into_iter()
            .filter(|b| b.kind != BlockerKind::ForTheDba)
            .map(|b| format!("{}: {}", b.table, b.what))
            .collect();
        if !open.is_empty() {
            raise_full(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "{} blocker(s) stop Citus from distributing the tables",
                    open.len()
                ),
                Some(open.join("\n")),
                Some(
                    "Run vital_tenancy.prepare_for_citus() (and its \\gexec statements) first."
                        .into(),
                ),
            );
        }
        // The boundary must not depend on AS RESTRICTIVE, which Citus drops on shards.
        let restrictive: Vec<String> = c
            .select(
                "SELECT tbl::pg_catalog.text FROM vital_tenancy.rls_tables WHERE policy_shape <> 'citus'
                 UNION ALL
                 SELECT vital_tenancy.tenants_table()::pg_catalog.text
                  WHERE NOT EXISTS (SELECT 1 FROM vital_tenancy.settings WHERE name = 'registry_policy_shape' AND value = 'citus')
                 ORDER BY 1",
                None,
                &[],
            )
            .or_raise("reading the policy shapes")
            .filter_map(|r| r.get::<String>(1).ok().flatten())
            .collect();
        if !restrictive.is_empty() {
            raise_full(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "the tenant boundary of {} is made of restrictive policies, which Citus recreates on shards as permissive",
                    restrictive.join(", ")
                ),
                None,
                Some("Run vital_tenancy.citus_safe_policies() on each first (migration 008 does).".into()),
            );
        }
        // Row-local triggers (updated_at) are allowed on distributed tables only so.
        c.update(
            "SELECT pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true)",
            None,
            &[],
        )
        .or_raise("allowing triggers on distributed tables");
        // Foreign keys between tables to distribute: Citus accepts them only between
        // distributed tables, so they are dropped here and re-added after (the same
        // definitions, tenant_id included by prepare_for_citus()).
        let dist_oids: Vec<pg_sys::Oid> = all
            .iter()
            .filter(|t| t.role == Role::Distributed)
            .map(|t| t.oid)
            .collect();
        let fks: Vec<(String, String, String)> = c
            .select(
                "SELECT k.conrelid::pg_catalog.regclass::pg_catalog.text, k.conname::text, pg_catalog.pg_get_constraintdef(k.oid)
                   FROM pg_catalog.pg_constraint k
                  WHERE k.contype = 'f' AND k.conrelid = ANY ($1) AND k.confrelid = ANY ($1)
                  ORDER BY 1, 2",
                None,
                &[dist_oids.clone().into()],
            )
            .or_raise("reading foreign keys between distributed tables")
            .map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<String>(2).ok().flatten().unwrap_or_default(),
                    r.get::<String>(3).ok().flatten().unwrap_or_default(),
                )
            })
            .collect();
        for (tbl, con, _) in &fks {
            c.update(
                &format!("ALTER TABLE {tbl} DROP CONSTRAINT {}", quote_ident(con)),
                None,
                &[],
            )
            .or_raise("dropping a foreign key before distribution");
        }
        // Parents before children: order by depth in the foreign-key graph.
        let depth = |oid: pg_sys::Oid| -> i32 {
            one::<i32>(
                c,
                "WITH RECURSIVE up(rel, d) AS (SELECT $1::oid, 0 UNION
                   SELECT k.confrelid, up.d + 1 FROM up JOIN pg_catalog.pg_constraint k ON k.conrelid = up.rel AND k.contype = 'f'
                    WHERE k.confrelid <> up.rel AND up.d < 32)
                 SELECT max(d) FROM up",
                &[oid.into()],
            )
            .unwrap_or(0)
        };
        let mut refs: Vec<&Table> = all.iter().filter(|t| t.role == Role::Reference).collect();
        refs.sort_by_key(|t| depth(t.oid));
        let mut dist: Vec<&Table> = all.iter().filter(|t| t.role == Role::Distributed).collect();
        dist.sort_by_key(|t| depth(t.oid));
        let mut out = Vec::new();
        for t in refs {
            c.update(
                "SELECT create_reference_table($1::regclass)",
                None,
                &[t.name.as_str().into()],
            )
            .or_raise("creating a reference table");
            out.push((t.name.clone(), "create_reference_table".to_string()));
        }
        let anchor = dist.first().map(|t| t.name.clone());
        for t in dist {
            let colocate = if Some(&t.name) == anchor.as_ref() {
                "default".to_string()
            } else {
                anchor.clone().unwrap_or_default()
            };
            c.update(
                "SELECT create_distributed_table($1::regclass, $3, colocate_with => $2)",
                None,
                &[
                    t.name.as_str().into(),
                    colocate.as_str().into(),
                    t.tenant_column.as_str().into(),
                ],
            )
            .or_raise("distributing a table");
            out.push((
                t.name.clone(),
                format!(
                    "create_distributed_table by {}, colocate_with {colocate}",
                    t.tenant_column
                ),
            ));
        }
        // Citus gives some tables a new relation (a reference table's original becomes
        // the coordinator's placement, a table that became a Citus local table first is
        // re-created): re-key the extension's records by name.
        for t in &all {
            c.update(
                "WITH k AS (SELECT $1::pg_catalog.oid AS old, pg_catalog.to_regclass($2)::pg_catalog.oid AS new)
                 , a AS (UPDATE vital_tenancy.rls_tables r SET tbl = k.new FROM k WHERE r.tbl::pg_catalog.oid = k.old AND k.new <> k.old RETURNING 1)
                 , b AS (UPDATE vital_tenancy.originals o SET tbl = k.new FROM k WHERE o.tbl::pg_catalog.oid = k.old AND k.new <> k.old RETURNING 1)
                 , s AS (UPDATE vital_tenancy.migration_steps m SET tbl = k.new FROM k WHERE m.tbl::pg_catalog.oid = k.old AND k.new <> k.old RETURNING 1)
                 , j AS (UPDATE vital_tenancy.migration_journal_batches m SET tbl = k.new FROM k WHERE m.tbl::pg_catalog.oid = k.old AND k.new <> k.old RETURNING 1)
                 , d AS (UPDATE vital_tenancy.declared_references d
                            SET child = CASE WHEN d.child::pg_catalog.oid = k.old THEN k.new ELSE d.child::pg_catalog.oid END::pg_catalog.regclass,
                                parent = CASE WHEN d.parent::pg_catalog.oid = k.old THEN k.new ELSE d.parent::pg_catalog.oid END::pg_catalog.regclass
                           FROM k WHERE k.old IN (d.child::pg_catalog.oid, d.parent::pg_catalog.oid) AND k.new <> k.old RETURNING 1)
                 SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM b) + (SELECT count(*) FROM s) + (SELECT count(*) FROM j) + (SELECT count(*) FROM d)",
                None,
                &[t.oid.into(), t.name.as_str().into()],
            )
            .or_raise("re-keying the extension's records after distribution");
        }
        for (tbl, con, def) in &fks {
            // The definition is the catalog's own text (pg_get_constraintdef).
            c.update(
                &format!(
                    "ALTER TABLE {tbl} ADD CONSTRAINT {} {def}",
                    quote_ident(con)
                ),
                None,
                &[],
            )
            .or_raise("re-adding a foreign key between distributed tables");
            out.push((tbl.clone(), format!("foreign key {con} re-added: {def}")));
        }
        out
    });
    TableIterator::new(rows)
}

/// The tenant boundary on every table vital_tenancy manages and, on Citus, on every
/// shard placement of it: one row per placement checked (problem NULL when the
/// boundary holds there), one per problem otherwise. A placement is checked by the
/// worker's own `boundary_problems()` (each policy read as permissive, as Citus makes
/// it) and compared with its table's policies (commands, roles, expressions).
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn citus_boundary_status() -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(placement, String),
        name!(problem, Option<String>),
    ),
> {
    TableIterator::new(Spi::connect(boundary_status))
}

/// Whether there are shard placements whose boundary `boundary_status()` can check:
/// Citus with distributed tables, and the 0.2.0 functions it runs on them (absent from
/// a 0.1.0 schema that calls this library).
pub(crate) fn has_placements_to_check(c: &SpiClient<'_>) -> bool {
    one::<bool>(
        c,
        "SELECT pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL
            AND pg_catalog.to_regprocedure('vital_tenancy.policy_fingerprint(regclass)') IS NOT NULL
            AND pg_catalog.to_regprocedure('vital_tenancy.boundary_problems(regclass, text)') IS NOT NULL",
        &[],
    )
    .unwrap_or(false)
        && one::<bool>(c, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition)", &[])
            .unwrap_or(false)
}

/// (table, placement, problem) for `citus_boundary_status()`, `citus_readiness()` and
/// `health()`.
pub(crate) fn boundary_status(c: &SpiClient<'_>) -> Vec<(String, String, Option<String>)> {
    {
        let tables: Vec<(String, String)> = c
            .select(
                "SELECT tbl::pg_catalog.text, tenant_column::text FROM vital_tenancy.rls_tables
                  WHERE pg_catalog.to_regclass(tbl::pg_catalog.text) IS NOT NULL
                 UNION ALL
                 SELECT vital_tenancy.tenants_table()::pg_catalog.text, 'id' WHERE vital_tenancy.tenants_table() IS NOT NULL
                 ORDER BY 1",
                None,
                &[],
            )
            .or_raise("reading the managed tables")
            .map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<String>(2).ok().flatten().unwrap_or_default(),
                )
            })
            .collect();
        let citus = crate::catalog::citus_installed(c);

        let mut out = Vec::new();
        for (table, column) in tables {
            let local: Vec<String> = c
                .select(
                    "SELECT p FROM vital_tenancy.boundary_problems($1::pg_catalog.regclass, $2) p",
                    None,
                    &[table.as_str().into(), column.as_str().into()],
                )
                .or_raise("checking the boundary")
                .filter_map(|r| r.get::<String>(1).ok().flatten())
                .collect();
            if local.is_empty() {
                out.push((table.clone(), "table".to_string(), None));
            }
            for p in local {
                out.push((table.clone(), "table".to_string(), Some(p)));
            }
            let distributed = citus
                && one::<bool>(
                    c,
                    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1::pg_catalog.regclass)",
                    &[table.as_str().into()],
                )
                .unwrap_or(false);
            if !distributed {
                continue;
            }
            let own: String = one(
                c,
                "SELECT vital_tenancy.policy_fingerprint($1::pg_catalog.regclass)",
                &[table.as_str().into()],
            )
            .unwrap_or_default();
            // Citus runs format(command, shard name): %1$s is the shard; the column is quoted by format().
            let command: String = one(
                c,
                r"SELECT pg_catalog.format('SELECT vital_tenancy.policy_fingerprint(''%%1$s''::pg_catalog.regclass) || E''\n'' || pg_catalog.array_to_string(ARRAY(SELECT vital_tenancy.boundary_problems(''%%1$s''::pg_catalog.regclass, %L)), E''\n'')', $1)",
                &[column.as_str().into()],
            )
            .unwrap_or_default();
            let placements: Vec<(String, i32, i64, bool, String)> = c
                .select(
                    "SELECT nodename::text, nodeport::int, shardid::bigint, success, result::text
                       FROM run_command_on_placements($1::pg_catalog.regclass, $2) ORDER BY shardid, nodeport",
                    None,
                    &[table.as_str().into(), command.as_str().into()],
                )
                .or_raise("checking the shard placements")
                .map(|r| {
                    (
                        r.get::<String>(1).ok().flatten().unwrap_or_default(),
                        r.get::<i32>(2).ok().flatten().unwrap_or_default(),
                        r.get::<i64>(3).ok().flatten().unwrap_or_default(),
                        r.get::<bool>(4).ok().flatten().unwrap_or(false),
                        r.get::<String>(5).ok().flatten().unwrap_or_default(),
                    )
                })
                .collect();
            for (node, port, shard, success, result) in placements {
                let at = format!("shard {shard} on {node}:{port}");
                if !success {
                    out.push((
                        table.clone(),
                        at,
                        Some(format!("the check failed there: {result}")),
                    ));
                    continue;
                }
                let mut lines = result.split('\n');
                let fp = lines.next().unwrap_or_default();
                let problems: Vec<String> = lines
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect();
                if fp != own {
                    out.push((
                        table.clone(),
                        at.clone(),
                        Some(
                            "its policies differ from its table's (commands, roles or expressions)"
                                .into(),
                        ),
                    ));
                }
                if problems.is_empty() && fp == own {
                    out.push((table.clone(), at.clone(), None));
                }
                for p in problems {
                    out.push((table.clone(), at.clone(), Some(p)));
                }
            }
        }
        out
    }
}
