//! Tenant lifecycle: what each registry status lets a tenant do.

/// The access a tenant's status gives its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads its rows (and Platform's) and writes its own.
    ReadWrite,
    /// Reads as before; every write is refused by the policies.
    ReadOnly,
    /// No context: nothing visible, nothing writable.
    NoAccess,
}

impl Access {
    /// The spelling stored in `vital_tenancy.tenant_statuses.access`.
    pub fn parse(s: &str) -> Option<Access> {
        match s {
            "read-write" => Some(Access::ReadWrite),
            "read-only" => Some(Access::ReadOnly),
            "none" => Some(Access::NoAccess),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadWrite => "read-write",
            Access::ReadOnly => "read-only",
            Access::NoAccess => "none",
        }
    }

    pub fn reads(self) -> bool {
        self != Access::NoAccess
    }

    pub fn writes(self) -> bool {
        self == Access::ReadWrite
    }
}

/// The built-in meaning of the statuses the VITAL tenants table allows (its CHECK
/// constraint): `active` works; `suspended` and `archived` are read-only (the tenant
/// can still see and export its data); `pending` (not yet onboarded) and `deleted`
/// get nothing.
pub const BUILTIN_STATUSES: [(&str, Access); 5] = [
    ("active", Access::ReadWrite),
    ("suspended", Access::ReadOnly),
    ("archived", Access::ReadOnly),
    ("pending", Access::NoAccess),
    ("deleted", Access::NoAccess),
];

/// The access of a status: the DBA's override first (`tenant_statuses`), else the
/// built-in meaning; a NULL status or one neither knows gets nothing (fail closed;
/// `health()` names such tenants).
pub fn access_for(status: Option<&str>, override_access: Option<&str>) -> Access {
    if let Some(a) = override_access.and_then(Access::parse) {
        return a;
    }
    let Some(status) = status else {
        return Access::NoAccess;
    };
    BUILTIN_STATUSES
        .iter()
        .find(|(s, _)| *s == status)
        .map(|(_, a)| *a)
        .unwrap_or(Access::NoAccess)
}

/// Batches of a tenant's deletion: the tables in an order that deletes children
/// before parents. `edges` are (child, parent) pairs between the given tables; a
/// self-reference is ignored (rows of one table are deleted together), and a cycle
/// is reported with the tables on it.
pub fn delete_order(
    tables: &[String],
    edges: &[(String, String)],
) -> Result<Vec<String>, Vec<String>> {
    let mut left: Vec<String> = tables.to_vec();
    left.sort();
    let mut out = Vec::with_capacity(left.len());
    while !left.is_empty() {
        // A table can go when no remaining table (other than itself) references it.
        let ready: Vec<String> = left
            .iter()
            .filter(|t| {
                !edges
                    .iter()
                    .any(|(child, parent)| parent == *t && child != *t && left.contains(child))
            })
            .cloned()
            .collect();
        if ready.is_empty() {
            return Err(left);
        }
        left.retain(|t| !ready.contains(t));
        out.extend(ready);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_access_and_unknown_fails_closed() {
        assert_eq!(access_for(Some("active"), None), Access::ReadWrite);
        assert_eq!(access_for(Some("suspended"), None), Access::ReadOnly);
        assert_eq!(access_for(Some("archived"), None), Access::ReadOnly);
        assert_eq!(access_for(Some("pending"), None), Access::NoAccess);
        assert_eq!(access_for(Some("deleted"), None), Access::NoAccess);
        assert_eq!(access_for(Some("Active"), None), Access::NoAccess);
        assert_eq!(access_for(None, None), Access::NoAccess);
        assert_eq!(
            access_for(Some("trial"), Some("read-write")),
            Access::ReadWrite
        );
        assert_eq!(access_for(Some("active"), Some("none")), Access::NoAccess);
        // A stored access the extension does not know is no override.
        assert_eq!(access_for(Some("active"), Some("all")), Access::ReadWrite);
        for a in [Access::ReadWrite, Access::ReadOnly, Access::NoAccess] {
            assert_eq!(Access::parse(a.as_str()), Some(a));
        }
        assert!(Access::ReadOnly.reads() && !Access::ReadOnly.writes());
        assert!(!Access::NoAccess.reads());
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn children_are_deleted_before_parents() {
        let tables = s(&["agents", "assignments", "tools", "messages"]);
        let edges = vec![
            ("assignments".to_string(), "agents".to_string()),
            ("assignments".to_string(), "tools".to_string()),
            ("messages".to_string(), "messages".to_string()),
        ];
        let order = delete_order(&tables, &edges).unwrap();
        let pos = |t: &str| order.iter().position(|x| x == t).unwrap();
        assert!(pos("assignments") < pos("agents"));
        assert!(pos("assignments") < pos("tools"));
        assert_eq!(order.len(), 4);
        let cycle = vec![
            ("a".to_string(), "b".to_string()),
            ("b".to_string(), "a".to_string()),
        ];
        assert_eq!(
            delete_order(&s(&["a", "b", "c"]), &cycle),
            Err(s(&["a", "b"]))
        );
    }
}
