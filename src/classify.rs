//! Tenant classifiers as SQL functions, with configurable rules cached per backend.
//!
//! Rules live in `vital_tenancy.classification_rules` (one row per kind; no row means
//! the built-in rules). Each backend parses them once and keeps them until the table
//! changes: a trigger on the table sends a relcache invalidation for it, which every
//! backend receives (at commit, or at the next command in the writing backend) and
//! which marks the cache stale. A classifier call therefore costs no table read and no
//! JSON parse per row.

use crate::catalog::JsonArg;
use crate::errors::{raise, raise_full, OrRaise};
use crate::logic::classify::{
    default_rules, default_spec, domain_suite, parse_tier, tier_from_int, AgentRow, Decision, Kind,
    KnowledgeRow, PromptRow, RuleSet, RuleSetSpec,
};
use crate::logic::migrate::{rule_call, Classifier};
use crate::logic::tenants::{uuid_bytes, ALL};
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

const RULES_TABLE: &str = "vital_tenancy.classification_rules";

#[derive(Default)]
struct RulesCache {
    prompt: Option<Rc<RuleSet>>,
    knowledge: Option<Rc<RuleSet>>,
    agent: Option<Rc<RuleSet>>,
}

thread_local! {
    static CACHE: RefCell<Option<RulesCache>> = const { RefCell::new(None) };
    static RULES_OID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// Registered in `_PG_init`: drop the cache when the rules table's relcache entry is
/// invalidated (or every entry is). Runs inside invalidation processing, so it only
/// flips state and never touches the catalog.
#[pg_guard]
pub unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let ours = RULES_OID.with(|o| o.get());
    if relid == pg_sys::InvalidOid || relid == ours || ours == pg_sys::InvalidOid {
        CACHE.with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                *c = None;
            }
        });
    }
}

/// Register the cache invalidation callback. Called once per backend from `_PG_init`.
pub fn init() {
    // SAFETY: registering a callback with a static function pointer; the callback
    // only touches thread-local state of this (single-threaded) backend.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
    }
}

fn load_cache() -> RulesCache {
    let oid = rules_table_oid();
    let stored = Spi::connect(|c| {
        let mut stored: Vec<(String, JsonB)> = Vec::new();
        if oid.is_some() {
            for row in c
                .select(&format!("SELECT kind, rules FROM {RULES_TABLE}"), None, &[])
                .or_raise("reading the classification rules")
            {
                let kind: Option<String> = row.get(1).or_raise("reading a rule kind");
                let rules: Option<JsonB> = row.get(2).or_raise("reading rules");
                if let (Some(k), Some(r)) = (kind, rules) {
                    stored.push((k, r));
                }
            }
        }
        stored
    });
    RULES_OID.with(|o| o.set(oid.unwrap_or(pg_sys::InvalidOid)));
    let mut cache = RulesCache::default();
    for kind in Kind::CONFIGURABLE {
        let set = match stored.iter().find(|(k, _)| k == kind.as_str()) {
            Some((_, JsonB(v))) => match RuleSet::from_json(kind, v) {
                Ok((_, set)) => set,
                Err(e) => raise_full(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("stored {} rules are invalid: {e}", kind.as_str()),
                    None,
                    Some(format!("Fix them with vital_tenancy.set_rules('{0}', ...) or vital_tenancy.reset_rules('{0}').", kind.as_str())),
                ),
            },
            None => default_rules(kind),
        };
        let set = Some(Rc::new(set));
        match kind {
            Kind::Prompt => cache.prompt = set,
            Kind::Knowledge => cache.knowledge = set,
            Kind::Agent => cache.agent = set,
            Kind::Tool => {}
        }
    }
    cache
}

/// The current rules for `kind`, parsed at most once per change of the rules table.
fn current_rules(kind: Kind) -> Rc<RuleSet> {
    let cached = CACHE.with(|c| {
        c.borrow().as_ref().and_then(|c| match kind {
            Kind::Prompt => c.prompt.clone(),
            Kind::Knowledge => c.knowledge.clone(),
            Kind::Agent => c.agent.clone(),
            Kind::Tool => None,
        })
    });
    if let Some(r) = cached {
        return r;
    }
    if kind == Kind::Tool {
        return Rc::new(default_rules(Kind::Tool));
    }
    let fresh = load_cache();
    let out = match kind {
        Kind::Prompt => fresh.prompt.clone(),
        Kind::Knowledge => fresh.knowledge.clone(),
        _ => fresh.agent.clone(),
    };
    CACHE.with(|c| *c.borrow_mut() = Some(fresh));
    out.unwrap_or_else(|| Rc::new(default_rules(kind)))
}

fn to_uuid(bytes: [u8; 16]) -> Uuid {
    Uuid::from_bytes(bytes)
}

fn kind_arg(kind: &str, configurable_only: bool) -> Kind {
    match Kind::parse(kind) {
        Some(Kind::Tool) if configurable_only => raise_full(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "tool classification has no configurable rules".to_string(),
            Some("A tool keeps its tenant, or goes to Platform when it has none.".into()),
            None,
        ),
        Some(k) => k,
        None => raise_full(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown classification kind \"{kind}\""),
            None,
            Some(if configurable_only {
                "Use one of: prompt, knowledge, agent.".into()
            } else {
                "Use one of: prompt, knowledge, agent, tool.".into()
            }),
        ),
    }
}

// ---------------------------------------------------------------------------
// Reading rows given as jsonb (the whole row: `classify_prompt_tenant(to_jsonb(p))`).
// A missing key counts as NULL; a key of the wrong type is an ERROR naming it.

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(field: &str, want: &str, got: &Value) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!(
            "row field \"{field}\" must be {want}, not {}",
            json_type(got)
        ),
    )
}

fn as_object(row: &Value) -> &serde_json::Map<String, Value> {
    match row {
        Value::Object(m) => m,
        other => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("row must be a JSON object, not {}", json_type(other)),
        ),
    }
}

fn field_str<'a>(row: &'a serde_json::Map<String, Value>, field: &str) -> Option<&'a str> {
    match row.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => wrong_type(field, "a string or null", other),
    }
}

fn field_bool(row: &serde_json::Map<String, Value>, field: &str) -> Option<bool> {
    match row.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => wrong_type(field, "a boolean or null", other),
    }
}

fn field_uuid(row: &serde_json::Map<String, Value>, field: &str) -> Option<[u8; 16]> {
    field_str(row, field).map(|s| match uuid_bytes(s) {
        Some(b) => b,
        None => raise(
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            format!(
                "row field \"{field}\" is not a valid uuid: \"{}\"",
                truncate(s)
            ),
        ),
    })
}

fn field_str_array<'a>(
    row: &'a serde_json::Map<String, Value>,
    field: &str,
) -> Vec<Option<&'a str>> {
    match row.get(field) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Null => None,
                Value::String(s) => Some(s.as_str()),
                other => wrong_type(&format!("{field}[{i}]"), "a string or null", other),
            })
            .collect(),
        Some(other) => wrong_type(field, "an array of strings or null", other),
    }
}

/// A tier from JSON: an integer or a string in any accepted spelling; other numbers
/// and unrecognised strings are "no tier"; booleans, arrays and objects are errors.
fn field_tier(row: &serde_json::Map<String, Value>) -> Option<u8> {
    match row.get("tier") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_i64().and_then(tier_from_int),
        Some(Value::String(s)) => parse_tier(s),
        Some(other) => wrong_type("tier", "an integer, a string or null", other),
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Classify a row given as a JSON object. Returns the decision's tenant and label.
fn decide_json(kind: Kind, row: &Value) -> ([u8; 16], String) {
    let obj = as_object(row);
    match kind {
        Kind::Prompt => {
            let created_by = field_uuid(obj, "created_by");
            let set = current_rules(Kind::Prompt);
            let d = set.classify_prompt(&PromptRow {
                name: field_str(obj, "name"),
                domain: field_str(obj, "domain"),
                created_by_null: created_by.is_none(),
                is_system_prompt: field_bool(obj, "is_system_prompt"),
            });
            (d.tenant, d.label())
        }
        Kind::Knowledge => {
            let set = current_rules(Kind::Knowledge);
            let d = set.classify_knowledge(&KnowledgeRow {
                domain: field_str(obj, "domain"),
                tags: field_str_array(obj, "tags"),
            });
            (d.tenant, d.label())
        }
        Kind::Agent => {
            let set = current_rules(Kind::Agent);
            let d = set.classify_agent(&AgentRow {
                tier: field_tier(obj),
                knowledge_domains: field_str_array(obj, "knowledge_domains"),
            });
            (d.tenant, d.label())
        }
        Kind::Tool => match field_uuid(obj, "tenant_id") {
            Some(t) => (t, "own_tenant".into()),
            None => (
                default_rules(Kind::Tool).default_tenant,
                "shared_definition".into(),
            ),
        },
    }
}

fn decision_uuid(d: Decision<'_>) -> Uuid {
    to_uuid(d.tenant)
}

// ---------------------------------------------------------------------------
// Classifiers.

/// Tenant of a prompt: PRISM/pharma domains → Pharmaceuticals; digital-health domains
/// → Digital Health; system prompts (no creator, or flagged) → Platform; else Digital Health.
#[pg_extern(stable, parallel_restricted)]
fn classify_prompt_tenant(
    name: Option<&str>,
    domain: Option<&str>,
    created_by: Option<Uuid>,
    is_system_prompt: Option<bool>,
) -> Uuid {
    let set = current_rules(Kind::Prompt);
    decision_uuid(set.classify_prompt(&PromptRow {
        name,
        domain,
        created_by_null: created_by.is_none(),
        is_system_prompt,
    }))
}

/// Tenant of a prompt given as its whole row (`to_jsonb(p)`): missing keys are NULL.
#[pg_extern(stable, parallel_restricted, name = "classify_prompt_tenant")]
fn classify_prompt_tenant_row(row: Option<JsonArg>) -> Uuid {
    let row = row
        .map(|j| j.0)
        .unwrap_or(Value::Object(Default::default()));
    to_uuid(decide_json(Kind::Prompt, &row).0)
}

/// Tenant of a knowledge chunk.
#[pg_extern(stable, parallel_restricted)]
fn classify_knowledge_tenant(domain: Option<&str>, tags: Option<Array<&str>>) -> Uuid {
    let tags: Vec<Option<&str>> = tags
        .as_ref()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let set = current_rules(Kind::Knowledge);
    decision_uuid(set.classify_knowledge(&KnowledgeRow { domain, tags }))
}

/// Tenant of a knowledge chunk given as its whole row.
#[pg_extern(stable, parallel_restricted, name = "classify_knowledge_tenant")]
fn classify_knowledge_tenant_row(row: Option<JsonArg>) -> Uuid {
    let row = row
        .map(|j| j.0)
        .unwrap_or(Value::Object(Default::default()));
    to_uuid(decide_json(Kind::Knowledge, &row).0)
}

fn agent_tenant(tier: Option<u8>, knowledge_domains: Option<Array<&str>>) -> Uuid {
    let knowledge_domains: Vec<Option<&str>> = knowledge_domains
        .as_ref()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let set = current_rules(Kind::Agent);
    decision_uuid(set.classify_agent(&AgentRow {
        tier,
        knowledge_domains,
    }))
}

/// Tenant of an agent, tier given as text in any spelling (`'tier_2'`, `'Tier 2'`, `'2'`).
#[pg_extern(stable, parallel_restricted)]
fn classify_agent_tenant(tier: Option<&str>, knowledge_domains: Option<Array<&str>>) -> Uuid {
    agent_tenant(tier.and_then(parse_tier), knowledge_domains)
}

/// Tenant of an agent, tier as the real schema's integer.
#[pg_extern(stable, parallel_restricted, name = "classify_agent_tenant")]
fn classify_agent_tenant_int(tier: Option<i32>, knowledge_domains: Option<Array<&str>>) -> Uuid {
    agent_tenant(
        tier.and_then(|t| tier_from_int(i64::from(t))),
        knowledge_domains,
    )
}

/// Tenant of an agent given as its whole row.
#[pg_extern(stable, parallel_restricted, name = "classify_agent_tenant")]
fn classify_agent_tenant_row(row: Option<JsonArg>) -> Uuid {
    let row = row
        .map(|j| j.0)
        .unwrap_or(Value::Object(Default::default()));
    to_uuid(decide_json(Kind::Agent, &row).0)
}

/// Tenant of a tool: its own when it has one, else Platform (tool definitions are shared).
#[pg_extern(immutable, parallel_safe)]
fn classify_tool_tenant(tenant_id: Option<Uuid>) -> Uuid {
    tenant_id.unwrap_or_else(|| to_uuid(default_rules(Kind::Tool).default_tenant))
}

/// The suite a prompt domain belongs to (RULES™, TRIALS™, GUARD™, VALUE™, BRIDGE™), or NULL.
#[pg_extern(immutable, parallel_safe, strict)]
fn map_domain_to_suite(domain: &str) -> Option<&'static str> {
    domain_suite(domain)
}

/// The name of a tool category, for the new `tools.category` text column.
#[pg_extern(stable, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn tool_category_name(category_id: Option<Uuid>) -> Option<String> {
    let id = category_id?;
    Spi::connect(|c| {
        let exists: Option<pg_sys::Oid> = c
            .select(
                "SELECT pg_catalog.to_regclass('public.tool_categories')::oid",
                Some(1),
                &[],
            )
            .and_then(|t| t.first().get_one())
            .or_raise("looking up public.tool_categories");
        if exists.is_none() {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                "table public.tool_categories does not exist",
            );
        }
        let t = c
            .select(
                "SELECT name::text FROM public.tool_categories WHERE id = $1",
                Some(1),
                &[id.into()],
            )
            .or_raise("reading a tool category");
        if t.is_empty() {
            None
        } else {
            t.first()
                .get_one::<String>()
                .or_raise("reading a category name")
        }
    })
}

// ---------------------------------------------------------------------------
// Explaining and previewing.

/// Tenant names from the application's tenants table (falling back to the built-in
/// names when the table is unknown or lacks the tenant).
fn tenant_names() -> Vec<([u8; 16], String)> {
    let mut names: Vec<([u8; 16], String)> = ALL
        .iter()
        .filter_map(|t| uuid_bytes(t.id).map(|b| (b, t.name.to_string())))
        .collect();
    let rows: Vec<(Uuid, String)> = Spi::connect(|c| {
        let Some(table) = crate::catalog::tenants_table(c) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        // `table` is regclass output: a correctly quoted name.
        for row in c
            .select(&format!("SELECT id, name::text FROM {table}"), None, &[])
            .or_raise("reading tenant names")
        {
            if let (Ok(Some(id)), Ok(Some(name))) = (row.get::<Uuid>(1), row.get::<String>(2)) {
                out.push((id, name));
            }
        }
        out
    });
    for (id, name) in rows {
        let bytes = *id.as_bytes();
        match names.iter_mut().find(|(b, _)| *b == bytes) {
            Some(entry) => entry.1 = name,
            None => names.push((bytes, name)),
        }
    }
    names
}

fn name_of(names: &[([u8; 16], String)], t: [u8; 16]) -> Option<String> {
    names.iter().find(|(b, _)| *b == t).map(|(_, n)| n.clone())
}

/// Which tenant a row goes to and which rule decided, for audits and edge cases.
#[pg_extern(stable, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn explain_tenant(
    kind: &str,
    row: JsonArg,
) -> TableIterator<
    'static,
    (
        name!(tenant_id, Uuid),
        name!(tenant_name, Option<String>),
        name!(rule, String),
    ),
> {
    let kind = kind_arg(kind, false);
    let (tenant, rule) = decide_json(kind, &row.0);
    let names = tenant_names();
    TableIterator::once((to_uuid(tenant), name_of(&names, tenant), rule))
}

/// A dry run of a classifier over a table: how many rows each rule sends to each
/// tenant, with up to five sample ids. Reads the table, writes nothing.
// pgrx needs the name!() tuple spelled out in the signature (it rejects a type alias).
#[allow(clippy::type_complexity)]
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn preview_classification(
    kind: &str,
    tbl: crate::catalog::Regclass,
) -> TableIterator<
    'static,
    (
        name!(tenant_id, Uuid),
        name!(tenant_name, Option<String>),
        name!(rule, String),
        name!(row_count, i64),
        name!(sample_ids, Vec<String>),
    ),
> {
    let kind = kind_arg(kind, false);
    let mut groups: Vec<([u8; 16], String, i64, Vec<String>)> = Vec::new();
    let oid = tbl.oid();
    Spi::connect(|c| {
        let table: String = c
            .select(
                "SELECT $1::pg_catalog.regclass::pg_catalog.text",
                Some(1),
                &[oid.into()],
            )
            .and_then(|t| t.first().get_one())
            .or_raise("naming the table")
            .unwrap_or_default();
        // The arguments the backfill's expression gives the rule function (one
        // definition of what a classifier reads from a table), decided here per row
        // by the same rules, keeping the rule's name.
        let cls = match kind {
            Kind::Prompt => Classifier::Prompt,
            Kind::Knowledge => Classifier::Knowledge,
            Kind::Agent => Classifier::Agent,
            Kind::Tool => Classifier::Tool,
        };
        let info = crate::migrate::table_info(c, oid, &table);
        let call =
            rule_call(&cls, &info, "tenant_id").unwrap_or_else(|e| crate::migrate::plan_error(e));
        let int_tier = call.args.first().is_some_and(|a| a.ends_with("::integer"));
        let id = if info.column("id").is_some() {
            "t.\"id\"::text"
        } else {
            "NULL::text"
        };
        // `table` is regclass output (quoted, schema-qualified under this search_path);
        // the arguments are quoted column references.
        let sql = format!("SELECT {id}, {} FROM {table} t", call.args.join(", "));
        let rules = (kind != Kind::Tool).then(|| current_rules(kind));
        let mut cursor = c
            .try_open_cursor(sql.as_str(), &[])
            .or_raise("scanning the table");
        loop {
            let batch = cursor.fetch(1000).or_raise("fetching rows");
            if batch.is_empty() {
                break;
            }
            crate::errors::reading_rows(|| {
                for row in batch {
                    let id: Option<String> = row.get(1).or_raise("reading id");
                    let text = |i: usize| -> Option<String> {
                        row.get::<String>(i).or_raise("reading a column")
                    };
                    let list = |i: usize| -> Vec<Option<String>> {
                        row.get::<Vec<Option<String>>>(i)
                            .or_raise("reading a column")
                            .unwrap_or_default()
                    };
                    let (tenant, rule) = match (kind, rules.as_deref()) {
                        (Kind::Prompt, Some(set)) => {
                            let (name, domain) = (text(2), text(3));
                            let created_by: Option<Uuid> =
                                row.get(4).or_raise("reading created_by");
                            let d = set.classify_prompt(&PromptRow {
                                name: name.as_deref(),
                                domain: domain.as_deref(),
                                created_by_null: created_by.is_none(),
                                is_system_prompt: row
                                    .get::<bool>(5)
                                    .or_raise("reading is_system_prompt"),
                            });
                            (d.tenant, d.label())
                        }
                        (Kind::Knowledge, Some(set)) => {
                            let (domain, tags) = (text(2), list(3));
                            let d = set.classify_knowledge(&KnowledgeRow {
                                domain: domain.as_deref(),
                                tags: tags.iter().map(|t| t.as_deref()).collect(),
                            });
                            (d.tenant, d.label())
                        }
                        (Kind::Agent, Some(set)) => {
                            let tier = if int_tier {
                                row.get::<i32>(2)
                                    .or_raise("reading tier")
                                    .and_then(|t| tier_from_int(i64::from(t)))
                            } else {
                                text(2).as_deref().and_then(parse_tier)
                            };
                            let kd = list(3);
                            let d = set.classify_agent(&AgentRow {
                                tier,
                                knowledge_domains: kd.iter().map(|t| t.as_deref()).collect(),
                            });
                            (d.tenant, d.label())
                        }
                        _ => match row.get::<Uuid>(2).or_raise("reading the tenant") {
                            Some(t) => (*t.as_bytes(), "own_tenant".to_string()),
                            None => (
                                default_rules(Kind::Tool).default_tenant,
                                "shared_definition".into(),
                            ),
                        },
                    };
                    let g = match groups
                        .iter_mut()
                        .position(|(t, r, _, _)| *t == tenant && *r == rule)
                    {
                        Some(i) => &mut groups[i],
                        None => {
                            groups.push((tenant, rule, 0, Vec::new()));
                            let last = groups.len() - 1;
                            &mut groups[last]
                        }
                    };
                    g.2 += 1;
                    if g.3.len() < 5 {
                        if let Some(id) = id {
                            g.3.push(id);
                        }
                    }
                }
            });
            // Each fetch's rows live until SPI_finish unless freed: free them here, so
            // memory is one batch, not the table (F01).
            crate::errors::free_last_spi_result();
        }
    });
    let names = tenant_names();
    groups.sort_by(|a, b| (name_of(&names, a.0), &a.1).cmp(&(name_of(&names, b.0), &b.1)));
    TableIterator::new(
        groups
            .into_iter()
            .map(move |(t, rule, n, ids)| (to_uuid(t), name_of(&names, t), rule, n, ids)),
    )
}

// ---------------------------------------------------------------------------
// Configuring rules.

/// The rules in force for each configurable kind: stored ones, or the built-in ones.
#[pg_extern(stable, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn rules() -> TableIterator<
    'static,
    (
        name!(kind, String),
        name!(rules, JsonB),
        name!(is_default, bool),
    ),
> {
    let stored: Vec<(String, JsonB)> = Spi::connect(|c| {
        let mut out = Vec::new();
        for row in c
            .select(
                &format!("SELECT kind, rules FROM {RULES_TABLE} ORDER BY kind"),
                None,
                &[],
            )
            .or_raise("reading the classification rules")
        {
            if let (Ok(Some(k)), Ok(Some(r))) = (row.get::<String>(1), row.get::<JsonB>(2)) {
                out.push((k, r));
            }
        }
        out
    });
    let mut out = Vec::new();
    for kind in Kind::CONFIGURABLE {
        match stored.iter().find(|(k, _)| k == kind.as_str()) {
            Some((_, JsonB(v))) => out.push((kind.as_str().to_string(), JsonB(v.clone()), false)),
            None => {
                let v = serde_json::to_value(default_spec(kind)).unwrap_or(Value::Null);
                out.push((kind.as_str().to_string(), JsonB(v), true));
            }
        }
    }
    TableIterator::new(out)
}

/// Replace the rules of one kind. Validated before anything is written: an unknown
/// key, a wrong type or a tenant missing from the tenants table is an ERROR (22023)
/// naming the field, and the old rules stay.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn set_rules(kind: &str, rules: JsonArg) {
    let kind = kind_arg(kind, true);
    let spec = checked_rules(kind, &rules.0);
    let normalized = serde_json::to_value(&spec).unwrap_or(Value::Null);
    Spi::connect_mut(|c| {
        c.update(
            &format!(
                "INSERT INTO {RULES_TABLE} (kind, rules) VALUES ($1, $2)
                 ON CONFLICT (kind) DO UPDATE
                 SET rules = EXCLUDED.rules, updated_at = pg_catalog.now(), updated_by = CURRENT_USER"
            ),
            None,
            &[kind.as_str().into(), JsonB(normalized).into()],
        )
        .or_raise("storing the rules");
    });
}

/// Go back to the built-in rules of one kind.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn reset_rules(kind: &str) {
    let kind = kind_arg(kind, true);
    Spi::connect_mut(|c| {
        c.update(
            &format!("DELETE FROM {RULES_TABLE} WHERE kind = $1"),
            None,
            &[kind.as_str().into()],
        )
        .or_raise("resetting the rules");
    });
}

/// Every tenant a rule set names, with where it is named.
fn rule_tenants(spec: &RuleSetSpec) -> Vec<(String, String)> {
    let mut tenants: Vec<(String, String)> = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("rules[{i}].tenant"), r.tenant.clone()))
        .collect();
    tenants.push(("default_tenant".into(), spec.default_tenant.clone()));
    tenants
}

fn check_tenants_exist(tenants: &[(String, String)]) {
    let Some(table) = Spi::connect(crate::catalog::tenants_table) else {
        raise_full(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "no tenants table is known, so rule tenants cannot be checked".to_string(),
            None,
            Some("Run vital_tenancy.ensure_tenants() first.".into()),
        )
    };
    for (field, id) in tenants {
        let Some(bytes) = uuid_bytes(id) else {
            continue;
        };
        if !crate::context::tenant_exists(&table, bytes) {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid rules at \"{field}\": tenant {id} does not exist in {table}"),
            );
        }
    }
}

/// The rules table's OID, if it exists.
fn rules_table_oid() -> Option<pg_sys::Oid> {
    Spi::connect(|c| {
        crate::catalog::value::<pg_sys::Oid>(
            c,
            "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
            &[RULES_TABLE.into()],
        )
    })
}

/// Check one row written to the rules table (what its trigger calls, BEFORE ROW): the
/// kind is one with rules, the rules compile, and every tenant they name exists.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn check_rules_row(kind: Option<&str>, rules: Option<JsonArg>) {
    let kind = kind_arg(kind.unwrap_or(""), true);
    if let Some(JsonArg(v)) = rules {
        checked_rules(kind, &v);
    }
}

/// A rule set as `set_rules` and the rules table's trigger accept it: within the size
/// limits (54000), compiling (22023), every tenant it names existing (F15).
fn checked_rules(kind: Kind, v: &Value) -> crate::logic::classify::RuleSetSpec {
    if let Some(why) = crate::logic::classify::size_problem(v) {
        raise(PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED, why);
    }
    let (spec, _) = RuleSet::from_json(kind, v).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            e.to_string(),
        )
    });
    check_tenants_exist(&rule_tenants(&spec));
    spec
}

/// Tell every backend that its cached rules are stale (what the rules table's statement
/// trigger calls after INSERT, UPDATE, DELETE and TRUNCATE).
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn rules_changed() {
    if let Some(oid) = rules_table_oid() {
        // SAFETY: the rules table exists (to_regclass found it).
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(oid) };
    }
}

/// 0.1.0's trigger function on the rules table, kept for a database whose extension SQL
/// is still 0.1.0's while this library is installed; 0.2.0's is the PL/pgSQL function
/// of the same name in finalize.sql (called directly it gives PostgreSQL's own 0A000).
#[pg_trigger(sql = false)]
fn classification_rules_trigger<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    // Attached to any other table it would read columns that are not there (F13).
    let relid = trigger.relid().unwrap_or(pg_sys::InvalidOid);
    if rules_table_oid() != Some(relid) {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("classification_rules_trigger() belongs to {RULES_TABLE} only"),
        );
    }
    if matches!(trigger.level(), PgTriggerLevel::Statement) {
        rules_changed();
        return Ok(None);
    }
    let Some(new) = trigger.new() else {
        return Ok(trigger.old());
    };
    let read = |e: pgrx::datum::TryFromDatumError| -> ! {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("vital_tenancy internal error reading a classification_rules row: {e}"),
        )
    };
    let kind: Option<String> = new.get_by_name("kind").unwrap_or_else(|e| read(e));
    let rules: Option<JsonArg> = new.get_by_name("rules").unwrap_or_else(|e| read(e));
    check_rules_row(kind.as_deref(), rules);
    Ok(Some(new))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn tenant_of(sql: &str) -> String {
        Spi::get_one::<String>(&format!("SELECT ({sql})::text"))
            .unwrap()
            .unwrap()
    }

    const PHARMA: &str = "f7aa6fd4-0af9-4706-8b31-034f1f7accda";
    const DIGITAL: &str = "11111111-1111-1111-1111-111111111111";
    const PLATFORM: &str = "00000000-0000-0000-0000-000000000001";

    #[pg_test]
    fn built_in_rules_without_a_tenants_table() {
        assert_eq!(
            tenant_of("vital_tenancy.classify_prompt_tenant('PRISM x', NULL, NULL, NULL)"),
            PHARMA
        );
        assert_eq!(
            tenant_of("vital_tenancy.classify_knowledge_tenant('General Medicine', NULL)"),
            PLATFORM
        );
        assert_eq!(
            tenant_of("vital_tenancy.classify_agent_tenant('TIER-1', NULL)"),
            PLATFORM
        );
        assert_eq!(
            tenant_of("vital_tenancy.classify_agent_tenant(3, ARRAY['wearables'])"),
            DIGITAL
        );
    }

    #[pg_test]
    fn set_rules_takes_effect_in_the_same_transaction() {
        Spi::run("CREATE SCHEMA vt_c1").unwrap();
        Spi::run("SELECT * FROM vital_tenancy.ensure_tenants('vt_c1.tenants')").unwrap();
        assert_eq!(
            tenant_of("vital_tenancy.classify_knowledge_tenant('oncology', NULL)"),
            DIGITAL
        );
        Spi::run(&format!(
            r#"SELECT vital_tenancy.set_rules('knowledge', '{{"rules": [{{"name": "onc", "tenant": "{PHARMA}", "domain_in": ["Oncology"]}}], "default_tenant": "{PLATFORM}"}}')"#
        ))
        .unwrap();
        assert_eq!(
            tenant_of("vital_tenancy.classify_knowledge_tenant(' ONCOLOGY ', NULL)"),
            PHARMA
        );
        assert_eq!(
            tenant_of("vital_tenancy.classify_knowledge_tenant('digital_health', NULL)"),
            PLATFORM
        );
        Spi::run("SELECT vital_tenancy.reset_rules('knowledge')").unwrap();
        assert_eq!(
            tenant_of("vital_tenancy.classify_knowledge_tenant('digital_health', NULL)"),
            DIGITAL
        );
    }

    #[pg_test(error = "no tenants table is known, so rule tenants cannot be checked")]
    fn set_rules_needs_a_tenants_table() {
        Spi::run(&format!(
            r#"SELECT vital_tenancy.set_rules('knowledge', '{{"rules": [], "default_tenant": "{PLATFORM}"}}')"#
        ))
        .unwrap();
    }
}
