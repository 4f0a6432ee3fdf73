//! Catalog look-ups shared by the SQL functions: one place for "does this schema
//! exist", "which tables carry a tenant column", "what is this table called".

use crate::errors::{raise, raise_full, OrRaise};
use crate::logic::ident::quote_ident;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgOid;

/// The application's tenants table as an SQL expression (a regclass, NULL when there is
/// none): the one `ensure_tenants()` recorded, else `public.tenants` where it exists.
/// The one definition of that fallback. (What `vital_tenancy.tenants_table()` returns,
/// read inline: that function pins its search_path, so PostgreSQL cannot inline it,
/// and every tenant request paid for the call twice. The recorded name is always
/// schema-qualified, so it resolves the same under any search_path.)
pub(crate) const TENANTS_TABLE: &str =
    "COALESCE((SELECT pg_catalog.to_regclass(s.value) FROM vital_tenancy.settings s
                WHERE s.name OPERATOR(pg_catalog.=) 'tenants_table'),
              pg_catalog.to_regclass('public.tenants'))";

thread_local! {
    /// Plans of the extension's own look-ups, kept for the backend's life by their SQL
    /// text: a tenant request's context resolution runs a dozen of them, and parsing and
    /// planning each every time cost more than running it. PostgreSQL's plan cache
    /// revalidates a kept plan after DDL on what it reads, a change of search_path or
    /// (for a plan under row level security) of the user.
    static KEPT: std::cell::RefCell<std::collections::HashMap<String, pgrx::spi::OwnedPreparedStatement>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// How many plans `select_kept` keeps before it starts over (queries built around a
/// table name the caller chose would otherwise accumulate).
const MAX_KEPT: usize = 64;

/// `c.select(sql, limit, args)` through a plan kept for the backend's life.
pub(crate) fn select_kept<'c>(
    c: &SpiClient<'c>,
    sql: &str,
    limit: Option<i64>,
    args: &[DatumWithOid<'_>],
) -> pgrx::spi::SpiResult<pgrx::spi::SpiTupleTable<'c>> {
    // Taken out while it runs: the query may call a function of the extension that
    // comes back here (with this text, it then prepares its own).
    let kept = KEPT.with(|k| k.borrow_mut().remove(sql));
    let plan = match kept {
        Some(plan) => plan,
        None => {
            let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
            c.prepare(sql, &types)?.keep()
        }
    };
    let result = c.select(&plan, limit, args);
    KEPT.with(|k| {
        let mut k = k.borrow_mut();
        if k.len() >= MAX_KEPT {
            k.clear();
        }
        k.entry(sql.to_string()).or_insert(plan);
    });
    result
}

/// The first column of the first row, or `None` when there is no row (or it is NULL).
pub(crate) fn value<T: FromDatum + IntoDatum>(
    c: &SpiClient<'_>,
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> Option<T> {
    select_kept(c, sql, Some(1), args)
        .and_then(|t| {
            if t.is_empty() {
                Ok(None)
            } else {
                t.first().get_one::<T>()
            }
        })
        .or_raise("reading the catalog")
}

/// Whether the citus extension is installed in this database.
pub(crate) fn citus_installed(c: &SpiClient<'_>) -> bool {
    value::<bool>(
        c,
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus')",
        &[],
    )
    .unwrap_or(false)
}

/// A table's name as SQL text (regclass output: quoted, and schema-qualified under
/// the pinned search_path of every function).
pub(crate) fn table_name(c: &SpiClient<'_>, oid: pg_sys::Oid) -> String {
    value::<String>(
        c,
        "SELECT $1::pg_catalog.regclass::pg_catalog.text",
        &[oid.into()],
    )
    .unwrap_or_default()
}

/// The application's tenants table as SQL text (regclass output): the one recorded by
/// `ensure_tenants()`, else `public.tenants` if it exists.
pub(crate) fn tenants_table(c: &SpiClient<'_>) -> Option<String> {
    value::<String>(c, &format!("SELECT {TENANTS_TABLE}::pg_catalog.text"), &[])
}

/// The tenants table, or ERROR 55000 when none is known.
pub(crate) fn require_tenants_table(c: &SpiClient<'_>) -> String {
    tenants_table(c).unwrap_or_else(|| {
        raise_full(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "no tenants table is known to vital_tenancy",
            None,
            Some("Run vital_tenancy.ensure_tenants() first.".into()),
        )
    })
}

/// ERROR 3F000 naming the first schema that does not exist.
pub(crate) fn check_schemas(c: &SpiClient<'_>, schemas: &[String]) {
    for s in schemas {
        let ok = value::<bool>(
            c,
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
            &[s.as_str().into()],
        )
        .unwrap_or(false);
        if !ok {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
                format!("schema \"{s}\" does not exist"),
            );
        }
    }
}

/// Whether a table has a (live) column of that name.
pub(crate) fn has_column(c: &SpiClient<'_>, oid: pg_sys::Oid, column: &str) -> bool {
    value::<bool>(
        c,
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped)",
        &[oid.into(), column.into()],
    )
    .unwrap_or(false)
}

/// A table with a tenant column.
#[derive(Debug, Clone)]
pub(crate) struct TenantTable {
    /// regclass text.
    pub table: String,
    /// The tenant column, quoted for SQL.
    pub column: String,
    /// The tenant column as named in the catalog.
    pub raw_column: String,
}

/// Every table with a column named as its tenant column (`tenant_id`, or the column it
/// was enabled with), outside the system schemas, the extension's own and the tenants
/// table, limited to `schemas` when given (each must exist): (table as regclass text,
/// column, its type, whether that is uuid).
fn tenant_column_candidates(
    c: &SpiClient<'_>,
    schemas: &Option<Vec<String>>,
) -> Vec<(String, String, String, bool)> {
    if let Some(list) = schemas {
        check_schemas(c, list);
    }
    c.select(
        &format!(
            "SELECT c.oid::pg_catalog.regclass::pg_catalog.text, a.attname::text,
                pg_catalog.format_type(a.atttypid, a.atttypmod), a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
           LEFT JOIN vital_tenancy.rls_tables r ON r.tbl = c.oid
          WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
            AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'vital_tenancy') AND n.nspname NOT LIKE 'pg\\_%'
            AND ($1::text[] IS NULL OR n.nspname = ANY ($1))
            AND a.attname = COALESCE(r.tenant_column, 'tenant_id')
            AND c.oid IS DISTINCT FROM {TENANTS_TABLE}
          ORDER BY 1"
        ),
        None,
        &[schemas.clone().into()],
    )
    .or_raise("listing tables with a tenant column")
    .map(|r| {
        (
            r.get::<String>(1).ok().flatten().unwrap_or_default(),
            r.get::<String>(2).ok().flatten().unwrap_or_default(),
            r.get::<String>(3).ok().flatten().unwrap_or_default(),
            r.get::<bool>(4).ok().flatten().unwrap_or(false),
        )
    })
    .collect()
}

/// Every table with a tenant column: a candidate (above) whose column is uuid. A column
/// of that name of another type is not a tenant column (validate's `tenant_column_type`
/// reports it: `non_uuid_tenant_columns`).
pub(crate) fn tenant_tables(c: &SpiClient<'_>, schemas: &Option<Vec<String>>) -> Vec<TenantTable> {
    tenant_column_candidates(c, schemas)
        .into_iter()
        .filter(|t| t.3)
        .map(|(table, raw_column, _, _)| TenantTable {
            table,
            column: quote_ident(&raw_column),
            raw_column,
        })
        .collect()
}

/// The candidates whose column is not uuid: (table, column, its type).
pub(crate) fn non_uuid_tenant_columns(
    c: &SpiClient<'_>,
    schemas: &Option<Vec<String>>,
) -> Vec<(String, String, String)> {
    tenant_column_candidates(c, schemas)
        .into_iter()
        .filter(|t| !t.3)
        .map(|(table, column, type_name, _)| (table, column, type_name))
        .collect()
}

/// ERROR 42809 unless `oid` is an application table the toolkit may change: not in a
/// system schema or the extension's own, not temporary, not the tenants registry
/// (which has its own protection, `protect_tenants_table()`). `name` is for messages.
pub(crate) fn require_application_table(c: &SpiClient<'_>, oid: pg_sys::Oid, name: &str) {
    require_application_table_or(c, oid, name, false)
}

/// `require_application_table`, accepting the tenants registry when `registry_ok`
/// (e.g. as the parent of a declared reference).
pub(crate) fn require_application_table_or(
    c: &SpiClient<'_>,
    oid: pg_sys::Oid,
    name: &str,
    registry_ok: bool,
) {
    if let Some(why) = application_table_problem(c, oid, name, registry_ok) {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{why}; the tenant toolkit applies to the application's tables"),
        );
    }
}

/// Why `oid` is not an application table (see `require_application_table`), if it is not.
pub(crate) fn application_table_problem(
    c: &SpiClient<'_>,
    oid: pg_sys::Oid,
    name: &str,
    registry_ok: bool,
) -> Option<String> {
    let row = c
        .select(
            &format!(
                "SELECT n.nspname::text, c.relpersistence = 't',
                    c.oid = {TENANTS_TABLE}, c.relkind::text
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = $1"
            ),
            Some(1),
            &[oid.into()],
        )
        .or_raise("reading the table's schema");
    if row.is_empty() {
        return None;
    }
    let r = row.first();
    let schema: String = r.get(1).or_raise("nspname").unwrap_or_default();
    let temporary: bool = r.get(2).or_raise("relpersistence").unwrap_or(false);
    let registry: bool = r.get(3).or_raise("registry").unwrap_or(false);
    let kind: String = r.get(4).or_raise("relkind").unwrap_or_default();
    if kind != "r" && kind != "p" {
        // An index or a composite type is no table to check (census N03).
        Some(format!("{name} is {}, not a table", relkind_article(&kind)))
    } else if schema == "vital_tenancy" {
        Some(format!("{name} is one of vital_tenancy's own tables"))
    } else if schema == "pg_catalog"
        || schema == "information_schema"
        || schema.starts_with("pg_toast")
    {
        Some(format!("{name} is in the system schema {schema}"))
    } else if temporary {
        Some(format!("{name} is a temporary table"))
    } else if registry && !registry_ok {
        Some(format!(
            "{name} is the tenants registry (protect it with vital_tenancy.protect_tenants_table())"
        ))
    } else {
        None
    }
}

/// What a relation of this `relkind` is, with its article, for messages.
pub(crate) fn relkind_article(kind: &str) -> &'static str {
    match kind {
        "r" => "a table",
        "p" => "a partitioned table",
        "v" => "a view",
        "m" => "a materialized view",
        "f" => "a foreign table",
        "S" => "a sequence",
        "i" => "an index",
        "I" => "a partitioned index",
        "c" => "a composite type",
        "t" => "a TOAST table",
        _ => "a relation of another kind",
    }
}

/// A name given as an argument (a column to create or look up): ERROR 42602 when
/// empty; longer than PostgreSQL's 63 bytes, it is cut as PostgreSQL cuts every
/// identifier it reads (with PostgreSQL's NOTICE 42622), so it names the column that
/// `ALTER TABLE … ADD COLUMN` with the long name made.
pub(crate) fn name_arg<'a>(arg: &str, name: &'a str) -> &'a str {
    if name.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            format!("{arg} must not be empty"),
        );
    }
    // Names are exact (as %I quotes them), but one of blanks only is a typo (N07).
    if name.trim().is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            format!("{arg} must not be blank"),
        );
    }
    let cut = crate::logic::ident::truncate_identifier(name);
    if cut.len() < name.len() {
        ereport!(
            NOTICE,
            PgSqlErrorCode::ERRCODE_NAME_TOO_LONG,
            format!("identifier \"{name}\" will be truncated to \"{cut}\"")
        );
    }
    cut
}

/// `SqlTranslatable` for a Rust type that stands for an existing SQL type (the argument
/// and return types below): what pgrx writes into the generated SQL.
macro_rules! sql_type {
    ($t:ty, $sql:literal) => {
        // SAFETY: the Rust type holds a datum of exactly this SQL type.
        unsafe impl pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable for $t {
            const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!($t);
            const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin =
                pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin::External;
            const ARGUMENT_SQL: Result<
                pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef,
                pgrx::pgrx_sql_entity_graph::metadata::ArgumentError,
            > = Ok(pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef::literal($sql));
            const RETURN_SQL: Result<
                pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef,
                pgrx::pgrx_sql_entity_graph::metadata::ReturnsError,
            > = Ok(pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef::One(
                pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef::literal($sql),
            ));
        }
    };
}

/// A `regclass` argument, kept as its OID. pgrx's `PgRelation` opens the relation
/// before the function body runs, so a dangling OID (a stored regclass of a dropped
/// table, or 0) failed there with an internal error; this checks in the body (F10).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Regclass(pg_sys::Oid);

impl Regclass {
    /// The relation's OID, or ERROR 42P01 when no relation has it.
    pub(crate) fn oid(self) -> pg_sys::Oid {
        let exists = Spi::connect(|c| {
            value::<bool>(
                c,
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = $1)",
                &[self.0.into()],
            )
        })
        .unwrap_or(false);
        if !exists {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("relation with OID {} does not exist", self.0.to_u32()),
            );
        }
        self.0
    }
}

impl FromDatum for Regclass {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Regclass> {
        // SAFETY: a regclass datum is an OID by value.
        unsafe { pg_sys::Oid::from_polymorphic_datum(datum, is_null, pg_sys::OIDOID) }.map(Regclass)
    }
}

impl IntoDatum for Regclass {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0))
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::REGCLASSOID
    }
}

sql_type!(Regclass, "regclass");

// SAFETY: unboxed through FromDatum, like pgrx's own by-value argument types.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for Regclass {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        // SAFETY: the argument is declared regclass.
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                "a regclass argument must not be NULL",
            )
        })
    }
}

/// A jsonb value returned as the datum PostgreSQL produced, without a round trip through
/// serde_json (which refuses values nested deeper than 128 levels or numbers beyond an
/// f64: F08). The datum must live until the row is returned; `export_tenant` keeps the
/// rows of one batch in a context of its own, reset when it fetches the next batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawJsonb(pub(crate) pg_sys::Datum);

impl IntoDatum for RawJsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

impl FromDatum for RawJsonb {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<RawJsonb> {
        (!is_null).then_some(RawJsonb(datum))
    }
}

sql_type!(RawJsonb, "jsonb");

// SAFETY: returns the datum as is; its memory outlives the call (see above).
unsafe impl pgrx::callconv::BoxRet for RawJsonb {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

/// A jsonb argument (or trigger column) as a serde_json value. pgrx's `JsonB` panics
/// (an internal error) on valid jsonb serde_json cannot hold: nested deeper than 128
/// levels, or a number beyond an f64 (F08). This converts in the function and raises
/// 54001 / 22003 instead, saying what it is.
#[derive(Debug, Clone)]
pub(crate) struct JsonArg(pub(crate) serde_json::Value);

impl JsonArg {
    /// Convert a non-null jsonb datum; `what` names it in the error.
    unsafe fn convert(datum: pg_sys::Datum, what: &str) -> JsonArg {
        // SAFETY: a jsonb datum; jsonb_out gives its text in the current context.
        let text: Option<&core::ffi::CStr> =
            unsafe { pgrx::direct_function_call(pg_sys::jsonb_out, &[Some(datum)]) };
        let text = text.and_then(|t| t.to_str().ok()).unwrap_or("null");
        match serde_json::from_str(text) {
            Ok(v) => JsonArg(v),
            Err(e) if e.to_string().contains("recursion limit") => raise(
                PgSqlErrorCode::ERRCODE_STATEMENT_TOO_COMPLEX,
                format!("{what} is nested deeper than 128 levels, more than vital_tenancy reads"),
            ),
            Err(e) if e.to_string().contains("number out of range") => raise(
                PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                format!("{what} holds a number beyond the range of double precision, more than vital_tenancy reads"),
            ),
            Err(e) => raise(
                PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
                format!("{what} cannot be read: {e}"),
            ),
        }
    }
}

impl FromDatum for JsonArg {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<JsonArg> {
        // SAFETY: a jsonb datum when not null.
        (!is_null).then(|| unsafe { JsonArg::convert(datum, "a jsonb value") })
    }
}

impl IntoDatum for JsonArg {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        pgrx::JsonB(self.0).into_datum()
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

sql_type!(JsonArg, "jsonb");

// SAFETY: unboxed through FromDatum.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for JsonArg {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        let what = format!("jsonb argument {}", arg.index() + 1);
        // SAFETY: the argument is declared jsonb.
        match unsafe { arg.unbox_arg_using_from_datum::<pg_sys::Datum>() } {
            Some(datum) => unsafe { JsonArg::convert(datum, &what) },
            None => raise(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                format!("{what} must not be NULL"),
            ),
        }
    }

    unsafe fn unbox_nullable_arg(
        arg: pgrx::callconv::Arg<'_, 'fcx>,
    ) -> pgrx::nullable::Nullable<Self> {
        let what = format!("jsonb argument {}", arg.index() + 1);
        // SAFETY: the argument is declared jsonb.
        match unsafe { arg.unbox_arg_using_from_datum::<pg_sys::Datum>() } {
            Some(datum) => {
                pgrx::nullable::Nullable::Valid(unsafe { JsonArg::convert(datum, &what) })
            }
            None => pgrx::nullable::Nullable::Null,
        }
    }
}

// SAFETY: converts the jsonb datum through FromDatum (trigger columns are read this way).
unsafe impl pgrx::datum::UnboxDatum for JsonArg {
    type As<'src>
        = JsonArg
    where
        Self: 'src;
    unsafe fn unbox<'src>(d: pgrx::datum::Datum<'src>) -> JsonArg
    where
        Self: 'src,
    {
        // SAFETY: a non-null jsonb datum.
        unsafe { JsonArg::from_datum(d.sans_lifetime(), false) }
            .unwrap_or(JsonArg(serde_json::Value::Null))
    }
}
