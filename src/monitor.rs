//! Health check, index advisor, tenant usage and tenant export — the plan's Phase 7,
//! 8.2 and 10.3, in-database. All read-only.

use crate::catalog::RawJsonb;
use crate::errors::{raise, raise_full, OrRaise};
use crate::logic::ident::quote_ident;
use crate::logic::tenants::{uuid_bytes, ALL};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, Uuid};
use serde_json::{json, Value};

/// Tables with a tenant column: (regclass text, quoted column, raw column).
fn tenanted(c: &SpiClient<'_>, schemas: &Option<Vec<String>>) -> Vec<(String, String, String)> {
    crate::catalog::tenant_tables(c, schemas)
        .into_iter()
        .map(|t| (t.table, t.column, t.raw_column))
        .collect()
}

/// Whether a valid index of `table` starts with exactly these columns.
fn has_index(c: &SpiClient<'_>, table: &str, columns: &[&str]) -> bool {
    let cols: Vec<String> = columns.iter().map(|s| s.to_string()).collect();
    c.select(
        "SELECT EXISTS (
           SELECT 1 FROM pg_catalog.pg_index i
            WHERE i.indrelid = $1::pg_catalog.regclass AND i.indisvalid
              AND (SELECT array_agg(a.attname::text ORDER BY k.i)
                     FROM unnest(i.indkey[0:pg_catalog.cardinality($2::text[]) - 1]) WITH ORDINALITY k(n, i)
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n) = $2::text[])",
        Some(1),
        &[table.into(), cols.into()],
    )
    .and_then(|t| t.first().get_one())
    .or_raise("looking for an index")
    .unwrap_or(false)
}

fn has_columns(c: &SpiClient<'_>, table: &str, columns: &[&str]) -> bool {
    let cols: Vec<String> = columns.iter().map(|s| s.to_string()).collect();
    c.select(
        "SELECT count(*) = pg_catalog.cardinality($2::text[]) FROM pg_catalog.pg_attribute
          WHERE attrelid = $1::pg_catalog.regclass AND attname = ANY ($2::text[]) AND attnum > 0 AND NOT attisdropped",
        Some(1),
        &[table.into(), cols.into()],
    )
    .and_then(|t| t.first().get_one())
    .or_raise("checking columns")
    .unwrap_or(false)
}

type Advice = (String, Vec<String>, String, String);

fn advice(c: &SpiClient<'_>, schemas: &Option<Vec<String>>) -> Vec<Advice> {
    let mut out = Vec::new();
    for (table, qcol, col) in tenanted(c, schemas) {
        if !has_index(c, &table, &[col.as_str()]) {
            let relname = table
                .rsplit('.')
                .next()
                .unwrap_or(&table)
                .trim_matches('"')
                .to_string();
            out.push((
                table.clone(),
                vec![col.clone()],
                "no index starts with the tenant column: every tenant's read and RLS check scans the table".into(),
                format!(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {table} ({qcol})",
                    quote_ident(&crate::logic::migrate::derived_name(&relname, &col, "idx"))
                ),
            ));
        }
    }
    // The plan's composites (Phase 7.1), where the tables and columns exist and the
    // schema filter (if any) includes public (F26).
    let public_included = schemas
        .as_ref()
        .is_none_or(|list| list.iter().any(|s| s == "public"));
    for (table, cols, why) in [
        (
            "public.prompts",
            vec!["tenant_id", "domain"],
            "the prompt library filters by tenant and domain",
        ),
        (
            "public.agents",
            vec!["tenant_id", "tier", "status"],
            "agent lists filter by tenant, tier and status",
        ),
    ] {
        let exists: bool = c
            .select(
                "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
                Some(1),
                &[table.into()],
            )
            .and_then(|t| t.first().get_one())
            .or_raise("checking a table")
            .unwrap_or(false);
        if public_included && exists && has_columns(c, table, &cols) && !has_index(c, table, &cols)
        {
            let rel = table.trim_start_matches("public.");
            let name = format!("idx_{rel}_{}", cols.join("_"));
            out.push((
                table.to_string(),
                cols.iter().map(|s| s.to_string()).collect(),
                format!("composite index from the migration plan: {why}"),
                format!(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {table} ({})",
                    quote_ident(&name),
                    cols.iter()
                        .map(|c| quote_ident(c))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    out
}

/// Missing tenant indexes and the plan's composite indexes, each with a
/// `CREATE INDEX CONCURRENTLY IF NOT EXISTS` statement to run with `\gexec`.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn index_advice(
    schemas: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(columns, Vec<String>),
        name!(reason, String),
        name!(ddl, String),
    ),
> {
    let schemas = schemas.map(|v| crate::errors::no_null_elements("schemas", v));
    TableIterator::new(Spi::connect(|c| advice(c, &schemas)))
}

/// Percentage of tables with a tenant column whose tenant column leads a valid index
/// (the plan's > 95% goal); NULL when there is no such table.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn index_coverage(
    schemas: default!(Option<Vec<Option<String>>>, "NULL"),
) -> Option<pgrx::AnyNumeric> {
    let schemas = schemas.map(|v| crate::errors::no_null_elements("schemas", v));
    Spi::connect(|c| {
        let tables = tenanted(c, &schemas);
        if tables.is_empty() {
            return None;
        }
        let covered = tables
            .iter()
            .filter(|(t, _, col)| has_index(c, t, &[col.as_str()]))
            .count();
        c.select(
            "SELECT round(100.0 * $1 / $2, 2)",
            Some(1),
            &[(covered as i64).into(), (tables.len() as i64).into()],
        )
        .and_then(|t| t.first().get_one::<pgrx::AnyNumeric>())
        .or_raise("computing the coverage")
    })
}

// pgrx needs the name!() tuple spelled out in the signature (it rejects a type alias).
#[allow(clippy::type_complexity)]
/// Rows, estimated bytes and last change per tenant and table, for a usage dashboard.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_usage(
    schemas: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(tenant, Option<String>),
        name!(table_name, String),
        name!(rows, i64),
        name!(estimated_bytes, i64),
        name!(last_change, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
> {
    let schemas = schemas.map(|v| crate::errors::no_null_elements("schemas", v));
    let rows = Spi::connect(|c| {
        let tenants = crate::catalog::require_tenants_table(c);
        let mut out = Vec::new();
        for (table, qcol, _) in tenanted(c, &schemas) {
            let stamp = if has_columns(c, &table, &["updated_at"]) {
                "max(x.updated_at)::timestamptz"
            } else if has_columns(c, &table, &["created_at"]) {
                "max(x.created_at)::timestamptz"
            } else {
                "NULL::timestamptz"
            };
            let q = format!(
                "SELECT tt.name::text, g.n, (g.n::float8 / NULLIF(sum(g.n) OVER (), 0) * pg_catalog.pg_total_relation_size($1::pg_catalog.regclass))::bigint, g.last
                   FROM (SELECT x.{qcol} AS tenant, count(*) AS n, {stamp} AS last FROM {table} x GROUP BY 1) g
                   LEFT JOIN {tenants} tt ON tt.id = g.tenant ORDER BY 1"
            );
            for r in c
                .select(&q, None, &[table.as_str().into()])
                .or_raise("measuring tenant usage")
            {
                out.push((
                    r.get::<String>(1).ok().flatten(),
                    table.clone(),
                    r.get::<i64>(2).ok().flatten().unwrap_or(0),
                    r.get::<i64>(3).ok().flatten().unwrap_or(0),
                    r.get::<pgrx::datum::TimestampWithTimeZone>(4)
                        .ok()
                        .flatten(),
                ));
            }
        }
        out
    });
    TableIterator::new(rows)
}

/// A lazily fetched export: an SPI cursor kept open by name between calls, read a
/// batch at a time, so the whole result is never held in memory.
struct ExportRows {
    /// The portal's name and address: a portal of that name that is not this one (the
    /// export's was closed and a client declared its own) is not read from (F18).
    cursor: Option<(String, usize)>,
    buffer: std::vec::IntoIter<(String, RawJsonb)>,
    /// Where the current batch's jsonb datums live (reset before the next batch, when
    /// every row of this one has been returned). A child of the SRF's own context, so
    /// PostgreSQL deletes it with the SRF; never deleted here.
    batch: pg_sys::MemoryContext,
}

/// The address of the open portal called `name`, or 0.
fn portal_address(name: &str) -> usize {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: SPI_cursor_find only looks the name up in the portal hash table.
    unsafe { pg_sys::SPI_cursor_find(cname.as_ptr()) as usize }
}

impl Iterator for ExportRows {
    type Item = (String, RawJsonb);
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.buffer.next() {
                return Some(row);
            }
            let (name, address) = self.cursor.clone()?;
            let (batch, done) = Spi::connect(|c| {
                if portal_address(&name) != address {
                    raise_full(
                        PgSqlErrorCode::ERRCODE_INVALID_CURSOR_NAME,
                        "export_tenant's cursor was closed before the export finished",
                        Some(format!("Its portal \"{name}\" was closed (ROLLBACK TO SAVEPOINT, CLOSE) or replaced.")),
                        Some("Run the export again, from one statement or a cursor that is not rolled back midway.".into()),
                    )
                }
                let mut cur = c.find_cursor(&name).or_raise("finding the export cursor");
                let mut t = cur.fetch(1000).or_raise("fetching exported rows");
                // A portal of that name declared anew by the client (after a CLOSE) may
                // sit where ours did: its rows are not (text, jsonb) (issue 32, item 3).
                let ours = !t.is_empty()
                    && t.columns().ok() == Some(2)
                    && t.column_type_oid(1).ok() == Some(PgOid::from(pg_sys::TEXTOID))
                    && t.column_type_oid(2).ok() == Some(PgOid::from(pg_sys::JSONBOID));
                if !t.is_empty() && !ours {
                    raise_full(
                        PgSqlErrorCode::ERRCODE_INVALID_CURSOR_NAME,
                        "export_tenant's cursor was replaced before the export finished",
                        Some(format!("The portal \"{name}\" now holds another query's rows.")),
                        Some("Run the export again, without closing or re-declaring its cursor midway.".into()),
                    )
                }
                // The previous batch has been returned: its datums can go.
                // SAFETY: nothing points into the context any more (the buffer is empty
                // and its last row was returned by the previous call).
                unsafe { pg_sys::MemoryContextReset(self.batch) };
                let mut batch = pgrx::PgMemoryContexts::For(self.batch);
                let rows: Vec<(String, RawJsonb)> = crate::errors::reading_rows(|| {
                    let mut rows = Vec::with_capacity(t.len());
                    while let Some(r) = t.next() {
                        let table = r
                            .get::<String>(1)
                            .or_raise("reading an exported row")
                            .unwrap_or_default();
                        // The row's jsonb as PostgreSQL made it, copied out of SPI's
                        // memory without a conversion (F08).
                        let Some(datum) = t
                            .get_datum_by_ordinal(2)
                            .or_raise("reading an exported row")
                        else {
                            continue;
                        };
                        // SAFETY: a jsonb varlena datum of this SPI row, copied whole
                        // into the export's own context.
                        let copy = unsafe {
                            batch.switch_to(|_| {
                                pg_sys::Datum::from(pg_sys::pg_detoast_datum_copy(
                                    datum.cast_mut_ptr::<pg_sys::varlena>(),
                                ))
                            })
                        };
                        rows.push((table, RawJsonb(copy)));
                    }
                    rows
                });
                let done = rows.is_empty();
                if !done {
                    // Keep the portal open for the next call.
                    let _ = cur.detach_into_name();
                }
                (rows, done)
            });
            if done {
                self.cursor = None;
                return None;
            }
            self.buffer = batch.into_iter();
        }
    }
}

/// A tenant's registry row, then its own rows of every table with a tenant column, as
/// (table, row jsonb), streamed; usable in
/// `COPY (SELECT * FROM vital_tenancy.export_tenant(…)) TO STDOUT`, and loaded back
/// elsewhere by `import_tenant()`.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn export_tenant(
    tenant: Option<Uuid>,
    schemas: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<'static, (name!(table_name, String), name!(row, RawJsonb))> {
    let Some(tenant) = tenant else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "tenant must not be NULL",
        )
    };
    let schemas = schemas.map(|v| crate::errors::no_null_elements("schemas", v));
    let cursor = Spi::connect(|c| {
        let tenants = crate::catalog::require_tenants_table(c);
        let exists: bool = c
            .select(
                &format!("SELECT EXISTS (SELECT 1 FROM {tenants} WHERE id = $1)"),
                Some(1),
                &[tenant.into()],
            )
            .and_then(|t| t.first().get_one())
            .or_raise("checking the tenant")
            .unwrap_or(false);
        if !exists {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("tenant {tenant} does not exist in {tenants}"),
            );
        }
        // The registry row first (import_tenant() creates the tenant from it), unless
        // the export is limited to schemas the registry is not in.
        let registry_part: Option<String> = crate::catalog::value(
            c,
            "SELECT pg_catalog.format('SELECT %L::text, pg_catalog.to_jsonb(x) FROM %s x WHERE x.id = $1', $1::text, $1::text)
               FROM pg_catalog.pg_class t JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
              WHERE t.oid = $1::pg_catalog.regclass AND ($2::text[] IS NULL OR n.nspname = ANY ($2))",
            &[tenants.as_str().into(), schemas.clone().into()],
        );
        let parts: Vec<String> = registry_part
            .into_iter()
            .chain(tenanted(c, &schemas).into_iter().map(|(table, qcol, _)| {
                format!(
                    "SELECT {lit}::text, pg_catalog.to_jsonb(x) FROM {table} x WHERE x.{qcol} = $1",
                    lit = crate::logic::ident::quote_literal(&table)
                )
            }))
            .collect();
        if parts.is_empty() {
            return None;
        }
        let sql = parts.join(" UNION ALL ");
        let cur = c
            .try_open_cursor(sql.as_str(), &[tenant.into()])
            .or_raise("opening the export cursor");
        let name = cur.detach_into_name();
        let address = portal_address(&name);
        Some((name, address))
    });
    // Created here, in the SRF's multi-call context: it lives as long as the export.
    TableIterator::new(ExportRows {
        cursor,
        buffer: Vec::new().into_iter(),
        // SAFETY: a new child of the current (multi-call) context, with a static name.
        batch: unsafe {
            pg_sys::AllocSetContextCreateExtended(
                pg_sys::CurrentMemoryContext,
                c"vital_tenancy export batch".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            )
        },
    })
}

/// One health document: database, tenants, referential integrity, RLS coverage, the
/// last migration run. `status` is `healthy` only when every part is.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn health() -> JsonB {
    let doc = Spi::connect(|c| {
        let one = |sql: &str| -> Value {
            c.select(sql, Some(1), &[])
                .and_then(|t| t.first().get_one::<JsonB>())
                .or_raise("building the health document")
                .map(|j| j.0)
                .unwrap_or(Value::Null)
        };
        let database = one(
            "SELECT pg_catalog.jsonb_build_object('name', current_database(), 'server_version', current_setting('server_version'),
                    'size_bytes', pg_catalog.pg_database_size(current_database()),
                    'extension_version', (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'vital_tenancy'),
                    'status', 'healthy')",
        );
        // Tenants: every tenant of the registry with its status and what it allows;
        // the three of the migration must exist and own data in some tenant table, and
        // no tenant may have a status the extension does not know (it gives no access).
        let dist = one(
            "SELECT COALESCE(pg_catalog.jsonb_object_agg(tenant_id::text, rows), '{}')
               FROM (SELECT tenant_id, sum(row_count) AS rows FROM vital_tenancy.tenant_distribution()
                      WHERE tenant_id IS NOT NULL GROUP BY 1) d",
        );
        let registry: Vec<Value> = crate::lifecycle::status_rows()
            .into_iter()
            .map(|r| {
                json!({"id": r.id.to_string(), "slug": r.slug, "name": r.name, "status": r.status,
                       "access": r.access.as_str(), "known_status": r.known})
            })
            .collect();
        let registry = Value::Array(registry);
        let mut tenants = Vec::new();
        let mut healthy = true;
        let mut problems = Vec::new();
        for t in ALL.iter() {
            let _ = uuid_bytes(t.id);
            if !registry
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["id"] == json!(t.id)))
            {
                healthy = false;
                problems.push(format!(
                    "tenant {} ({}) is missing from the registry",
                    t.id, t.slug
                ));
            } else if dist.get(t.id).and_then(Value::as_i64).unwrap_or(0) == 0 {
                healthy = false;
                problems.push(format!("tenant {} ({}) owns no rows", t.id, t.slug));
            }
        }
        for x in registry.as_array().into_iter().flatten() {
            let id = x["id"].as_str().unwrap_or_default().to_string();
            let rows = dist.get(&id).and_then(Value::as_i64).unwrap_or(0);
            if x["known_status"] != json!(true) {
                healthy = false;
                problems.push(format!(
                    "tenant {id} has status {}, which vital_tenancy does not know: it gets no access (set_status_access())",
                    x["status"]
                ));
            }
            let mut entry = x.clone();
            entry["exists"] = json!(true);
            entry["rows"] = json!(rows);
            tenants.push(entry);
        }
        let tenants = json!({"status": if healthy { "healthy" } else { "degraded" }, "tenants": tenants, "problems": problems});
        let integrity = one(
            "SELECT pg_catalog.jsonb_build_object(
                      'orphaned_references', (SELECT COALESCE(sum(orphan_count), 0) FROM vital_tenancy.orphaned_references()),
                      'orphaned_tenant_refs', (SELECT COALESCE(sum(row_count), 0) FROM vital_tenancy.orphaned_tenant_refs()),
                      'cross_tenant_references', (SELECT COALESCE(sum(row_count), 0) FROM vital_tenancy.cross_tenant_references()),
                      'rows_without_tenant', (SELECT COALESCE(sum(missing), 0) FROM vital_tenancy.tenant_id_coverage()))",
        );
        let bad: i64 = [
            "orphaned_references",
            "orphaned_tenant_refs",
            "cross_tenant_references",
            "rows_without_tenant",
        ]
        .iter()
        .map(|k| integrity[k].as_i64().unwrap_or(0))
        .sum();
        let mut integrity = integrity;
        integrity["status"] = json!(if bad == 0 { "healthy" } else { "degraded" });
        let rls = one(
            "SELECT pg_catalog.jsonb_build_object('tables', (SELECT count(*) FROM vital_tenancy.rls_status()),
                      'problems', COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('table', table_name, 'problem', problem))
                                              FROM vital_tenancy.rls_coverage()), '[]'))",
        );
        let mut rls = rls;
        // The roles rls_coverage() names as bypassing the boundary, once each.
        let mut bypass: Vec<String> = crate::validate::bypass_roles(c, &None)
            .into_iter()
            .map(|b| b.role)
            .collect();
        bypass.sort();
        bypass.dedup();
        rls["bypass_roles"] = json!(bypass);
        let rls_ok = rls["problems"]
            .as_array()
            .map(|a| a.is_empty())
            .unwrap_or(false);
        rls["status"] = json!(if rls_ok { "healthy" } else { "degraded" });
        let last = one(
            "SELECT COALESCE((SELECT pg_catalog.to_jsonb(r) FROM vital_tenancy.migration_runs r ORDER BY run_id DESC LIMIT 1), 'null')",
        );
        // On a Citus coordinator with distributed tables: every shard placement must
        // hold the boundary (what citus_boundary_status() reports).
        let citus = if crate::citus::has_placements_to_check(c) {
            let placements = crate::citus::boundary_status(c);
            let problems: Vec<Value> = placements
                .iter()
                .filter_map(|(table, placement, problem)| {
                    problem
                        .as_ref()
                        .map(|p| json!({"table": table, "placement": placement, "problem": p}))
                })
                .collect();
            json!({"placements": placements.len(), "problems": problems})
        } else {
            Value::Null
        };
        let citus_ok =
            citus.is_null() || citus["problems"].as_array().is_some_and(|a| a.is_empty());
        let mut citus = citus;
        if !citus.is_null() {
            citus["status"] = json!(if citus_ok { "healthy" } else { "degraded" });
        }
        // Advisory: the plan's index coverage target (should-have), not part of status.
        let indexes = crate::advice::coverage_document(c);
        let all_ok = healthy && bad == 0 && rls_ok && citus_ok;
        json!({
            "status": if all_ok { "healthy" } else { "degraded" },
            "database": database,
            "tenants": tenants,
            "referential_integrity": integrity,
            "rls": rls,
            "citus": citus,
            "indexes": indexes,
            "last_migration": last,
        })
    });
    JsonB(doc)
}
