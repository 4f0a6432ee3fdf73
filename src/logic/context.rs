//! Where the tenant context comes from, decided from the raw settings alone.
//!
//! Order: (1) `vital.tenant_id`; (2) `tenant_id` in `request.jwt.claims`;
//! (3) `x-tenant-id` in `request.headers`, which the caller must then check against
//! the membership of the claims' `sub`; (4) nothing. An empty string is unset; a
//! malformed value is an error naming its source. Checking that the tenant exists
//! and that the user is a member needs the database and is the glue's job.
//!
//! Before that, [`honoured`] decides which settings count at all: none when the
//! session's login role is not trusted, and only values set inside the current
//! transaction (pool safety) unless the DBA opted in to session-level context. Inside
//! a request that runs as a *confined* role (the current role is neither the login
//! role nor itself trusted: `anon`, `authenticated`, `vital_tenancy_service` after
//! PostgREST's role switch), the request's own SQL does not choose its tenant: a value
//! set by a confined role counts only as `pre_request()` saw it, and once
//! `pre_request()` has fixed the context, any change of a setting or of the role gives
//! no context.

use super::tenants::uuid_bytes;
use serde_json::Value;
use std::fmt;

pub const TENANT_SETTING: &str = "vital.tenant_id";
pub const CLAIMS_SETTING: &str = "request.jwt.claims";
pub const HEADERS_SETTING: &str = "request.headers";
pub const TENANT_HEADER: &str = "x-tenant-id";
/// `own` narrows what a request reads to its own tenant (no Platform rows); `shared`
/// or no header: each table's own setting (shared tables include Platform).
pub const SCOPE_HEADER: &str = "x-tenant-scope";

/// The raw values of the three settings (`None` when unset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RawContext {
    pub tenant_setting: Option<String>,
    pub claims: Option<String>,
    pub headers: Option<String>,
}

/// One context setting as the server holds it: its value, and whether that value was
/// set inside the current transaction (`SET LOCAL`, `set_config(..., true)`, a
/// function's `SET` clause). A value set any other way (session `SET`,
/// `set_config(..., false)`, `ALTER ROLE/DATABASE ... SET`, a startup option, or a
/// leftover of an earlier transaction on the same pooled server connection) is not local.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Setting {
    pub value: Option<String>,
    pub local: bool,
    /// The value was set by a confined role (not the login role, not a trusted role,
    /// not the extension's own SECURITY DEFINER code): SQL running inside a request.
    pub by_confined: bool,
}

impl Setting {
    #[cfg(test)]
    pub fn local(v: &str) -> Setting {
        Setting {
            value: Some(v.to_string()),
            local: true,
            by_confined: false,
        }
    }
    #[cfg(test)]
    pub fn session(v: &str) -> Setting {
        Setting {
            value: Some(v.to_string()),
            local: false,
            by_confined: false,
        }
    }
    /// Set transaction-locally by a confined role (SQL inside a request).
    #[cfg(test)]
    pub fn confined(v: &str) -> Setting {
        Setting {
            by_confined: true,
            ..Setting::local(v)
        }
    }
    fn is_set(&self) -> bool {
        non_empty(&self.value).is_some()
    }
}

/// Everything the context depends on, read from the server without a query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Observed {
    pub tenant_setting: Setting,
    pub claims: Setting,
    pub headers: Setting,
    /// The login role (`session_user`) is a member of `vital_tenancy_context`.
    pub trusted: bool,
    /// `vital_tenancy.session_context` is on: values that outlive a transaction are
    /// honoured too (a DBA's opt-in for a dedicated connection per tenant).
    pub session_context: bool,
    /// The request runs as the server-side role `vital_tenancy_service` (its current
    /// role, as set by `SET ROLE`, has that role's privileges; superusers aside).
    pub service: bool,
    /// Whether `pre_request()` fixed the context in this transaction, and if so whether
    /// every setting and the current role are still what it saw.
    pub sealed: Option<bool>,
}

/// Why a setting that holds a value does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// Not set inside the current transaction (pool safety).
    NotThisTransaction,
    /// The session's login role may not establish a tenant context.
    UntrustedSession,
    /// Set by a confined role inside the request, not fixed by `pre_request()`.
    SetInsideRequest,
    /// A setting or the role changed after `pre_request()` fixed the context.
    ChangedAfterPreRequest,
}

/// The settings that count, and those that hold a value but were ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Honoured {
    pub raw: RawContext,
    pub ignored: Vec<(&'static str, IgnoreReason)>,
}

/// Decide which settings count: none for an untrusted session; otherwise only the
/// values set in this transaction, unless `session_context` is on.
pub fn honoured(o: &Observed) -> Honoured {
    let mut out = Honoured::default();
    let sources = [
        (TENANT_SETTING, &o.tenant_setting),
        (CLAIMS_SETTING, &o.claims),
        (HEADERS_SETTING, &o.headers),
    ];
    for (name, s) in sources {
        let keep = if !s.is_set() {
            false
        } else if !o.trusted {
            out.ignored.push((name, IgnoreReason::UntrustedSession));
            false
        } else if o.sealed == Some(false) {
            out.ignored
                .push((name, IgnoreReason::ChangedAfterPreRequest));
            false
        } else if !s.local && !o.session_context {
            out.ignored.push((name, IgnoreReason::NotThisTransaction));
            false
        } else if s.by_confined && o.sealed.is_none() {
            out.ignored.push((name, IgnoreReason::SetInsideRequest));
            false
        } else {
            true
        };
        let value = if keep { s.value.clone() } else { None };
        match name {
            TENANT_SETTING => out.raw.tenant_setting = value,
            CLAIMS_SETTING => out.raw.claims = value,
            _ => out.raw.headers = value,
        }
    }
    out
}

/// Where the tenant came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Setting([u8; 16]),
    Claims([u8; 16]),
    /// A header tenant, valid only if `user` is a member of it.
    Header {
        tenant: [u8; 16],
        user: [u8; 16],
    },
    /// A header tenant chosen by the server-side role (`vital_tenancy_service`): the
    /// server picked it, no user membership applies.
    Service([u8; 16]),
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextError {
    /// 22P02: a value that should be a uuid is not; names where it came from.
    MalformedUuid { source: String, value: String },
    /// 22P02: a JSON setting that does not parse, or is not an object; `reason` says which.
    MalformedJson { source: String, reason: String },
    /// 42501: a tenant header with no authenticated user to check membership for.
    HeaderWithoutUser { tenant: String },
    /// 22023: an `x-tenant-scope` header other than `own` or `shared`.
    MalformedScope { value: String },
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContextError::MalformedUuid { source, value } => {
                write!(f, "invalid tenant context: {source} is not a valid uuid: \"{value}\"")
            }
            ContextError::MalformedJson { source, reason } => {
                write!(f, "invalid tenant context: setting {source} {reason}")
            }
            ContextError::MalformedScope { value } => write!(
                f,
                "invalid tenant context: header {SCOPE_HEADER} must be \"own\" or \"shared\", not \"{value}\""
            ),
            ContextError::HeaderWithoutUser { tenant } => write!(
                f,
                "header {TENANT_HEADER} asks for tenant {tenant}, but the request has no authenticated user (no \"sub\" in {CLAIMS_SETTING})"
            ),
        }
    }
}

/// A setting's value, `None` when unset or blank. Not trimmed: a uuid with spaces
/// around it is malformed here as in PostgreSQL's uuid input (census N14).
fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.trim().is_empty())
}

fn short(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s.to_string()
    }
}

fn parse_uuid(source: &str, value: &str) -> Result<[u8; 16], ContextError> {
    uuid_bytes(&value.to_ascii_lowercase()).ok_or_else(|| ContextError::MalformedUuid {
        source: source.to_string(),
        value: short(value),
    })
}

fn parse_json(
    source: &str,
    raw: Option<&str>,
) -> Result<Option<serde_json::Map<String, Value>>, ContextError> {
    let Some(raw) = raw else { return Ok(None) };
    let reason = match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(m)) => return Ok(Some(m)),
        Ok(Value::Null) => return Ok(None),
        Ok(Value::Array(_)) => "is a JSON array, not an object",
        Ok(Value::String(_)) => "is a JSON string, not an object",
        Ok(Value::Number(_)) => "is a JSON number, not an object",
        Ok(Value::Bool(_)) => "is a JSON boolean, not an object",
        Err(e) if e.to_string().contains("recursion limit") => "is nested deeper than 128 levels",
        Err(e) if e.to_string().contains("number out of range") => {
            "holds a number beyond double precision"
        }
        Err(_) => "is not valid JSON",
    };
    Err(ContextError::MalformedJson {
        source: source.to_string(),
        reason: reason.to_string(),
    })
}

/// A string member of a JSON object (`None` when absent, null or empty); other
/// types are malformed.
fn json_str<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
    source: &str,
) -> Result<Option<&'a str>, ContextError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ContextError::MalformedUuid {
            source: source.to_string(),
            value: short(&other.to_string()),
        }),
    }
}

/// Decide where the tenant comes from, for a request that is not the server-side role.
pub fn resolve(raw: &RawContext) -> Result<Source, ContextError> {
    resolve_as(raw, false)
}

/// A header's value (names are case-insensitive); `None` when absent, null or empty.
fn header<'a>(
    h: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, ContextError> {
    let src = format!("header {name} in {HEADERS_SETTING}");
    match h
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
    {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ContextError::MalformedUuid {
            source: src,
            value: short(&other.to_string()),
        }),
    }
}

/// Whether the request asked (`x-tenant-scope: own`) to read its own tenant's rows
/// only, without Platform's.
pub fn own_only(raw: &RawContext) -> Result<bool, ContextError> {
    let Some(h) = parse_json(HEADERS_SETTING, non_empty(&raw.headers))? else {
        return Ok(false);
    };
    match header(&h, SCOPE_HEADER) {
        Ok(None) => Ok(false),
        Ok(Some(v)) if v.trim().eq_ignore_ascii_case("own") => Ok(true),
        Ok(Some(v)) if v.trim().eq_ignore_ascii_case("shared") => Ok(false),
        Ok(Some(v)) => Err(ContextError::MalformedScope { value: short(v) }),
        Err(_) => Err(ContextError::MalformedScope {
            value: "(not a string)".into(),
        }),
    }
}

/// Decide where the tenant comes from. `service`: the request runs as the server-side
/// role, whose `x-tenant-id` header needs no user membership.
pub fn resolve_as(raw: &RawContext, service: bool) -> Result<Source, ContextError> {
    if let Some(v) = non_empty(&raw.tenant_setting) {
        return Ok(Source::Setting(parse_uuid(
            &format!("setting {TENANT_SETTING}"),
            v,
        )?));
    }
    let claims = parse_json(CLAIMS_SETTING, non_empty(&raw.claims))?;
    if let Some(c) = &claims {
        let src = format!("tenant_id in {CLAIMS_SETTING}");
        if let Some(t) = json_str(c, "tenant_id", &src)? {
            return Ok(Source::Claims(parse_uuid(&src, t)?));
        }
    }
    let headers = parse_json(HEADERS_SETTING, non_empty(&raw.headers))?;
    if let Some(h) = &headers {
        let src = format!("header {TENANT_HEADER} in {HEADERS_SETTING}");
        let tenant = match header(h, TENANT_HEADER)? {
            None => None,
            Some(s) => Some(parse_uuid(&src, s)?),
        };
        if let (Some(tenant), true) = (tenant, service) {
            return Ok(Source::Service(tenant));
        }
        if let Some(tenant) = tenant {
            let sub_src = format!("sub in {CLAIMS_SETTING}");
            let user = match &claims {
                Some(c) => json_str(c, "sub", &sub_src)?,
                None => None,
            };
            let Some(user) = user else {
                return Err(ContextError::HeaderWithoutUser {
                    tenant: format_uuid(&tenant),
                });
            };
            return Ok(Source::Header {
                tenant,
                user: parse_uuid(&sub_src, user)?,
            });
        }
    }
    Ok(Source::None)
}

/// Whether the context comes from the request's claims or headers without
/// `pre_request()` having fixed it: on a Citus coordinator those settings
/// (`set_config(…, true)`, as PostgREST sets them) never reach the workers, whose
/// policies would then see no context and return nothing. `vital.tenant_id` is not
/// counted: `SET LOCAL` of it reaches them.
pub fn request_context_without_pre_request(o: &Observed) -> bool {
    if o.sealed.is_some() {
        return false;
    }
    matches!(
        resolve_as(&honoured(o).raw, o.service),
        Ok(Source::Claims(_) | Source::Header { .. } | Source::Service(_))
    )
}

/// Canonical text of a uuid.
pub fn format_uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "11111111-1111-1111-1111-111111111111";
    const U: &str = "aaaaaaaa-0000-4000-8000-000000000001";

    fn raw(t: Option<&str>, c: Option<&str>, h: Option<&str>) -> RawContext {
        RawContext {
            tenant_setting: t.map(String::from),
            claims: c.map(String::from),
            headers: h.map(String::from),
        }
    }

    fn b(s: &str) -> [u8; 16] {
        uuid_bytes(s).unwrap()
    }

    #[test]
    fn a_uuid_with_spaces_around_it_is_malformed_in_every_source() {
        let claims_no_tenant = format!(r#"{{"sub": "{U}"}}"#);
        for r in [
            raw(Some(&format!(" {T}")), None, None),
            raw(Some(&format!("{T} ")), None, None),
            raw(None, Some(&format!(r#"{{"tenant_id": " {T} "}}"#)), None),
            raw(
                None,
                Some(&claims_no_tenant),
                Some(&format!(r#"{{"x-tenant-id": " {T}"}}"#)),
            ),
        ] {
            assert!(
                matches!(resolve(&r), Err(ContextError::MalformedUuid { .. })),
                "{r:?}"
            );
        }
        // A number JSON can write but double precision cannot hold: named as such.
        let e = resolve(&raw(None, Some(r#"{"tenant_id": 1e400}"#), None)).unwrap_err();
        assert!(
            e.to_string()
                .contains("holds a number beyond double precision"),
            "{e}"
        );
    }

    #[test]
    fn order_of_sources() {
        let claims = format!(r#"{{"sub": "{U}", "tenant_id": "{T}"}}"#);
        let headers = r#"{"x-tenant-id": "f7aa6fd4-0af9-4706-8b31-034f1f7accda"}"#;
        assert_eq!(
            resolve(&raw(
                Some("00000000-0000-0000-0000-000000000001"),
                Some(&claims),
                Some(headers)
            )),
            Ok(Source::Setting(b("00000000-0000-0000-0000-000000000001")))
        );
        assert_eq!(
            resolve(&raw(Some(""), Some(&claims), Some(headers))),
            Ok(Source::Claims(b(T)))
        );
        let claims_no_tenant = format!(r#"{{"sub": "{U}"}}"#);
        assert_eq!(
            resolve(&raw(None, Some(&claims_no_tenant), Some(headers))),
            Ok(Source::Header {
                tenant: b("f7aa6fd4-0af9-4706-8b31-034f1f7accda"),
                user: b(U)
            })
        );
        assert_eq!(
            resolve(&raw(None, Some(&claims_no_tenant), None)),
            Ok(Source::None)
        );
        assert_eq!(resolve(&raw(None, None, None)), Ok(Source::None));
        assert_eq!(
            resolve(&raw(Some("  "), Some(""), Some(""))),
            Ok(Source::None)
        );
        assert_eq!(
            resolve(&raw(None, Some(r#"{"tenant_id": ""}"#), None)),
            Ok(Source::None)
        );
        // Header names are case-insensitive; uuids too.
        let h = r#"{"X-Tenant-Id": "F7AA6FD4-0AF9-4706-8B31-034F1F7ACCDA"}"#;
        assert!(matches!(
            resolve(&raw(None, Some(&claims_no_tenant), Some(h))),
            Ok(Source::Header { .. })
        ));
    }

    #[test]
    fn malformed_values_name_their_source() {
        let e = resolve(&raw(Some("nope"), None, None)).unwrap_err();
        assert!(e.to_string().contains("vital.tenant_id"), "{e}");
        let e = resolve(&raw(None, Some(r#"{"tenant_id": "x"}"#), None)).unwrap_err();
        assert!(
            e.to_string().contains("tenant_id in request.jwt.claims"),
            "{e}"
        );
        let e = resolve(&raw(None, Some(r#"{"tenant_id": 5}"#), None)).unwrap_err();
        assert!(e.to_string().contains("request.jwt.claims"), "{e}");
        let e = resolve(&raw(None, Some("{not json"), None)).unwrap_err();
        assert_eq!(
            e,
            ContextError::MalformedJson {
                source: CLAIMS_SETTING.into(),
                reason: "is not valid JSON".into()
            }
        );
        // Valid JSON that is no object, or nested too deep, says so (F33).
        let e = resolve(&raw(None, Some("[]"), None)).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("request.jwt.claims is a JSON array, not an object"),
            "{e}"
        );
        let e = resolve(&raw(None, Some("1"), None)).unwrap_err();
        assert!(
            e.to_string().ends_with("is a JSON number, not an object"),
            "{e}"
        );
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let e = resolve(&raw(None, Some(&deep), None)).unwrap_err();
        assert!(
            e.to_string().ends_with("is nested deeper than 128 levels"),
            "{e}"
        );
        let e = resolve(&raw(None, None, Some(r#"{"x-tenant-id": "zzz"}"#))).unwrap_err();
        assert!(e.to_string().contains("header x-tenant-id"), "{e}");
        let e = resolve(&raw(
            None,
            Some(r#"{"sub": "bad"}"#),
            Some(&format!(r#"{{"x-tenant-id": "{T}"}}"#)),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("sub in request.jwt.claims"), "{e}");
    }

    #[test]
    fn header_without_user_is_refused() {
        let h = format!(r#"{{"x-tenant-id": "{T}"}}"#);
        assert_eq!(
            resolve(&raw(None, None, Some(&h))),
            Err(ContextError::HeaderWithoutUser { tenant: T.into() })
        );
        assert_eq!(
            resolve(&raw(None, Some(r#"{"role": "anon"}"#), Some(&h))),
            Err(ContextError::HeaderWithoutUser { tenant: T.into() })
        );
    }

    fn obs(t: Setting, c: Setting, h: Setting, trusted: bool, session: bool) -> Observed {
        Observed {
            tenant_setting: t,
            claims: c,
            headers: h,
            trusted,
            session_context: session,
            service: false,
            sealed: None,
        }
    }

    #[test]
    fn claims_and_headers_need_pre_request_to_reach_citus_workers() {
        let claims = format!(r#"{{"tenant_id": "{T}"}}"#);
        let headers = format!(r#"{{"x-tenant-id": "{T}"}}"#);
        let mut o = obs(
            Setting::default(),
            Setting::local(&claims),
            Setting::default(),
            true,
            false,
        );
        assert!(request_context_without_pre_request(&o));
        o.sealed = Some(true);
        assert!(!request_context_without_pre_request(&o));
        // The service role's header, likewise.
        let mut s = obs(
            Setting::default(),
            Setting::default(),
            Setting::local(&headers),
            true,
            false,
        );
        s.service = true;
        assert!(request_context_without_pre_request(&s));
        // vital.tenant_id by SET LOCAL reaches them; no context at all is no context.
        let t = obs(
            Setting::local(T),
            Setting::default(),
            Setting::default(),
            true,
            false,
        );
        assert!(!request_context_without_pre_request(&t));
        let none = obs(
            Setting::default(),
            Setting::default(),
            Setting::default(),
            true,
            false,
        );
        assert!(!request_context_without_pre_request(&none));
        // Claims that do not count (an untrusted session) are no context either.
        let u = obs(
            Setting::default(),
            Setting::local(&claims),
            Setting::default(),
            false,
            false,
        );
        assert!(!request_context_without_pre_request(&u));
    }

    #[test]
    fn sql_inside_a_request_does_not_choose_its_tenant() {
        let claims = format!(r#"{{"tenant_id": "{T}"}}"#);
        // PostgREST sets the role first, then the claims: set by the confined role,
        // they count only once pre_request() fixed them.
        let mut o = obs(
            Setting::default(),
            Setting::confined(&claims),
            Setting::default(),
            true,
            false,
        );
        let h = honoured(&o);
        assert_eq!(resolve(&h.raw), Ok(Source::None));
        assert_eq!(
            h.ignored,
            vec![(CLAIMS_SETTING, IgnoreReason::SetInsideRequest)]
        );
        o.sealed = Some(true);
        assert_eq!(resolve(&honoured(&o).raw), Ok(Source::Claims(b(T))));
        // A tenant set by a trusted role before the switch (set_tenant(), SET LOCAL as
        // the login role) counts without pre_request().
        let h = honoured(&obs(
            Setting::local(T),
            Setting::default(),
            Setting::default(),
            true,
            false,
        ));
        assert_eq!(resolve(&h.raw), Ok(Source::Setting(b(T))));
        // The request's own set_config('vital.tenant_id', ..., true), or its own
        // headers, without pre_request(): nothing.
        let h = honoured(&obs(
            Setting::confined(T),
            Setting::default(),
            Setting::confined(&format!(r#"{{"x-tenant-id": "{T}"}}"#)),
            true,
            false,
        ));
        assert_eq!(h.raw, RawContext::default());
        // Anything changed after pre_request(), or a role switch: no context at all,
        // even the values pre_request() saw.
        let mut o = obs(
            Setting::local(T),
            Setting::confined(&claims),
            Setting::default(),
            true,
            false,
        );
        o.sealed = Some(false);
        let h = honoured(&o);
        assert_eq!(h.raw, RawContext::default());
        assert!(h
            .ignored
            .iter()
            .all(|(_, r)| *r == IgnoreReason::ChangedAfterPreRequest));
        assert_eq!(h.ignored.len(), 2);
    }

    #[test]
    fn only_values_of_this_transaction_count() {
        let claims = format!(r#"{{"tenant_id": "{T}"}}"#);
        // A leftover session tenant does not outrank the request's own claims.
        let h = honoured(&obs(
            Setting::session("f7aa6fd4-0af9-4706-8b31-034f1f7accda"),
            Setting::local(&claims),
            Setting::default(),
            true,
            false,
        ));
        assert_eq!(h.raw.tenant_setting, None);
        assert_eq!(h.raw.claims.as_deref(), Some(claims.as_str()));
        assert_eq!(
            h.ignored,
            vec![(TENANT_SETTING, IgnoreReason::NotThisTransaction)]
        );
        assert_eq!(resolve(&h.raw), Ok(Source::Claims(b(T))));
        // Session claims are leftovers too.
        let h = honoured(&obs(
            Setting::default(),
            Setting::session(&claims),
            Setting::default(),
            true,
            false,
        ));
        assert_eq!(resolve(&h.raw), Ok(Source::None));
        // The DBA's opt-in honours them.
        let h = honoured(&obs(
            Setting::default(),
            Setting::session(&claims),
            Setting::default(),
            true,
            true,
        ));
        assert!(h.ignored.is_empty());
        assert_eq!(resolve(&h.raw), Ok(Source::Claims(b(T))));
        // Empty values are not reported as ignored.
        let h = honoured(&obs(
            Setting::session(""),
            Setting::session("  "),
            Setting::default(),
            true,
            false,
        ));
        assert!(h.ignored.is_empty());
    }

    #[test]
    fn an_untrusted_session_establishes_nothing() {
        let claims = format!(r#"{{"tenant_id": "{T}"}}"#);
        for session in [false, true] {
            let h = honoured(&obs(
                Setting::local(T),
                Setting::local(&claims),
                Setting::local(r#"{"x-tenant-id": "x"}"#),
                false,
                session,
            ));
            assert_eq!(h.raw, RawContext::default());
            assert_eq!(h.ignored.len(), 3);
            assert!(h
                .ignored
                .iter()
                .all(|(_, r)| *r == IgnoreReason::UntrustedSession));
            assert_eq!(resolve(&h.raw), Ok(Source::None));
        }
    }

    #[test]
    fn the_service_role_chooses_by_header_alone() {
        let h = format!(r#"{{"x-tenant-id": "{T}"}}"#);
        assert_eq!(
            resolve_as(
                &raw(None, Some(r#"{"role": "vital_tenancy_service"}"#), Some(&h)),
                true
            ),
            Ok(Source::Service(b(T)))
        );
        assert_eq!(
            resolve_as(&raw(None, None, Some(&h)), true),
            Ok(Source::Service(b(T)))
        );
        // Anyone else still needs a user and a membership.
        assert_eq!(
            resolve_as(&raw(None, None, Some(&h)), false),
            Err(ContextError::HeaderWithoutUser { tenant: T.into() })
        );
        // No header: nothing, even for the service role.
        assert_eq!(
            resolve_as(&raw(None, None, Some("{}")), true),
            Ok(Source::None)
        );
        // Malformed is malformed for it too.
        assert!(resolve_as(&raw(None, None, Some(r#"{"x-tenant-id": "x"}"#)), true).is_err());
    }

    #[test]
    fn scope_header_narrows_to_the_own_tenant() {
        let r = |h: &str| own_only(&raw(None, None, Some(h)));
        assert_eq!(r("{}"), Ok(false));
        assert_eq!(r(r#"{"x-tenant-scope": "own"}"#), Ok(true));
        assert_eq!(r(r#"{"X-Tenant-Scope": " OWN "}"#), Ok(true));
        assert_eq!(r(r#"{"x-tenant-scope": "shared"}"#), Ok(false));
        assert!(matches!(
            r(r#"{"x-tenant-scope": "all"}"#),
            Err(ContextError::MalformedScope { .. })
        ));
        assert!(r(r#"{"x-tenant-scope": 1}"#).is_err());
        assert_eq!(own_only(&raw(None, None, None)), Ok(false));
    }

    #[test]
    fn uuid_formatting_round_trips() {
        assert_eq!(format_uuid(&b(T)), T);
        assert_eq!(format_uuid(&b(U)), U);
    }
}
