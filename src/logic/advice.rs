//! Workload-driven index advice, the decisions: which indexes could serve what one
//! statement asks of one tenant table, how the candidates of many statements merge
//! into few indexes, when a hypothetical index counts as verified, and what the
//! plans say about an index lost under RLS. The server side (`src/advice.rs`) reads
//! the statements' parse trees and plans into these structs.

use crate::logic::ident::quote_ident;
use crate::logic::migrate::derived_name;

/// One column of an index key. `ordered`: it serves an ORDER BY, so its direction
/// matters; the others serve equality or a range and any direction does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    pub name: String,
    pub desc: bool,
    pub nulls_first: bool,
    pub ordered: bool,
}

impl KeyColumn {
    pub fn plain(name: &str) -> KeyColumn {
        KeyColumn {
            name: name.to_string(),
            desc: false,
            nulls_first: false,
            ordered: false,
        }
    }

    fn render(&self) -> String {
        let mut s = quote_ident(&self.name);
        match (self.desc, self.nulls_first) {
            (true, true) => s.push_str(" DESC"),
            (true, false) => s.push_str(" DESC NULLS LAST"),
            (false, true) => s.push_str(" NULLS FIRST"),
            (false, false) => {}
        }
        s
    }

    /// Whether an index column `other` serves this one: same column, and for an
    /// ORDER BY column the same direction (`reversed`: the whole ORDER BY read backwards).
    fn served_by(&self, other: &KeyColumn, reversed: bool) -> bool {
        self.name == other.name
            && (!self.ordered
                || (self.desc != reversed) == other.desc
                    && (self.nulls_first != reversed) == other.nulls_first)
    }
}

/// What one statement asks of one tenant table, read from its parse tree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Use {
    /// Columns compared with `=` (or `= ANY`) to a parameter or constant.
    pub equal: Vec<String>,
    /// Columns compared with `<`, `<=`, `>`, `>=`.
    pub range: Vec<String>,
    /// The statement's ORDER BY, when every key is a plain column of this table.
    pub order: Vec<KeyColumn>,
    /// Whether the ORDER BY is cut short by a LIMIT.
    pub limited: bool,
    /// Conditions without parameters that every execution applies (`"deleted_at" IS
    /// NULL`, a boolean column), rendered as SQL: a partial index's predicate.
    pub partial: Vec<String>,
}

/// The shape of a candidate index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `(tenant, equality…, order or range)`: each tenant's rows together.
    TenantLeading,
    /// `(equality…, order…, tenant)`: the ORDER BY … LIMIT read in order, the tenant
    /// checked from the index; for statements that read the newest rows of every
    /// tenant they see (a tenant-leading index cannot return rows in order across
    /// `tenant_id = ANY (…)`).
    OrderLeading,
}

/// A candidate index on one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub key: Vec<KeyColumn>,
    pub partial: Vec<String>,
    pub shape: Shape,
}

fn push_new(key: &mut Vec<KeyColumn>, col: KeyColumn) {
    if !key.iter().any(|k| k.name == col.name) {
        key.push(col);
    }
}

/// The candidate indexes that could serve `u` on a table whose tenant column is
/// `tenant`: always the tenant-leading one; for an ORDER BY … LIMIT also the
/// order-leading one.
pub fn candidates(tenant: &str, u: &Use) -> Vec<Candidate> {
    let mut equal: Vec<&String> = u.equal.iter().filter(|c| c.as_str() != tenant).collect();
    equal.sort();
    equal.dedup();
    let mut partial = u.partial.clone();
    partial.sort();
    partial.dedup();
    let mut lead = vec![KeyColumn::plain(tenant)];
    for c in &equal {
        push_new(&mut lead, KeyColumn::plain(c));
    }
    if !u.order.is_empty() {
        for k in &u.order {
            push_new(&mut lead, k.clone());
        }
    } else if let Some(r) = u.range.first() {
        push_new(&mut lead, KeyColumn::plain(r));
    }
    let mut out = vec![Candidate {
        key: lead,
        partial: partial.clone(),
        shape: Shape::TenantLeading,
    }];
    if u.limited && !u.order.is_empty() {
        let mut key = Vec::new();
        for c in &equal {
            push_new(&mut key, KeyColumn::plain(c));
        }
        for k in &u.order {
            if k.name != tenant {
                push_new(&mut key, k.clone());
            }
        }
        push_new(&mut key, KeyColumn::plain(tenant));
        out.push(Candidate {
            key,
            partial,
            shape: Shape::OrderLeading,
        });
    }
    out
}

/// Whether index `big` serves everything candidate `small` would: same predicate and
/// `small`'s key a prefix of `big`'s (its ORDER BY columns in the same direction, or
/// all reversed).
pub fn subsumes(big: &Candidate, small: &Candidate) -> bool {
    if big.partial != small.partial || small.key.len() > big.key.len() {
        return false;
    }
    [false, true].iter().any(|&reversed| {
        small
            .key
            .iter()
            .zip(&big.key)
            .all(|(s, b)| s.served_by(b, reversed))
    })
}

/// Merge the chosen candidates of one table: identical or subsumed ones fold into the
/// longest that serves them. Returns (kept candidate, indexes of the inputs it serves).
pub fn merge(chosen: &[Candidate]) -> Vec<(Candidate, Vec<usize>)> {
    let mut order: Vec<usize> = (0..chosen.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(chosen[i].key.len()));
    let mut kept: Vec<(Candidate, Vec<usize>)> = Vec::new();
    for i in order {
        match kept.iter_mut().find(|(k, _)| subsumes(k, &chosen[i])) {
            Some((_, served)) => served.push(i),
            None => kept.push((chosen[i].clone(), vec![i])),
        }
    }
    for (_, served) in kept.iter_mut() {
        served.sort_unstable();
    }
    kept
}

/// A candidate chosen for one table, with the statements (their positions) it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    pub table: u32,
    pub cand: Candidate,
    pub statements: Vec<usize>,
}

/// Merge the candidates chosen over all tables: per table, those one index serves
/// fold into it (`merge`), with the union of their statements. Tables in OID order.
pub fn merge_all(chosen: &[Chosen]) -> Vec<Chosen> {
    let mut tables: Vec<u32> = chosen.iter().map(|x| x.table).collect();
    tables.sort_unstable();
    tables.dedup();
    let mut out = Vec::new();
    for table in tables {
        let of: Vec<&Chosen> = chosen.iter().filter(|x| x.table == table).collect();
        let cands: Vec<Candidate> = of.iter().map(|x| x.cand.clone()).collect();
        for (cand, served) in merge(&cands) {
            let mut statements: Vec<usize> = served
                .iter()
                .flat_map(|&s| of[s].statements.clone())
                .collect();
            statements.sort_unstable();
            statements.dedup();
            out.push(Chosen {
                table,
                cand,
                statements,
            });
        }
    }
    out
}

/// `(key…) [WHERE …]`, as `CREATE INDEX` takes it after the table.
pub fn definition(c: &Candidate) -> String {
    let cols: Vec<String> = c.key.iter().map(KeyColumn::render).collect();
    let mut s = format!("({})", cols.join(", "));
    if !c.partial.is_empty() {
        s.push_str(" WHERE ");
        s.push_str(&c.partial.join(" AND "));
    }
    s
}

/// The index's name: the table and its columns, then `_vt_idx` (a partial index's
/// name says so), within PostgreSQL's 63 bytes.
pub fn index_name(relname: &str, c: &Candidate) -> String {
    let cols: Vec<&str> = c.key.iter().map(|k| k.name.as_str()).collect();
    let suffix = if c.partial.is_empty() {
        "vt_idx"
    } else {
        "vt_partial_idx"
    };
    derived_name(relname, &cols.join("_"), suffix)
}

/// The statement that builds it online; `table` is the quoted, qualified table.
pub fn create_ddl(table: &str, name: &str, c: &Candidate) -> String {
    format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {table} {}",
        quote_ident(name),
        definition(c)
    )
}

/// Tables of at most this many pages (64 kB with the default 8 kB blocks) are read
/// whole by PostgreSQL because that is cheaper than an index descent: their sequential
/// scans are neither advised on nor counted against index coverage.
pub const SMALL_TABLE_PAGES: i64 = 8;

/// Whether a sequential scan of a table of `pages` pages is one the advice counts.
pub fn scan_counts(pages: i64) -> bool {
    pages > SMALL_TABLE_PAGES
}

/// The few facts of a plan the advice needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanFacts {
    pub total_cost: f64,
    /// Tenant tables read by a sequential scan (their OIDs).
    pub seq_scans: Vec<u32>,
    /// Sort nodes (full or incremental).
    pub sorts: usize,
    /// Indexes the plan reads (their OIDs).
    pub indexes: Vec<u32>,
    /// Of those, the ones searched with an index condition (not read whole).
    pub searched: Vec<u32>,
}

/// Whether a statement's plan leaves work an index could do on `table`: a
/// sequential scan of it, or a sort of rows of a statement that orders by it.
pub fn needs_help(facts: &PlanFacts, table: u32, orders: bool) -> bool {
    facts.seq_scans.contains(&table) || (orders && facts.sorts > 0)
}

/// A hypothetical index counts as verified when the plan uses it and costs at least
/// 10% less.
pub fn verified(before: &PlanFacts, after: &PlanFacts, index: u32) -> bool {
    after.indexes.contains(&index) && after.total_cost < before.total_cost * 0.9
}

/// The indexes of a table that the plan without RLS searches with a condition and the
/// plan under RLS does not use: what the policies cost that statement. `of_table`:
/// the table's indexes.
pub fn lost_under_rls(without: &PlanFacts, with: &PlanFacts, of_table: &[u32]) -> Vec<u32> {
    let mut lost: Vec<u32> = without
        .searched
        .iter()
        .filter(|i| of_table.contains(i) && !with.indexes.contains(i))
        .copied()
        .collect();
    lost.sort_unstable();
    lost.dedup();
    lost
}

/// The share, in percent rounded to two places, of the application's calls on
/// tenant tables whose plan reads no tenant table sequentially; `None` without calls.
pub fn coverage(calls: &[(i64, bool)]) -> Option<f64> {
    let total: i64 = calls.iter().map(|(n, _)| n).sum();
    if total <= 0 {
        return None;
    }
    let covered: i64 = calls.iter().filter(|(_, ok)| *ok).map(|(n, _)| n).sum();
    Some((10000.0 * covered as f64 / total as f64).round() / 100.0)
}

/// The facts of a plan from `EXPLAIN (FORMAT JSON, VERBOSE)` (how plans with hypopg's
/// hypothetical indexes are read: hypopg shows them to EXPLAIN only). `relations`:
/// (schema, table) to OID of the tenant tables; `indexes`: index name to OID (a
/// hypothetical index is named `<OID>…`).
pub fn explain_facts(
    explain: &serde_json::Value,
    relations: &std::collections::HashMap<(String, String), u32>,
    indexes: &std::collections::HashMap<String, u32>,
) -> PlanFacts {
    let top = &explain[0]["Plan"];
    let mut f = PlanFacts {
        total_cost: top["Total Cost"].as_f64().unwrap_or(0.0),
        ..PlanFacts::default()
    };
    let mut stack = vec![top];
    while let Some(node) = stack.pop() {
        let text = |k: &str| node[k].as_str().unwrap_or_default().to_string();
        match node["Node Type"].as_str().unwrap_or_default() {
            "Seq Scan" => {
                if let Some(oid) = relations.get(&(text("Schema"), text("Relation Name"))) {
                    f.seq_scans.push(*oid);
                }
            }
            "Index Scan" | "Index Only Scan" | "Bitmap Index Scan" => {
                let name = text("Index Name");
                let hypothetical = name
                    .strip_prefix('<')
                    .and_then(|r| r.split_once('>'))
                    .and_then(|(n, _)| n.parse::<u32>().ok());
                if let Some(oid) = hypothetical.or_else(|| indexes.get(&name).copied()) {
                    f.indexes.push(oid);
                    if !node["Index Cond"].is_null() {
                        f.searched.push(oid);
                    }
                }
            }
            "Sort" | "Incremental Sort" => f.sorts += 1,
            _ => {}
        }
        if let Some(children) = node["Plans"].as_array() {
            stack.extend(children.iter());
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ordered(name: &str, desc: bool) -> KeyColumn {
        KeyColumn {
            name: name.into(),
            desc,
            nulls_first: desc,
            ordered: true,
        }
    }

    fn page() -> Use {
        // status = $1 ORDER BY created_at DESC LIMIT $2
        Use {
            equal: vec!["status".into()],
            order: vec![ordered("created_at", true)],
            limited: true,
            ..Use::default()
        }
    }

    #[test]
    fn tenant_leading_then_order_leading_for_a_page() {
        let c = candidates("tenant_id", &page());
        assert_eq!(c.len(), 2);
        assert_eq!(
            definition(&c[0]),
            "(\"tenant_id\", \"status\", \"created_at\" DESC)"
        );
        assert_eq!(c[0].shape, Shape::TenantLeading);
        assert_eq!(
            definition(&c[1]),
            "(\"status\", \"created_at\" DESC, \"tenant_id\")"
        );
        assert_eq!(c[1].shape, Shape::OrderLeading);
    }

    #[test]
    fn a_count_gets_only_the_tenant_leading_index_and_merges_into_the_page_index() {
        let count = Use {
            equal: vec!["status".into(), "status".into(), "tenant_id".into()],
            ..Use::default()
        };
        let c = candidates("tenant_id", &count);
        assert_eq!(c.len(), 1);
        assert_eq!(definition(&c[0]), "(\"tenant_id\", \"status\")");
        let page = candidates("tenant_id", &page()).remove(0);
        let merged = merge(&[c[0].clone(), page.clone()]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].0, page);
        assert_eq!(merged[0].1, vec![0, 1]);
    }

    #[test]
    fn merging_over_tables_unions_the_statements() {
        let page = candidates("tenant_id", &page()).remove(0);
        let count = candidates(
            "tenant_id",
            &Use {
                equal: vec!["status".into()],
                ..Use::default()
            },
        )
        .remove(0);
        let chosen = vec![
            Chosen {
                table: 9,
                cand: count.clone(),
                statements: vec![2],
            },
            Chosen {
                table: 7,
                cand: count.clone(),
                statements: vec![0],
            },
            Chosen {
                table: 9,
                cand: page.clone(),
                statements: vec![1, 2],
            },
        ];
        let merged = merge_all(&chosen);
        assert_eq!(merged.len(), 2);
        assert_eq!(
            (merged[0].table, merged[0].statements.clone()),
            (7, vec![0])
        );
        assert_eq!(merged[1].table, 9);
        assert_eq!(
            merged[1].cand, page,
            "the page's index serves the count too"
        );
        assert_eq!(merged[1].statements, vec![1, 2]);
    }

    #[test]
    fn order_direction_matters_but_a_backward_scan_serves() {
        let desc = Candidate {
            key: vec![KeyColumn::plain("tenant_id"), ordered("created_at", true)],
            partial: vec![],
            shape: Shape::TenantLeading,
        };
        let mut asc = desc.clone();
        asc.key[1] = ordered("created_at", false);
        assert!(subsumes(&desc, &asc), "read backwards");
        let mut mixed = desc.clone();
        mixed.key[1].nulls_first = false; // DESC NULLS LAST
        assert!(!subsumes(&desc, &mixed));
        assert_eq!(
            definition(&mixed),
            "(\"tenant_id\", \"created_at\" DESC NULLS LAST)"
        );
        let mut other_pred = desc.clone();
        other_pred.partial = vec!["deleted_at IS NULL".into()];
        assert!(!subsumes(&desc, &other_pred), "another predicate");
        assert_eq!(merge(&[desc.clone(), mixed.clone()]).len(), 2);
    }

    #[test]
    fn range_column_and_partial_predicate() {
        let u = Use {
            equal: vec!["domain".into()],
            range: vec!["created_at".into()],
            partial: vec!["deleted_at IS NULL".into(), "deleted_at IS NULL".into()],
            ..Use::default()
        };
        let c = candidates("tenant_id", &u);
        assert_eq!(
            definition(&c[0]),
            "(\"tenant_id\", \"domain\", \"created_at\") WHERE deleted_at IS NULL"
        );
        assert_eq!(
            index_name("knowledge_base", &c[0]),
            "knowledge_base_tenant_id_domain_created_at_vt_partial_idx"
        );
        assert_eq!(
            create_ddl("public.knowledge_base", "kb_idx", &c[0]),
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS \"kb_idx\" ON public.knowledge_base (\"tenant_id\", \"domain\", \"created_at\") WHERE deleted_at IS NULL"
        );
    }

    #[test]
    fn names_fit() {
        let c = Candidate {
            key: vec![
                KeyColumn::plain("tenant_id"),
                KeyColumn::plain("a_rather_long_column_name"),
                KeyColumn::plain("another_long_column"),
            ],
            partial: vec![],
            shape: Shape::TenantLeading,
        };
        let n = index_name("organizational_roles", &c);
        assert!(n.len() <= 63, "{n}");
        assert!(n.ends_with("_vt_idx"), "{n}");
        assert_eq!(
            definition(&Candidate {
                key: vec![KeyColumn::plain("Tenant")],
                ..c
            }),
            "(\"Tenant\")"
        );
    }

    #[test]
    fn plan_decisions() {
        let before = PlanFacts {
            total_cost: 1000.0,
            seq_scans: vec![41],
            sorts: 1,
            ..PlanFacts::default()
        };
        assert!(needs_help(&before, 41, false));
        assert!(!needs_help(&before, 42, false));
        assert!(needs_help(&before, 42, true), "a sort");
        let after = PlanFacts {
            total_cost: 120.0,
            indexes: vec![7],
            ..PlanFacts::default()
        };
        assert!(verified(&before, &after, 7));
        assert!(!verified(&before, &after, 8), "another index");
        let barely = PlanFacts {
            total_cost: 950.0,
            indexes: vec![7],
            ..PlanFacts::default()
        };
        assert!(!verified(&before, &barely, 7), "less than 10% cheaper");
        let without = PlanFacts {
            indexes: vec![3, 4, 9, 5],
            searched: vec![3, 4, 9],
            ..PlanFacts::default()
        };
        let with = PlanFacts {
            indexes: vec![4],
            ..PlanFacts::default()
        };
        assert_eq!(lost_under_rls(&without, &with, &[3, 4]), vec![3]);
    }

    #[test]
    fn small_tables_are_read_whole() {
        assert!(!scan_counts(0));
        assert!(!scan_counts(SMALL_TABLE_PAGES));
        assert!(scan_counts(SMALL_TABLE_PAGES + 1));
    }

    #[test]
    fn coverage_weighs_calls() {
        assert_eq!(coverage(&[]), None);
        assert_eq!(coverage(&[(0, false)]), None);
        assert_eq!(coverage(&[(300, true), (100, false)]), Some(75.0));
        assert_eq!(coverage(&[(2, true), (1, false)]), Some(66.67));
    }

    #[test]
    fn facts_from_explain_json() {
        let plan: serde_json::Value = serde_json::from_str(
            r#"[{"Plan": {"Node Type": "Aggregate", "Total Cost": 1927.38, "Plans": [
                 {"Node Type": "Index Only Scan", "Index Name": "<13557>btree_prompts_tenant_id_status", "Index Cond": "(x = $1)"},
                 {"Node Type": "Limit", "Plans": [{"Node Type": "Sort", "Plans": [
                    {"Node Type": "Seq Scan", "Schema": "public", "Relation Name": "prompts"},
                    {"Node Type": "Seq Scan", "Schema": "other", "Relation Name": "prompts"},
                    {"Node Type": "Bitmap Index Scan", "Index Name": "idx_prompts_name"}]}]}]}}]"#,
        )
        .unwrap();
        let relations = [(("public".to_string(), "prompts".to_string()), 41)]
            .into_iter()
            .collect();
        let indexes = [("idx_prompts_name".to_string(), 77)].into_iter().collect();
        let f = explain_facts(&plan, &relations, &indexes);
        assert_eq!(f.total_cost, 1927.38);
        assert_eq!(f.seq_scans, vec![41]);
        assert_eq!(f.sorts, 1);
        let mut ix = f.indexes.clone();
        ix.sort_unstable();
        assert_eq!(ix, vec![77, 13557]);
        assert_eq!(
            f.searched,
            vec![13557],
            "the bitmap scan has no condition here"
        );
    }
}
