//! Tenant classification rules: normalisation, tier parsing, rule sets and their
//! evaluation. Pure Rust; the pgrx glue (caching, SQL functions) is `crate::classify`.
//!
//! A rule set is an ordered list of rules and a default tenant; the first rule with a
//! matching condition decides. A rule matches when ANY of its conditions matches,
//! which is how the migration plan's rules read ("name contains PRISM, or domain in
//! …"). The plan tests membership with JavaScript's `in` on arrays, which checks
//! indexes, not values; here membership means membership.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

use super::tenants::{DIGITAL_HEALTH, PHARMA, PLATFORM};

/// What kind of row a rule set classifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Prompt,
    Knowledge,
    Agent,
    Tool,
}

impl Kind {
    pub const CONFIGURABLE: [Kind; 3] = [Kind::Prompt, Kind::Knowledge, Kind::Agent];

    pub fn parse(s: &str) -> Option<Kind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "prompt" | "prompts" => Some(Kind::Prompt),
            "knowledge" | "knowledge_base" | "knowledge_chunk" => Some(Kind::Knowledge),
            "agent" | "agents" => Some(Kind::Agent),
            "tool" | "tools" => Some(Kind::Tool),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Prompt => "prompt",
            Kind::Knowledge => "knowledge",
            Kind::Agent => "agent",
            Kind::Tool => "tool",
        }
    }

    /// The condition keys a rule of this kind may use.
    pub fn conditions(self) -> &'static [&'static str] {
        match self {
            Kind::Prompt => &["name_contains", "domain_in", "system_prompt"],
            Kind::Knowledge => &["domain_in", "tags_any"],
            Kind::Agent => &["tier_in", "knowledge_domains_any"],
            Kind::Tool => &[],
        }
    }
}

/// Trim, lower-case, and turn every run of spaces and hyphens into one underscore:
/// `' Digital - Health '` → `digital_health`, `FDA regulations` → `fda_regulations`.
/// Borrows when the input is already normal, so clean data costs no allocation.
pub fn normalize(s: &str) -> Cow<'_, str> {
    let t = s.trim();
    let already = t.bytes().all(|b| {
        !b.is_ascii_uppercase()
            && b != b' '
            && b != b'-'
            && b.is_ascii()
            && !b.is_ascii_whitespace()
    });
    if already {
        return Cow::Borrowed(t);
    }
    let mut out = String::with_capacity(t.len());
    let mut pending_sep = false;
    for ch in t.chars() {
        if ch == '-' || ch.is_whitespace() {
            pending_sep = true;
            continue;
        }
        if pending_sep {
            out.push('_');
            pending_sep = false;
        }
        for lc in ch.to_lowercase() {
            out.push(lc);
        }
    }
    Cow::Owned(out)
}

/// Parse an agent tier: `2`, `'2'`, `'tier_2'`, `'Tier 2'`, `'TIER-2'`, `'tier2'` are all
/// tier 2. Tiers are 0–3; anything else is no tier.
pub fn parse_tier(s: &str) -> Option<u8> {
    let lower = s.trim().to_ascii_lowercase();
    let digits = match lower.strip_prefix("tier") {
        Some(rest) => rest.trim_start_matches([' ', '_', '-']),
        None => lower.as_str(),
    };
    match digits.as_bytes() {
        [d @ b'0'..=b'9'] => tier_from_int(i64::from(d - b'0')),
        _ => None,
    }
}

/// An integer tier, if it is one of 0–3.
pub fn tier_from_int(n: i64) -> Option<u8> {
    if (0..=3).contains(&n) {
        Some(n as u8)
    } else {
        None
    }
}

/// One rule as a DBA writes it in JSON (`set_rules`). Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_contains: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_in: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags_any: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_in: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge_domains_any: Option<Vec<String>>,
}

/// A kind's whole rule set as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSetSpec {
    pub rules: Vec<RuleSpec>,
    pub default_tenant: String,
}

/// Why a rule set was refused; `field` is a path such as `rules[0].domain_in`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid rules at \"{}\": {}", self.field, self.message)
    }
}

/// A compiled rule: lists normalised once, tenant as bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub tenant: [u8; 16],
    name_contains: Vec<String>,
    domain_in: Vec<String>,
    system_prompt: bool,
    tags_any: Vec<String>,
    tier_in: Vec<u8>,
    knowledge_domains_any: Vec<String>,
}

/// A compiled rule set, ready to evaluate rows.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSet {
    pub kind: Kind,
    pub rules: Vec<Rule>,
    pub default_tenant: [u8; 16],
}

/// Which rule decided a row, and whether an agent had no recognised tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    pub tenant: [u8; 16],
    /// The deciding rule's name, or `None` for the default.
    pub rule: Option<&'a str>,
    pub no_tier: bool,
}

impl Decision<'_> {
    /// The rule as reported by explain/preview: `pharma_name_or_domain`, `default`,
    /// `default (no tier)`, ...
    pub fn label(&self) -> String {
        let base = self.rule.unwrap_or("default");
        if self.no_tier {
            format!("{base} (no tier)")
        } else {
            base.to_string()
        }
    }
}

/// A prompt as the rules see it.
#[derive(Debug, Default, Clone)]
pub struct PromptRow<'a> {
    pub name: Option<&'a str>,
    pub domain: Option<&'a str>,
    pub created_by_null: bool,
    pub is_system_prompt: Option<bool>,
}

/// A knowledge chunk as the rules see it.
#[derive(Debug, Default, Clone)]
pub struct KnowledgeRow<'a> {
    pub domain: Option<&'a str>,
    pub tags: Vec<Option<&'a str>>,
}

/// An agent as the rules see it: tier already parsed.
#[derive(Debug, Default, Clone)]
pub struct AgentRow<'a> {
    pub tier: Option<u8>,
    pub knowledge_domains: Vec<Option<&'a str>>,
}

fn contains_ci(haystack: &str, needle_lower: &str) -> bool {
    if needle_lower.is_empty() {
        return true;
    }
    if needle_lower.is_ascii() {
        let h = haystack.as_bytes();
        let n = needle_lower.as_bytes();
        h.len() >= n.len() && h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
    } else {
        haystack.to_lowercase().contains(needle_lower)
    }
}

fn in_list(value: Option<&str>, list: &[String]) -> bool {
    match value {
        Some(v) if !list.is_empty() => {
            let n = normalize(v);
            list.iter().any(|x| *x == n)
        }
        _ => false,
    }
}

fn any_in_list(values: &[Option<&str>], list: &[String]) -> bool {
    !list.is_empty() && values.iter().any(|v| in_list(*v, list))
}

impl RuleSet {
    fn decide(&self, matches: impl Fn(&Rule) -> bool, no_tier: bool) -> Decision<'_> {
        for r in &self.rules {
            if matches(r) {
                return Decision {
                    tenant: r.tenant,
                    rule: Some(&r.name),
                    no_tier,
                };
            }
        }
        Decision {
            tenant: self.default_tenant,
            rule: None,
            no_tier,
        }
    }

    pub fn classify_prompt(&self, p: &PromptRow<'_>) -> Decision<'_> {
        let system = p.created_by_null || p.is_system_prompt == Some(true);
        self.decide(
            |r| {
                p.name
                    .is_some_and(|n| r.name_contains.iter().any(|s| contains_ci(n, s)))
                    || in_list(p.domain, &r.domain_in)
                    || (r.system_prompt && system)
            },
            false,
        )
    }

    pub fn classify_knowledge(&self, k: &KnowledgeRow<'_>) -> Decision<'_> {
        self.decide(
            |r| in_list(k.domain, &r.domain_in) || any_in_list(&k.tags, &r.tags_any),
            false,
        )
    }

    pub fn classify_agent(&self, a: &AgentRow<'_>) -> Decision<'_> {
        self.decide(
            |r| {
                a.tier.is_some_and(|t| r.tier_in.contains(&t))
                    || any_in_list(&a.knowledge_domains, &r.knowledge_domains_any)
            },
            a.tier.is_none(),
        )
    }

    /// Compile a JSON rule set for `kind`, checking every field. Tenant ids are checked
    /// for syntax here; whether they exist is the caller's business.
    pub fn compile(kind: Kind, spec: &RuleSetSpec) -> Result<RuleSet, RuleError> {
        let err = |field: String, message: String| RuleError { field, message };
        let uuid = |field: String, s: &str| {
            super::tenants::uuid_bytes(s)
                .ok_or_else(|| err(field, format!("\"{s}\" is not a uuid")))
        };
        let allowed = kind.conditions();
        let mut rules = Vec::with_capacity(spec.rules.len());
        let mut names = std::collections::HashSet::new();
        for (i, r) in spec.rules.iter().enumerate() {
            let at = |f: &str| format!("rules[{i}].{f}");
            if r.name.trim().is_empty() {
                return Err(err(at("name"), "must not be empty".into()));
            }
            if !names.insert(r.name.clone()) {
                return Err(err(
                    at("name"),
                    format!("rule name \"{}\" is used twice", r.name),
                ));
            }
            let present: Vec<&str> = [
                ("name_contains", r.name_contains.is_some()),
                ("domain_in", r.domain_in.is_some()),
                ("system_prompt", r.system_prompt.is_some()),
                ("tags_any", r.tags_any.is_some()),
                ("tier_in", r.tier_in.is_some()),
                ("knowledge_domains_any", r.knowledge_domains_any.is_some()),
            ]
            .into_iter()
            .filter(|(_, p)| *p)
            .map(|(k, _)| k)
            .collect();
            if let Some(bad) = present.iter().find(|k| !allowed.contains(k)) {
                return Err(err(
                    at(bad),
                    format!(
                        "a {} rule cannot use \"{bad}\"; it may use {}",
                        kind.as_str(),
                        allowed.join(", ")
                    ),
                ));
            }
            if present.is_empty() {
                return Err(err(
                    format!("rules[{i}]"),
                    format!(
                        "rule \"{}\" has no condition; use one of {}",
                        r.name,
                        allowed.join(", ")
                    ),
                ));
            }
            let norm_list = |f: &str, l: &Option<Vec<String>>| -> Result<Vec<String>, RuleError> {
                let l = l.as_deref().unwrap_or(&[]);
                l.iter()
                    .enumerate()
                    .map(|(j, s)| {
                        let n = normalize(s).into_owned();
                        if n.is_empty() {
                            Err(err(
                                format!("rules[{i}].{f}[{j}]"),
                                "must not be empty".into(),
                            ))
                        } else {
                            Ok(n)
                        }
                    })
                    .collect()
            };
            let mut tier_in = Vec::new();
            for (j, t) in r.tier_in.as_deref().unwrap_or(&[]).iter().enumerate() {
                match tier_from_int(*t) {
                    Some(t) => tier_in.push(t),
                    None => {
                        return Err(err(
                            format!("rules[{i}].tier_in[{j}]"),
                            format!("tier {t} is not one of 0, 1, 2, 3"),
                        ))
                    }
                }
            }
            let name_contains = r
                .name_contains
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    if s.is_empty() {
                        Err(err(
                            format!("rules[{i}].name_contains[{j}]"),
                            "must not be empty".into(),
                        ))
                    } else {
                        Ok(s.to_lowercase())
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            if r.system_prompt == Some(false) {
                return Err(err(
                    at("system_prompt"),
                    "only true is meaningful (matches created_by IS NULL or is_system_prompt); omit it instead".into(),
                ));
            }
            rules.push(Rule {
                name: r.name.clone(),
                tenant: uuid(at("tenant"), &r.tenant)?,
                name_contains,
                domain_in: norm_list("domain_in", &r.domain_in)?,
                system_prompt: r.system_prompt == Some(true),
                tags_any: norm_list("tags_any", &r.tags_any)?,
                tier_in,
                knowledge_domains_any: norm_list(
                    "knowledge_domains_any",
                    &r.knowledge_domains_any,
                )?,
            });
        }
        Ok(RuleSet {
            kind,
            rules,
            default_tenant: uuid("default_tenant".into(), &spec.default_tenant)?,
        })
    }

    /// Parse and compile a JSON rule set, naming the failing field.
    pub fn from_json(
        kind: Kind,
        value: &serde_json::Value,
    ) -> Result<(RuleSetSpec, RuleSet), RuleError> {
        if !value.is_object() {
            return Err(RuleError {
                field: "$".into(),
                message: "rules must be a JSON object".into(),
            });
        }
        let spec: RuleSetSpec = serde_path_to_error::deserialize(value).map_err(|e| RuleError {
            field: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
        let set = RuleSet::compile(kind, &spec)?;
        Ok((spec, set))
    }
}

/// The most rules a rule set may hold, and its largest JSON text: a rule costs about
/// 8 kB of memory in every backend that classifies (50,000 rules held 100 MB each;
/// census N11); the built-in sets hold fewer than 20.
pub const MAX_RULES: usize = 1000;
pub const MAX_RULES_BYTES: usize = 1 << 20;

/// Why a rule set is too large to accept, if it is.
pub fn size_problem(value: &serde_json::Value) -> Option<String> {
    let bytes = value.to_string().len();
    if bytes > MAX_RULES_BYTES {
        return Some(format!(
            "the rule set is {bytes} bytes of JSON; at most {MAX_RULES_BYTES}"
        ));
    }
    let n = value
        .get("rules")
        .and_then(|r| r.as_array())
        .map_or(0, |a| a.len());
    (n > MAX_RULES).then(|| format!("the rule set has {n} rules; at most {MAX_RULES}"))
}

fn rule(name: &str, tenant: &str) -> RuleSpec {
    RuleSpec {
        name: name.into(),
        tenant: tenant.into(),
        name_contains: None,
        domain_in: None,
        system_prompt: None,
        tags_any: None,
        tier_in: None,
        knowledge_domains_any: None,
    }
}

fn strings(v: &[&str]) -> Option<Vec<String>> {
    Some(v.iter().map(|s| s.to_string()).collect())
}

/// The built-in rules of the migration plan (Phase 4.1, as reconciled by the issue).
pub fn default_spec(kind: Kind) -> RuleSetSpec {
    let (p, d, f) = (PLATFORM.id, DIGITAL_HEALTH.id, PHARMA.id);
    match kind {
        Kind::Prompt => RuleSetSpec {
            rules: vec![
                RuleSpec {
                    name_contains: strings(&["PRISM"]),
                    domain_in: strings(&[
                        "regulatory_affairs",
                        "clinical_research",
                        "pharmacovigilance",
                    ]),
                    ..rule("pharma_name_or_domain", f)
                },
                RuleSpec {
                    domain_in: strings(&["digital_health", "digital_medicine"]),
                    ..rule("digital_health_domain", d)
                },
                RuleSpec {
                    system_prompt: Some(true),
                    ..rule("system_prompt", p)
                },
            ],
            default_tenant: d.into(),
        },
        Kind::Knowledge => RuleSetSpec {
            rules: vec![
                RuleSpec {
                    domain_in: strings(&["digital_health"]),
                    tags_any: strings(&["digital_medicine"]),
                    ..rule("digital_health_domain_or_tag", d)
                },
                RuleSpec {
                    domain_in: strings(&["regulatory", "clinical_trials", "pharmacovigilance"]),
                    ..rule("pharma_domain", f)
                },
                RuleSpec {
                    domain_in: strings(&["general_medicine", "healthcare_standards"]),
                    ..rule("platform_domain", p)
                },
            ],
            default_tenant: d.into(),
        },
        Kind::Agent => RuleSetSpec {
            rules: vec![
                RuleSpec {
                    tier_in: Some(vec![0, 1, 2]),
                    ..rule("platform_tier", p)
                },
                RuleSpec {
                    knowledge_domains_any: strings(&[
                        "digital_health",
                        "telemedicine",
                        "wearables",
                    ]),
                    ..rule("digital_health_domain", d)
                },
                RuleSpec {
                    knowledge_domains_any: strings(&[
                        "regulatory_affairs",
                        "clinical_trials",
                        "pharmacovigilance",
                    ]),
                    ..rule("pharma_domain", f)
                },
            ],
            default_tenant: d.into(),
        },
        Kind::Tool => RuleSetSpec {
            rules: vec![],
            default_tenant: p.into(),
        },
    }
}

/// The compiled built-in rules. They are constants checked by the unit tests.
pub fn default_rules(kind: Kind) -> RuleSet {
    match RuleSet::compile(kind, &default_spec(kind)) {
        Ok(r) => r,
        Err(e) => unreachable!("built-in {} rules do not compile: {e}", kind.as_str()),
    }
}

/// The prompt `suite` enrichment: the suite the VITAL app shows for a prompt domain
/// (`/api/prompts-crud`). PRISM suites for the pharma domains, BRIDGE™ for digital
/// health, `None` otherwise.
pub fn domain_suite(domain: &str) -> Option<&'static str> {
    match normalize(domain).as_ref() {
        "regulatory_affairs" => Some("RULES™"),
        "clinical_research" => Some("TRIALS™"),
        "pharmacovigilance" => Some("GUARD™"),
        "market_access" => Some("VALUE™"),
        "digital_health" | "digital_medicine" => Some("BRIDGE™"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rule_sets_beyond_the_limits_are_too_large() {
        let rules = |n: usize| {
            serde_json::json!({
                "rules": (0..n).map(|i| serde_json::json!({"name": format!("r{i}"), "tenant": PLATFORM.id, "name_contains": ["x"]})).collect::<Vec<_>>(),
                "default_tenant": PLATFORM.id
            })
        };
        assert_eq!(size_problem(&rules(MAX_RULES)), None);
        assert_eq!(
            size_problem(&rules(MAX_RULES + 1)),
            Some("the rule set has 1001 rules; at most 1000".into())
        );
        let big = serde_json::json!({"rules": [], "default_tenant": "x".repeat(MAX_RULES_BYTES)});
        assert!(size_problem(&big)
            .unwrap()
            .ends_with("bytes of JSON; at most 1048576"));
    }

    use super::*;
    use serde_json::json;

    const P: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    fn d() -> [u8; 16] {
        super::super::tenants::uuid_bytes(DIGITAL_HEALTH.id).unwrap()
    }
    fn f() -> [u8; 16] {
        super::super::tenants::uuid_bytes(PHARMA.id).unwrap()
    }

    #[test]
    fn normalisation_table() {
        let cases = [
            ("digital_health", "digital_health"),
            ("digital-health", "digital_health"),
            ("Digital Health", "digital_health"),
            ("  DIGITAL -  health  ", "digital_health"),
            ("FDA regulations", "fda_regulations"),
            ("fda_regulations", "fda_regulations"),
            ("Clinical research", "clinical_research"),
            ("a--b", "a_b"),
            ("a\tb", "a_b"),
            ("", ""),
            ("   ", ""),
            ("Ärzte Netz", "ärzte_netz"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), want, "{input:?}");
        }
        assert!(matches!(normalize("already_normal"), Cow::Borrowed(_)));
    }

    #[test]
    fn tier_table() {
        for s in [
            "2", " 2 ", "tier_2", "Tier 2", "TIER-2", "tier2", "tier  2", "Tier_-2",
        ] {
            assert_eq!(parse_tier(s), Some(2), "{s:?}");
        }
        assert_eq!(parse_tier("0"), Some(0));
        assert_eq!(parse_tier("tier_3"), Some(3));
        for s in [
            "", "tier", "4", "tier_4", "-1", "22", "two", "tier 2a", "t2", "_2", "core", "2.0",
        ] {
            assert_eq!(parse_tier(s), None, "{s:?}");
        }
        assert_eq!(tier_from_int(3), Some(3));
        assert_eq!(tier_from_int(4), None);
        assert_eq!(tier_from_int(-1), None);
    }

    #[test]
    fn prompt_rules_in_order() {
        let rs = default_rules(Kind::Prompt);
        let c = |name, domain, created_by_null, sys| {
            let d = rs.classify_prompt(&PromptRow {
                name,
                domain,
                created_by_null,
                is_system_prompt: sys,
            });
            (d.tenant, d.label())
        };
        // (1) PRISM in name, any case; beats the system-prompt rule.
        assert_eq!(
            c(Some("My prism prompt"), Some("general"), true, Some(true)),
            (f(), "pharma_name_or_domain".into())
        );
        // (1) pharma domains, with messy spellings.
        assert_eq!(
            c(Some("x"), Some("Clinical-Research"), false, None),
            (f(), "pharma_name_or_domain".into())
        );
        assert_eq!(c(Some("x"), Some("pharmacovigilance"), false, None).0, f());
        // (2) digital health beats system prompt.
        assert_eq!(
            c(Some("x"), Some("digital-health"), true, None),
            (d(), "digital_health_domain".into())
        );
        assert_eq!(c(Some("x"), Some("Digital Medicine"), true, None).0, d());
        // (3) system prompts: created_by NULL or the flag.
        assert_eq!(
            c(Some("x"), Some("general"), true, None),
            (P, "system_prompt".into())
        );
        assert_eq!(
            c(Some("x"), Some("general"), false, Some(true)),
            (P, "system_prompt".into())
        );
        // (4) default.
        assert_eq!(
            c(Some("x"), Some("general"), false, Some(false)),
            (d(), "default".into())
        );
        // NULLs follow the rule order.
        assert_eq!(c(None, None, false, None), (d(), "default".into()));
        assert_eq!(c(None, None, true, None).0, P);
    }

    #[test]
    fn knowledge_rules_in_order() {
        let rs = default_rules(Kind::Knowledge);
        let c = |domain, tags: Vec<Option<&'static str>>| {
            let d = rs.classify_knowledge(&KnowledgeRow { domain, tags });
            (d.tenant, d.label())
        };
        assert_eq!(c(Some("digital_health"), vec![]).0, d());
        // a tag beats a pharma domain
        assert_eq!(
            c(Some("regulatory"), vec![Some("Digital-Medicine")]),
            (d(), "digital_health_domain_or_tag".into())
        );
        assert_eq!(
            c(Some("clinical trials"), vec![None]),
            (f(), "pharma_domain".into())
        );
        assert_eq!(
            c(Some("General Medicine"), vec![]),
            (P, "platform_domain".into())
        );
        assert_eq!(
            c(Some("regulatory_affairs"), vec![]),
            (d(), "default".into())
        );
        assert_eq!(c(None, vec![]), (d(), "default".into()));
    }

    #[test]
    fn agent_rules_in_order() {
        let rs = default_rules(Kind::Agent);
        let c = |tier, kd: Vec<Option<&'static str>>| {
            let d = rs.classify_agent(&AgentRow {
                tier,
                knowledge_domains: kd,
            });
            (d.tenant, d.label())
        };
        for t in [0, 1, 2] {
            assert_eq!(
                c(Some(t), vec![Some("pharmacovigilance")]),
                (P, "platform_tier".into())
            );
        }
        // tier 3: digital beats pharma, whatever the array order
        assert_eq!(
            c(
                Some(3),
                vec![Some("pharmacovigilance"), Some("Tele-medicine")]
            )
            .0,
            f()
        );
        assert_eq!(
            c(
                Some(3),
                vec![Some("pharmacovigilance"), Some("telemedicine")]
            ),
            (d(), "digital_health_domain".into())
        );
        assert_eq!(
            c(Some(3), vec![Some("Clinical Trials")]),
            (f(), "pharma_domain".into())
        );
        assert_eq!(c(Some(3), vec![]), (d(), "default".into()));
        assert_eq!(
            c(None, vec![Some("wearables")]),
            (d(), "digital_health_domain (no tier)".into())
        );
        assert_eq!(c(None, vec![]), (d(), "default (no tier)".into()));
    }

    #[test]
    fn huge_strings_work() {
        let rs = default_rules(Kind::Prompt);
        let mut name = "x".repeat(4 << 20);
        name.push_str("PrIsM");
        let d = rs.classify_prompt(&PromptRow {
            name: Some(&name),
            ..Default::default()
        });
        assert_eq!(d.tenant, f());
        let domain = "Digital ".repeat(1 << 18);
        let d = rs.classify_prompt(&PromptRow {
            domain: Some(&domain),
            ..Default::default()
        });
        assert_eq!(d.label(), "default");
    }

    #[test]
    fn default_specs_round_trip_through_json() {
        for k in Kind::CONFIGURABLE {
            let v = serde_json::to_value(default_spec(k)).unwrap();
            let (_, set) = RuleSet::from_json(k, &v).unwrap();
            assert_eq!(set, default_rules(k));
        }
    }

    #[test]
    fn invalid_rules_name_the_field() {
        let bad = |k, v: serde_json::Value| RuleSet::from_json(k, &v).unwrap_err();
        let e = bad(Kind::Prompt, json!([]));
        assert_eq!(e.field, "$");
        let e = bad(
            Kind::Prompt,
            json!({"rules": [], "default_tenant": P_STR, "extra": 1}),
        );
        assert!(e.message.contains("extra"), "{e}");
        let e = bad(
            Kind::Prompt,
            json!({"rules": [{"name": "a", "tenant": P_STR, "domains": ["x"]}], "default_tenant": P_STR}),
        );
        assert!(e.message.contains("domains"), "{e}");
        assert_eq!(e.field, "rules[0].domains");
        let e = bad(
            Kind::Prompt,
            json!({"rules": [{"name": "a", "tenant": P_STR, "domain_in": "x"}], "default_tenant": P_STR}),
        );
        assert_eq!(e.field, "rules[0].domain_in");
        let e = bad(
            Kind::Agent,
            json!({"rules": [{"name": "a", "tenant": P_STR, "tier_in": [7]}], "default_tenant": P_STR}),
        );
        assert_eq!(e.field, "rules[0].tier_in[0]");
        let e = bad(
            Kind::Agent,
            json!({"rules": [{"name": "a", "tenant": P_STR, "domain_in": ["x"]}], "default_tenant": P_STR}),
        );
        assert_eq!(e.field, "rules[0].domain_in");
        let e = bad(
            Kind::Knowledge,
            json!({"rules": [{"name": "a", "tenant": "nope", "tags_any": ["x"]}], "default_tenant": P_STR}),
        );
        assert_eq!(e.field, "rules[0].tenant");
        let e = bad(
            Kind::Knowledge,
            json!({"rules": [{"name": "a", "tenant": P_STR}], "default_tenant": P_STR}),
        );
        assert_eq!(e.field, "rules[0]");
        let e = bad(Kind::Knowledge, json!({"rules": []}));
        assert!(e.message.contains("default_tenant"), "{e}");
        let e = bad(
            Kind::Knowledge,
            json!({"rules": [{"name": "a", "tenant": P_STR, "tags_any": ["x"]}, {"name": "a", "tenant": P_STR, "tags_any": ["y"]}], "default_tenant": P_STR}),
        );
        assert_eq!(e.field, "rules[1].name");
    }

    const P_STR: &str = "00000000-0000-0000-0000-000000000001";

    #[test]
    fn suites() {
        assert_eq!(domain_suite("Regulatory Affairs"), Some("RULES™"));
        assert_eq!(domain_suite("clinical-research"), Some("TRIALS™"));
        assert_eq!(domain_suite("pharmacovigilance"), Some("GUARD™"));
        assert_eq!(domain_suite("market_access"), Some("VALUE™"));
        assert_eq!(domain_suite("digital-health"), Some("BRIDGE™"));
        assert_eq!(domain_suite("general"), None);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn normalize_is_idempotent_and_total(s in ".*") {
                let once = normalize(&s).into_owned();
                prop_assert_eq!(normalize(&once).into_owned(), once.clone());
                prop_assert!(!once.contains(' ') && !once.contains('-'));
            }

            #[test]
            fn prompt_classifier_is_total_and_deterministic(
                name in proptest::option::of(".*"), domain in proptest::option::of(".*"),
                cb in any::<bool>(), sys in proptest::option::of(any::<bool>())
            ) {
                let rs = default_rules(Kind::Prompt);
                let row = PromptRow { name: name.as_deref(), domain: domain.as_deref(), created_by_null: cb, is_system_prompt: sys };
                let a = rs.classify_prompt(&row);
                let b = rs.classify_prompt(&row);
                prop_assert_eq!(a, b);
            }

            #[test]
            fn knowledge_classifier_is_total_and_deterministic(
                domain in proptest::option::of(".*"), tags in proptest::collection::vec(proptest::option::of(".*"), 0..5)
            ) {
                let rs = default_rules(Kind::Knowledge);
                let row = KnowledgeRow { domain: domain.as_deref(), tags: tags.iter().map(|t| t.as_deref()).collect() };
                prop_assert_eq!(rs.classify_knowledge(&row), rs.classify_knowledge(&row));
            }

            #[test]
            fn agent_classifier_is_total_and_deterministic(
                tier in ".*", kd in proptest::collection::vec(proptest::option::of(".*"), 0..5)
            ) {
                let rs = default_rules(Kind::Agent);
                let row = AgentRow { tier: parse_tier(&tier), knowledge_domains: kd.iter().map(|t| t.as_deref()).collect() };
                let a = rs.classify_agent(&row);
                prop_assert_eq!(a, rs.classify_agent(&row));
                prop_assert_eq!(a.no_tier, parse_tier(&tier).is_none());
            }

            #[test]
            fn tier_accepts_exactly_the_documented_forms(n in 0u8..4, sep in "[ _-]{0,3}", upper in any::<bool>()) {
                let word = if upper { "TIER" } else { "tier" };
                let s = format!("{word}{sep}{n}");
                prop_assert_eq!(parse_tier(&s), Some(n));
            }
        }
    }
}
