//! SQL identifier parsing and quoting.
//!
//! User-supplied table names (`'public.tenants'`, `'"My Schema".tenants'`) are parsed
//! here with PostgreSQL's own rules, then always re-quoted before they reach SQL text,
//! so no user input is ever spliced into a statement unquoted.

use std::fmt;

/// Why a qualified name was refused. Each variant names the offending input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentError {
    Empty,
    NotQualified(String),
    TooManyParts(String),
    Unterminated(String),
    Malformed(String),
}

impl fmt::Display for IdentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentError::Empty => write!(f, "table name is empty"),
            IdentError::NotQualified(s) => write!(
                f,
                "table name \"{s}\" must be schema-qualified, for example \"public.{s}\""
            ),
            IdentError::TooManyParts(s) => {
                write!(
                    f,
                    "table name \"{s}\" has too many dotted parts; expected schema.table"
                )
            }
            IdentError::Unterminated(s) => {
                write!(
                    f,
                    "table name \"{s}\" has an unterminated quoted identifier"
                )
            }
            IdentError::Malformed(s) => write!(f, "table name \"{s}\" is not a valid identifier"),
        }
    }
}

/// A parsed `schema.table` pair, already case-folded like PostgreSQL does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    /// The name as SQL text, both parts always double-quoted.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// For messages: quotes only the parts that need it (`public.tenants`,
/// `"My Schema".tenants`). Never use this form in SQL text; use [`QualifiedName::quoted`].
impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            display_ident(&self.schema),
            display_ident(&self.name)
        )
    }
}

/// An identifier as a person would write it: bare when it is a plain lower-case
/// name, double-quoted otherwise.
pub fn display_ident(ident: &str) -> String {
    let plain = ident
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        ident.to_string()
    } else {
        quote_ident(ident)
    }
}

/// Double-quote an identifier, doubling embedded quotes. Always quotes, which is
/// correct for every identifier (the parser already folded case).
pub fn quote_ident(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len() + 2);
    out.push('"');
    for ch in ident.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// A SQL string literal as PostgreSQL's `quote_literal()` writes it: quotes doubled,
/// and where the text holds a backslash, an `E'…'` literal with backslashes doubled,
/// which reads the same whatever `standard_conforming_strings` is (F23).
pub fn quote_literal(s: &str) -> String {
    let quoted = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// Parse `schema.table` the way PostgreSQL's `parse_ident()` does: unquoted parts are
/// lower-cased and may not contain spaces or quotes; quoted parts keep their case and
/// may contain anything, with `""` standing for one quote. Surrounding whitespace of
/// each part is ignored.
pub fn parse_qualified(input: &str) -> Result<QualifiedName, IdentError> {
    let parts = split_parts(input)?;
    match parts.len() {
        0 => Err(IdentError::Empty),
        1 => Err(IdentError::NotQualified(parts[0].clone())),
        2 => {
            let mut it = parts.into_iter();
            let schema = it.next().unwrap_or_default();
            let name = it.next().unwrap_or_default();
            Ok(QualifiedName { schema, name })
        }
        _ => Err(IdentError::TooManyParts(input.to_string())),
    }
}

/// The longest name PostgreSQL keeps (NAMEDATALEN - 1 bytes).
pub const MAX_IDENT_BYTES: usize = 63;

/// A name cut to [`MAX_IDENT_BYTES`] on a character boundary, as PostgreSQL's
/// `truncate_identifier` does to every identifier it reads (quoted or not), so that
/// a longer name finds the object PostgreSQL made of it.
pub fn truncate_identifier(name: &str) -> &str {
    if name.len() <= MAX_IDENT_BYTES {
        return name;
    }
    let mut end = MAX_IDENT_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn split_parts(input: &str) -> Result<Vec<String>, IdentError> {
    if input.trim().is_empty() {
        return Err(IdentError::Empty);
    }
    let chars: Vec<char> = input.chars().collect();
    let mut parts = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut part = String::new();
        if i < chars.len() && chars[i] == '"' {
            i += 1;
            loop {
                if i >= chars.len() {
                    return Err(IdentError::Unterminated(input.to_string()));
                }
                if chars[i] == '"' {
                    if i + 1 < chars.len() && chars[i + 1] == '"' {
                        part.push('"');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                part.push(chars[i]);
                i += 1;
            }
            if part.is_empty() {
                return Err(IdentError::Malformed(input.to_string()));
            }
        } else {
            while i < chars.len() && chars[i] != '.' && !chars[i].is_whitespace() {
                if chars[i] == '"' {
                    return Err(IdentError::Malformed(input.to_string()));
                }
                part.push(chars[i]);
                i += 1;
            }
            if part.is_empty() {
                return Err(IdentError::Malformed(input.to_string()));
            }
            // As PostgreSQL's downcase_identifier in a multibyte (UTF-8) database: only
            // ASCII letters fold; "Ärzte" stays "Ärzte" (issue 16).
            part = part.to_ascii_lowercase();
        }
        parts.push(truncate_identifier(&part).to_string());
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        if chars[i] != '.' {
            return Err(IdentError::Malformed(input.to_string()));
        }
        i += 1;
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_to_63_bytes_on_a_character_boundary() {
        let t64 = "t".repeat(64);
        let q = parse_qualified(&format!("fz.{t64}")).unwrap();
        assert_eq!(q.name, "t".repeat(63));
        let quoted = parse_qualified(&format!("fz.\"{}\"", "T".repeat(70))).unwrap();
        assert_eq!(quoted.name, "T".repeat(63));
        // 62 ASCII bytes then a two-byte letter: the letter does not fit and goes whole.
        let mixed = format!("{}Äx", "a".repeat(62));
        assert_eq!(truncate_identifier(&mixed), "a".repeat(62));
        assert_eq!(truncate_identifier("Ärzte"), "Ärzte");
    }

    #[test]
    fn unquoted_names_fold_ascii_only_as_postgresql_does_in_utf8() {
        let n = parse_qualified("Ärzte.Tenants").unwrap();
        assert_eq!((n.schema.as_str(), n.name.as_str()), ("Ärzte", "tenants"));
        let n = parse_qualified("public.ÉTAT").unwrap();
        assert_eq!(n.name, "État");
    }

    fn q(schema: &str, name: &str) -> QualifiedName {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    #[test]
    fn parses_plain_and_folds_case() {
        assert_eq!(
            parse_qualified("public.tenants"),
            Ok(q("public", "tenants"))
        );
        assert_eq!(
            parse_qualified("Public.Tenants"),
            Ok(q("public", "tenants"))
        );
        assert_eq!(parse_qualified("  app . tenants "), Ok(q("app", "tenants")));
    }

    #[test]
    fn parses_quoted_parts() {
        assert_eq!(
            parse_qualified("\"My Schema\".\"Ten.ants\""),
            Ok(q("My Schema", "Ten.ants"))
        );
        assert_eq!(parse_qualified("s.\"a\"\"b\""), Ok(q("s", "a\"b")));
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(parse_qualified(""), Err(IdentError::Empty));
        assert_eq!(parse_qualified("   "), Err(IdentError::Empty));
        assert_eq!(
            parse_qualified("tenants"),
            Err(IdentError::NotQualified("tenants".into()))
        );
        assert!(matches!(
            parse_qualified("a.b.c"),
            Err(IdentError::TooManyParts(_))
        ));
        assert!(matches!(
            parse_qualified("a.\"b"),
            Err(IdentError::Unterminated(_))
        ));
        assert!(matches!(
            parse_qualified("a..b"),
            Err(IdentError::Malformed(_))
        ));
        assert!(matches!(
            parse_qualified("a.b c"),
            Err(IdentError::Malformed(_))
        ));
        assert!(matches!(
            parse_qualified("a.\"\""),
            Err(IdentError::Malformed(_))
        ));
        assert!(matches!(
            parse_qualified("a.b\"c"),
            Err(IdentError::Malformed(_))
        ));
        assert!(matches!(
            parse_qualified("a."),
            Err(IdentError::Malformed(_))
        ));
    }

    #[test]
    fn quoting_round_trips() {
        for name in [
            "tenants",
            "Mixed Case",
            "we\"ird",
            "a.b",
            "drop table x; --",
        ] {
            let qn = q("s", name);
            assert_eq!(parse_qualified(&qn.quoted()), Ok(qn.clone()));
        }
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"back\slash'"), r"E'back\\slash'''");
    }

    #[test]
    fn display_quotes_only_when_needed() {
        assert_eq!(q("public", "tenants").to_string(), "public.tenants");
        assert_eq!(q("My Schema", "t1").to_string(), "\"My Schema\".t1");
        assert_eq!(q("s", "1abc").to_string(), "s.\"1abc\"");
        assert_eq!(q("s", "Tenants").quoted(), "\"s\".\"Tenants\"");
    }
}
