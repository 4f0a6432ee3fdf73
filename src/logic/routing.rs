//! When a plan routed to a tenant's shards may be used again (Citus).
//!
//! A routed plan carries the tenants of the context it was planned in as constants, so
//! that Citus prunes the shards that cannot hold them. Such a plan is right only under
//! that context: this state machine says when the plans routed so far must be thrown
//! away (invalidated in the plan cache) and when one must not run. The key is whatever
//! decides the route (the observed context settings and the current role); it is only
//! compared.
//!
//! The invariant: every valid routed plan was routed under `routed`. A change of key is
//! noticed at the next check point (a statement's end, a utility statement, the end of a
//! transaction, the next routed planning), which invalidates them all before any cached
//! plan is used again; a routed plan that starts under another key (the context changed
//! inside a statement, with no check point between) is refused rather than run.
//!
//! Which tenants to route to is [`bound`]: what the row security quals of a relation
//! (the extension's policies, and the application's own with the boundary folded in)
//! require of its distribution column.

/// The array a policy compares the tenant column with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Array {
    /// `visible_tenant_ids(shared)`.
    Visible { shared: bool },
    /// `writable_tenant_ids()`.
    Writable,
}

/// A row security qual as far as routing cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Qual {
    /// `<distribution column> = ANY (<array>)`.
    Array(Array),
    And(Vec<Qual>),
    Or(Vec<Qual>),
    /// Anything else: no bound on the distribution column.
    Other,
}

/// The tenants a row must belong to for every one of `quals` (AND-ed, as a relation's
/// security quals are) to hold, sorted and without duplicates; `None` when they do not
/// bound the distribution column. `ids` gives each array's value for the request.
pub fn bound<T: Ord + Clone>(quals: &[Qual], ids: &impl Fn(Array) -> Vec<T>) -> Option<Vec<T>> {
    intersect(quals.iter().map(|q| bound_of(q, ids)))
}

fn bound_of<T: Ord + Clone>(q: &Qual, ids: &impl Fn(Array) -> Vec<T>) -> Option<Vec<T>> {
    match q {
        Qual::Array(a) => {
            let mut v = ids(*a);
            v.sort();
            v.dedup();
            Some(v)
        }
        Qual::And(qs) => intersect(qs.iter().map(|q| bound_of(q, ids))),
        Qual::Or(qs) => {
            let mut all = Vec::new();
            for q in qs {
                all.extend(bound_of(q, ids)?);
            }
            all.sort();
            all.dedup();
            Some(all)
        }
        Qual::Other => None,
    }
}

fn intersect<T: Ord + Clone>(bounds: impl Iterator<Item = Option<Vec<T>>>) -> Option<Vec<T>> {
    bounds.flatten().reduce(|a, b| {
        a.into_iter()
            .filter(|t| b.binary_search(t).is_ok())
            .collect()
    })
}

/// The key the currently valid routed plans were made under (`None`: there are none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteState<K> {
    routed: Option<K>,
}

impl<K: PartialEq + Clone> Default for RouteState<K> {
    fn default() -> Self {
        RouteState::new()
    }
}

impl<K: PartialEq + Clone> RouteState<K> {
    pub const fn new() -> Self {
        RouteState { routed: None }
    }

    /// Whether any routed plan may still be valid (check points cost nothing otherwise).
    pub fn any(&self) -> bool {
        self.routed.is_some()
    }

    /// A plan is being routed under `key`. True when the plans routed earlier were made
    /// under another key and must be invalidated first.
    pub fn planned(&mut self, key: &K) -> bool {
        let stale = self.routed.as_ref().is_some_and(|k| k != key);
        self.routed = Some(key.clone());
        stale
    }

    /// Forget the routed plans (they were invalidated).
    pub fn forget(&mut self) {
        self.routed = None;
    }

    /// A check point: `still(key)` tells whether the routed plans' key still holds
    /// (only asked when there are routed plans). True when they must be invalidated.
    pub fn checkpoint(&mut self, still: impl FnOnce(&K) -> bool) -> bool {
        match &self.routed {
            Some(k) if !still(k) => {
                self.routed = None;
                true
            }
            _ => false,
        }
    }

    /// The (sub)transaction ended; `survives(key)` tells whether the key outlives it
    /// (settings made for the session do; `SET LOCAL`, `set_config(…, true)` and
    /// `pre_request()`'s seal do not). True when the routed plans must be invalidated.
    pub fn transaction_end(&mut self, survives: impl FnOnce(&K) -> bool) -> bool {
        self.checkpoint(survives)
    }

    /// A routed plan starts; `still(key)` tells whether it was routed for what the
    /// request is now. True when it may run. False means invalidate and refuse (the
    /// state is reset, so that the statement's retry plans afresh).
    pub fn may_run(&mut self, still: impl FnOnce(&K) -> bool) -> bool {
        match &self.routed {
            Some(k) if still(k) => true,
            _ => {
                self.routed = None;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_routed_costs_nothing() {
        let mut s: RouteState<u8> = RouteState::new();
        assert!(!s.any());
        assert!(!s.checkpoint(|_| panic!("no key is compared without routed plans")));
        assert!(!s.transaction_end(|_| panic!("nor here")));
    }

    #[test]
    fn the_same_key_keeps_the_plans() {
        let mut s = RouteState::new();
        assert!(!s.planned(&1));
        assert!(!s.planned(&1));
        assert!(!s.checkpoint(|k| *k == 1));
        assert!(s.may_run(|k| *k == 1));
        assert!(s.any());
    }

    #[test]
    fn another_key_invalidates_at_the_next_check_point() {
        let mut s = RouteState::new();
        s.planned(&1);
        assert!(s.checkpoint(|k| *k == 2));
        assert!(!s.any());
        // Once invalidated, nothing more to do until the next routed plan.
        assert!(!s.checkpoint(|k| *k == 3));
        assert!(!s.planned(&2));
    }

    #[test]
    fn planning_under_another_key_invalidates_the_earlier_plans() {
        let mut s = RouteState::new();
        s.planned(&1);
        assert!(s.planned(&2));
        assert!(s.may_run(|k| *k == 2));
    }

    #[test]
    fn a_stale_plan_is_refused_and_the_retry_plans_afresh() {
        let mut s = RouteState::new();
        s.planned(&1);
        assert!(!s.may_run(|k| *k == 2));
        assert!(!s.any());
        // A plan routed before an invalidation never runs again either.
        assert!(!s.may_run(|k| *k == 1));
        assert!(!s.planned(&2));
        assert!(s.may_run(|k| *k == 2));
    }

    #[test]
    fn transaction_end_keeps_only_what_outlives_it() {
        let mut s = RouteState::new();
        s.planned(&("session", 1));
        assert!(!s.transaction_end(|k| k.0 == "session"));
        assert!(s.any());
        s.planned(&("local", 1));
        assert!(s.transaction_end(|k| k.0 == "session"));
        assert!(!s.any());
        s.planned(&("local", 2));
        s.forget();
        assert!(!s.any());
    }

    const A: u8 = 1;
    const P: u8 = 0;

    fn ids(a: Array) -> Vec<u8> {
        match a {
            Array::Visible { shared: true } => vec![A, P, A],
            Array::Visible { shared: false } | Array::Writable => vec![A],
        }
    }

    #[test]
    fn one_policy_bounds_to_its_array() {
        let q = [Qual::Array(Array::Visible { shared: true })];
        assert_eq!(bound(&q, &ids), Some(vec![P, A]));
        assert_eq!(bound(&[Qual::Array(Array::Writable)], &ids), Some(vec![A]));
    }

    #[test]
    fn or_of_policies_is_the_union_and_needs_every_branch_bounded() {
        let both = Qual::Or(vec![
            Qual::Array(Array::Writable),
            Qual::Array(Array::Visible { shared: true }),
        ]);
        assert_eq!(bound(&[both], &ids), Some(vec![P, A]));
        let open = Qual::Or(vec![Qual::Array(Array::Writable), Qual::Other]);
        assert_eq!(bound(&[open], &ids), None);
    }

    #[test]
    fn and_and_several_quals_intersect_what_is_bounded() {
        // The application's policy with the boundary folded in: (own USING) AND array.
        let folded = Qual::And(vec![
            Qual::Other,
            Qual::Array(Array::Visible { shared: true }),
        ]);
        assert_eq!(bound(std::slice::from_ref(&folded), &ids), Some(vec![P, A]));
        let narrower = [folded, Qual::Array(Array::Visible { shared: false })];
        assert_eq!(bound(&narrower, &ids), Some(vec![A]));
        assert_eq!(bound(&[Qual::Other], &ids), None);
        assert_eq!(bound::<u8>(&[], &ids), None);
    }

    #[test]
    fn no_context_bounds_to_nothing() {
        let none = |_: Array| Vec::<u8>::new();
        let q = [Qual::Or(vec![
            Qual::Array(Array::Writable),
            Qual::Array(Array::Visible { shared: true }),
        ])];
        assert_eq!(bound(&q, &none), Some(vec![]));
    }
}
