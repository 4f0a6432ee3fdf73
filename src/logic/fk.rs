//! A foreign key's options as `pg_constraint` stores them, spelled back as SQL, so that
//! a key rewritten with the tenant column keeps them (no deparsed text is matched);
//! and what the guard of a reference between tenant tables checks for one written row.

/// `pg_constraint` columns of a foreign key: `confupdtype`, `confdeltype`,
/// `confmatchtype` (single letters), `condeferrable`, `condeferred`, and the quoted
/// columns of `confdelsetcols` (PostgreSQL 15: SET NULL/SET DEFAULT of some columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FkOptions {
    pub on_update: char,
    pub on_delete: char,
    pub match_type: char,
    pub deferrable: bool,
    pub deferred: bool,
    pub delete_set_columns: Vec<String>,
}

fn action(code: char) -> Option<&'static str> {
    match code {
        'a' => None, // NO ACTION, the default
        'r' => Some("RESTRICT"),
        'c' => Some("CASCADE"),
        'n' => Some("SET NULL"),
        'd' => Some("SET DEFAULT"),
        _ => None,
    }
}

impl FkOptions {
    /// The clauses after `REFERENCES t (cols)` for the key with the tenant column added
    /// in front. `child_columns` are the key's own columns (quoted): an ON DELETE SET
    /// NULL / SET DEFAULT that named no columns applied to the whole key, which now
    /// holds the tenant column too, so it is limited to the key's own columns (the
    /// tenant column must never be nulled).
    pub fn clauses(&self, child_columns: &[String]) -> String {
        let mut out = String::new();
        match self.match_type {
            'f' => out.push_str(" MATCH FULL"),
            'p' => out.push_str(" MATCH PARTIAL"),
            _ => {}
        }
        if let Some(a) = action(self.on_update) {
            out.push_str(" ON UPDATE ");
            out.push_str(a);
        }
        if let Some(a) = action(self.on_delete) {
            out.push_str(" ON DELETE ");
            out.push_str(a);
            if matches!(self.on_delete, 'n' | 'd') {
                let cols = if self.delete_set_columns.is_empty() {
                    child_columns
                } else {
                    &self.delete_set_columns[..]
                };
                out.push_str(&format!(" ({})", cols.join(", ")));
            }
        }
        if self.deferrable {
            out.push_str(" DEFERRABLE");
            if self.deferred {
                out.push_str(" INITIALLY DEFERRED");
            }
        }
        out
    }

    /// What adding the tenant column changes in the key's meaning, if anything: MATCH
    /// FULL then refuses a row whose own key is NULL (the tenant column never is), and
    /// ON UPDATE SET NULL / SET DEFAULT would reach the tenant column (PostgreSQL takes
    /// a column list for ON DELETE only).
    pub fn caveat(&self) -> Option<&'static str> {
        if self.match_type == 'f' {
            Some("MATCH FULL with tenant_id refuses rows whose own key is NULL")
        } else if matches!(self.on_update, 'n' | 'd') {
            Some("ON UPDATE SET NULL/SET DEFAULT would also reach tenant_id")
        } else {
            None
        }
    }
}

/// What the reference guard (`tenant_reference_check()`) does with one written row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardCheck {
    /// The writer is under the child table's row level security and may not write the
    /// row's tenant: the policies' WITH CHECK refuses the row right after the BEFORE
    /// trigger, with row level security's one error, whatever the parent. The guard
    /// looks nothing up, so the outcome cannot depend on rows of a tenant the writer
    /// may not write (the claimed-tenant probe).
    LeaveToRowSecurity,
    /// The parent must be a row of one of these tenants (none: no parent qualifies).
    ParentAmong(Vec<[u8; 16]>),
}

/// The tenants a row's parent may belong to: the row's own tenant, and Platform only
/// where the parent table is shared (readable by every tenant); a parent the row's
/// tenant cannot read is no parent. `under_rls`: the writer is subject to the child
/// table's row level security; `writable`: the tenants it may write there.
pub fn guard_check(
    child_tenant: Option<[u8; 16]>,
    under_rls: bool,
    writable: &[[u8; 16]],
    parent_shared: bool,
    platform: [u8; 16],
) -> GuardCheck {
    if under_rls && !child_tenant.is_some_and(|t| writable.contains(&t)) {
        return GuardCheck::LeaveToRowSecurity;
    }
    let mut tenants: Vec<[u8; 16]> = child_tenant.into_iter().collect();
    if parent_shared && child_tenant != Some(platform) {
        tenants.push(platform);
    }
    GuardCheck::ParentAmong(tenants)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const A: [u8; 16] = [0x11; 16];
    const B: [u8; 16] = [0xf7; 16];

    #[test]
    fn a_tenant_the_writer_may_not_write_is_left_to_row_security() {
        // The claimed-tenant probe: whatever exists in B, the writer of A gets RLS's error.
        assert_eq!(
            guard_check(Some(B), true, &[A], true, P),
            GuardCheck::LeaveToRowSecurity
        );
        assert_eq!(
            guard_check(None, true, &[A], true, P),
            GuardCheck::LeaveToRowSecurity
        );
        // Read-only status or no context: nothing writable.
        assert_eq!(
            guard_check(Some(A), true, &[], true, P),
            GuardCheck::LeaveToRowSecurity
        );
    }

    #[test]
    fn platform_parents_only_in_shared_tables() {
        assert_eq!(
            guard_check(Some(A), true, &[A], true, P),
            GuardCheck::ParentAmong(vec![A, P])
        );
        assert_eq!(
            guard_check(Some(A), true, &[A], false, P),
            GuardCheck::ParentAmong(vec![A])
        );
        // Platform's own rows reference Platform once.
        assert_eq!(
            guard_check(Some(P), false, &[], true, P),
            GuardCheck::ParentAmong(vec![P])
        );
        // Owners and admins outside row level security: the row's tenant decides.
        assert_eq!(
            guard_check(Some(B), false, &[], false, P),
            GuardCheck::ParentAmong(vec![B])
        );
        assert_eq!(
            guard_check(None, false, &[], true, P),
            GuardCheck::ParentAmong(vec![P])
        );
    }

    fn fk(u: char, d: char, m: char, deferrable: bool, deferred: bool) -> FkOptions {
        FkOptions {
            on_update: u,
            on_delete: d,
            match_type: m,
            deferrable,
            deferred,
            delete_set_columns: vec![],
        }
    }

    #[test]
    fn every_option_is_spelled_back() {
        let cols = vec!["\"agent_id\"".to_string()];
        assert_eq!(fk('a', 'a', 's', false, false).clauses(&cols), "");
        assert_eq!(
            fk('a', 'c', 's', false, false).clauses(&cols),
            " ON DELETE CASCADE"
        );
        assert_eq!(
            fk('c', 'n', 's', false, false).clauses(&cols),
            " ON UPDATE CASCADE ON DELETE SET NULL (\"agent_id\")"
        );
        assert_eq!(
            fk('r', 'd', 'f', true, true).clauses(&cols),
            " MATCH FULL ON UPDATE RESTRICT ON DELETE SET DEFAULT (\"agent_id\") DEFERRABLE INITIALLY DEFERRED"
        );
        assert_eq!(fk('a', 'a', 's', true, false).clauses(&cols), " DEFERRABLE");
        let mut own = fk('a', 'n', 's', false, false);
        own.delete_set_columns = vec!["\"x\"".into()];
        assert_eq!(own.clauses(&cols), " ON DELETE SET NULL (\"x\")");
    }

    #[test]
    fn changes_of_meaning_are_named() {
        assert!(fk('a', 'a', 'f', false, false).caveat().is_some());
        assert!(fk('n', 'a', 's', false, false).caveat().is_some());
        assert!(fk('c', 'c', 's', true, false).caveat().is_none());
    }
}
