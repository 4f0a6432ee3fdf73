//! The three tenants of the VITAL migration and the rules for `ensure_tenants`'s
//! `extra` argument.

use serde_json::{Map, Value};
use std::fmt;

/// One of the tenants the migration needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantSpec {
    pub id: &'static str,
    pub name: &'static str,
    pub slug: &'static str,
}

pub const PLATFORM: TenantSpec = TenantSpec {
    id: "00000000-0000-0000-0000-000000000001",
    name: "Platform",
    slug: "platform",
};
pub const DIGITAL_HEALTH: TenantSpec = TenantSpec {
    id: "11111111-1111-1111-1111-111111111111",
    name: "Digital Health Startup",
    slug: "digital-health-startup",
};
pub const PHARMA: TenantSpec = TenantSpec {
    id: "f7aa6fd4-0af9-4706-8b31-034f1f7accda",
    name: "Pharmaceuticals",
    slug: "pharmaceuticals",
};

/// In the order `ensure_tenants` creates and reports them.
pub const ALL: [TenantSpec; 3] = [PLATFORM, DIGITAL_HEALTH, PHARMA];

/// The columns `ensure_tenants` always sets itself.
pub const RESERVED_COLUMNS: [&str; 3] = ["id", "name", "slug"];

/// Parse uuid text into its 16 bytes, accepting exactly what PostgreSQL's `uuid_in`
/// accepts (`string_to_uuid` in src/backend/utils/adt/uuid.c): 32 hex digits in
/// either case, an optional `-` after any group of four (not at the end), the whole
/// optionally in braces. No sign, no whitespace, no other separators.
pub fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    let mut src = text.as_bytes();
    let braces = src.first() == Some(&b'{');
    if braces {
        src = &src[1..];
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let (&[a, b], rest) = src.split_first_chunk::<2>()?;
        *byte = (hex(a)? << 4) | hex(b)?;
        src = rest;
        if src.first() == Some(&b'-') && i % 2 == 1 && i < 15 {
            src = &src[1..];
        }
    }
    if braces {
        src = src.strip_prefix(b"}")?;
    }
    src.is_empty().then_some(out)
}

/// The canonical text of a uuid (lower-case, hyphenated), as `uuid_out` writes it.
pub fn uuid_text(bytes: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Why `extra` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraError {
    NotAnObject(&'static str),
    TenantValueNotObject(String),
    Reserved {
        column: String,
        tenant: Option<String>,
    },
}

impl fmt::Display for ExtraError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtraError::NotAnObject(kind) => {
                write!(f, "extra must be a JSON object, not {kind}")
            }
            ExtraError::TenantValueNotObject(slug) => write!(
                f,
                "extra key \"{slug}\" names a tenant, so its value must be a JSON object of column values"
            ),
            ExtraError::Reserved { column, tenant: None } => write!(
                f,
                "extra may not set column \"{column}\": id, name and slug are not extra values"
            ),
            ExtraError::Reserved { column, tenant: Some(t) } => write!(
                f,
                "extra key \"{t}\" may not set column \"{column}\": id, name and slug are not extra values"
            ),
        }
    }
}

/// Column values for the rows `ensure_tenants` creates, resolved per tenant.
///
/// `extra` holds shared column values (`{"type": "industry"}`), per-tenant objects keyed
/// by slug (`{"pharmaceuticals": {"type": "industry"}}`), or both; a per-tenant value
/// overrides a shared one for that tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraPlan {
    shared: Map<String, Value>,
    per_tenant: Vec<(&'static str, Map<String, Value>)>,
}

impl ExtraPlan {
    pub fn parse(extra: &Value) -> Result<Self, ExtraError> {
        let obj = match extra {
            Value::Object(m) => m,
            Value::Null => return Err(ExtraError::NotAnObject("null")),
            Value::Bool(_) => return Err(ExtraError::NotAnObject("a boolean")),
            Value::Number(_) => return Err(ExtraError::NotAnObject("a number")),
            Value::String(_) => return Err(ExtraError::NotAnObject("a string")),
            Value::Array(_) => return Err(ExtraError::NotAnObject("an array")),
        };
        let mut shared = Map::new();
        let mut per_tenant = Vec::new();
        for (key, value) in obj {
            if let Some(spec) = ALL.iter().find(|t| t.slug == key) {
                let Value::Object(cols) = value else {
                    return Err(ExtraError::TenantValueNotObject(key.clone()));
                };
                if let Some(col) = cols.keys().find(|c| RESERVED_COLUMNS.contains(&c.as_str())) {
                    return Err(ExtraError::Reserved {
                        column: col.clone(),
                        tenant: Some(key.clone()),
                    });
                }
                per_tenant.push((spec.slug, cols.clone()));
            } else if RESERVED_COLUMNS.contains(&key.as_str()) {
                return Err(ExtraError::Reserved {
                    column: key.clone(),
                    tenant: None,
                });
            } else {
                shared.insert(key.clone(), value.clone());
            }
        }
        Ok(ExtraPlan { shared, per_tenant })
    }

    /// The plan for one new tenant (`add_tenant`): `extra` is that tenant's column
    /// values only (no per-tenant keys).
    pub fn single(extra: &Value) -> Result<Self, ExtraError> {
        let Value::Object(obj) = extra else {
            return Self::parse(extra);
        };
        if let Some(col) = obj.keys().find(|c| RESERVED_COLUMNS.contains(&c.as_str())) {
            return Err(ExtraError::Reserved {
                column: col.clone(),
                tenant: None,
            });
        }
        Ok(ExtraPlan {
            shared: obj.clone(),
            per_tenant: Vec::new(),
        })
    }

    /// The row of a new tenant: id, name and slug plus the shared column values.
    pub fn row_for_new(&self, id: &str, name: &str, slug: &str) -> Map<String, Value> {
        let mut row = self.shared.clone();
        row.insert("id".into(), Value::String(id.into()));
        row.insert("name".into(), Value::String(name.into()));
        row.insert("slug".into(), Value::String(slug.into()));
        row
    }

    /// Every column name `extra` mentions, for checking against the catalog.
    pub fn columns(&self) -> Vec<String> {
        let mut cols: Vec<String> = self.shared.keys().cloned().collect();
        for (_, m) in &self.per_tenant {
            cols.extend(m.keys().cloned());
        }
        cols.sort();
        cols.dedup();
        cols
    }

    /// The full row `ensure_tenants` inserts for `spec`: id, name and slug plus the
    /// shared and per-tenant column values.
    pub fn row_for(&self, spec: &TenantSpec) -> Map<String, Value> {
        let mut row = self.shared.clone();
        if let Some((_, m)) = self.per_tenant.iter().find(|(slug, _)| *slug == spec.slug) {
            for (k, v) in m {
                row.insert(k.clone(), v.clone());
            }
        }
        row.insert("id".into(), Value::String(spec.id.into()));
        row.insert("name".into(), Value::String(spec.name.into()));
        row.insert("slug".into(), Value::String(spec.slug.into()));
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_new_tenant_takes_flat_values_and_never_id_name_or_slug() {
        let p = ExtraPlan::single(&json!({"type": "client", "pharmaceuticals": {"x": 1}})).unwrap();
        let row = p.row_for_new("u", "N", "s");
        assert_eq!(row["type"], json!("client"));
        // A key that is another tenant's slug is just a column name here.
        assert_eq!(row["pharmaceuticals"], json!({"x": 1}));
        assert_eq!(row["slug"], json!("s"));
        assert!(matches!(
            ExtraPlan::single(&json!({"slug": "x"})),
            Err(ExtraError::Reserved { .. })
        ));
        assert!(matches!(
            ExtraPlan::single(&json!([1])),
            Err(ExtraError::NotAnObject("an array"))
        ));
    }

    #[test]
    fn ids_are_valid_uuids_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for t in ALL {
            assert!(uuid_bytes(t.id).is_some(), "{}", t.id);
            assert!(seen.insert(t.slug));
        }
        assert_eq!(uuid_bytes("not-a-uuid"), None);
        // What PostgreSQL's uuid_in accepts, and what it refuses (F14).
        let one = Some(*uuid::Uuid::from_u128(1).as_bytes());
        for ok in [
            "00000000-0000-0000-0000-000000000001",
            "{00000000-0000-0000-0000-000000000001}",
            "00000000000000000000000000000001",
            "0000-0000-0000-0000-0000-0000-0000-0001",
            "{0000000000000000000000000000-0001}",
        ] {
            assert_eq!(uuid_bytes(ok), one, "{ok}");
        }
        assert_eq!(
            uuid_bytes("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11").map(|b| uuid_text(&b)),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
        );
        for bad in [
            "+0000000-0000-0000-0000-000000000001",
            "----00000000000000000000000000000001",
            "00000000-0000-0000-0000-000000000001-",
            "0-0000000-0000-0000-0000-000000000001",
            "{00000000-0000-0000-0000-000000000001",
            "00000000-0000-0000-0000-000000000001}",
            " 00000000-0000-0000-0000-000000000001",
            "00000000-0000-0000-0000-00000000001",
            "00000000-0000-0000-0000-0000000000011",
            "00000000--0000-0000-0000-000000000001",
            "urn:uuid:00000000-0000-0000-0000-000000000001",
            "",
            "{}",
        ] {
            assert_eq!(uuid_bytes(bad), None, "{bad}");
        }
        assert_eq!(uuid_bytes("00000000-0000-0000-0000-00000000000g"), None);
    }

    #[test]
    fn shared_extra_applies_to_every_tenant() {
        let plan = ExtraPlan::parse(&json!({"type": "industry"})).unwrap();
        for t in ALL {
            let row = plan.row_for(&t);
            assert_eq!(row["type"], json!("industry"));
            assert_eq!(row["slug"], json!(t.slug));
        }
        assert_eq!(plan.columns(), vec!["type".to_string()]);
    }

    #[test]
    fn per_tenant_extra_overrides_shared() {
        let plan = ExtraPlan::parse(&json!({
            "type": "industry",
            "platform": {"type": "platform", "status": "active"}
        }))
        .unwrap();
        assert_eq!(plan.row_for(&PLATFORM)["type"], json!("platform"));
        assert_eq!(plan.row_for(&PHARMA)["type"], json!("industry"));
        assert!(!plan.row_for(&PHARMA).contains_key("status"));
        assert_eq!(
            plan.columns(),
            vec!["status".to_string(), "type".to_string()]
        );
    }

    #[test]
    fn refuses_bad_extra() {
        assert_eq!(
            ExtraPlan::parse(&json!([1])),
            Err(ExtraError::NotAnObject("an array"))
        );
        assert_eq!(
            ExtraPlan::parse(&json!("x")),
            Err(ExtraError::NotAnObject("a string"))
        );
        assert_eq!(
            ExtraPlan::parse(&json!({"pharmaceuticals": "industry"})),
            Err(ExtraError::TenantValueNotObject("pharmaceuticals".into()))
        );
        assert_eq!(
            ExtraPlan::parse(&json!({"id": "x"})),
            Err(ExtraError::Reserved {
                column: "id".into(),
                tenant: None
            })
        );
        assert_eq!(
            ExtraPlan::parse(&json!({"platform": {"slug": "p"}})),
            Err(ExtraError::Reserved {
                column: "slug".into(),
                tenant: Some("platform".into())
            })
        );
        assert!(ExtraError::NotAnObject("null")
            .to_string()
            .contains("extra"));
    }

    #[test]
    fn empty_extra_is_just_the_identity_columns() {
        let plan = ExtraPlan::parse(&json!({})).unwrap();
        let row = plan.row_for(&DIGITAL_HEALTH);
        assert_eq!(row.len(), 3);
        assert_eq!(row["id"], json!(DIGITAL_HEALTH.id));
    }
}
