//! Tenant-scoped keys and references (migration 007), as a tenant's user through a
//! PostgREST-shaped request on the migrated real fixture: before 007 a global unique
//! key tells Digital Health whether Pharmaceuticals uses a name, and a Digital Health
//! row can point at a Pharmaceuticals row (the tests of the hazard, so they can fail);
//! after it neither works, Platform parents still do, the real data passes, and a
//! second run of 007 finds nothing to do.

use postgres::Client;
use vital_tenancy_e2e::{
    literal, migrate, psql_file, repo_root, FixtureDb, DIGITAL, PHARMA, PLATFORM,
};

/// A request as a Digital Health user; its rows, or (SQLSTATE, message).
fn as_digital_health(
    c: &mut Client,
    sql: &str,
) -> Result<vital_tenancy_e2e::Rows, vital_tenancy_e2e::Failure> {
    let claims = format!(r#"{{"role": "authenticated", "tenant_id": "{DIGITAL}"}}"#);
    vital_tenancy_e2e::postgrest(c, "authenticated", &claims, "{}", true, sql)
}

fn one_id(dba: &mut Client, sql: &str) -> String {
    dba.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[test]
fn keys_and_references_are_per_tenant_after_007() {
    let db = FixtureDb::new("keys");
    let mut dba = db.dba();
    dba.batch_execute("CREATE EXTENSION vital_tenancy").unwrap();
    // The migration up to 006, as a database that has not run 007 yet.
    let dir = std::env::temp_dir().join(format!("vt-migrations-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(repo_root().join("sql/migrations"))
        .unwrap()
        .flatten()
    {
        let name = f.file_name().into_string().unwrap();
        if !name.starts_with("007") {
            std::fs::copy(f.path(), dir.join(&name)).unwrap();
        }
    }
    let (ok, out, err) = migrate(&db.name, &["--migrations", dir.to_str().unwrap()]);
    assert!(ok, "migration 000-006 failed: {out}\n{err}");
    dba.batch_execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_keys_authenticator') THEN
             CREATE ROLE vt_keys_authenticator LOGIN NOINHERIT; END IF; END $$;
         GRANT anon, authenticated, vital_tenancy_context TO vt_keys_authenticator;",
    )
    .unwrap();
    let pharma_prompt = one_id(&mut dba, &format!("SELECT name::text FROM public.prompts WHERE tenant_id = '{PHARMA}' ORDER BY name LIMIT 1"));
    // A Pharmaceuticals message (the finding: a Digital Health reply pinned to it) and a
    // shared Platform knowledge source, written by the DBA.
    let pharma_message = one_id(
        &mut dba,
        &format!("INSERT INTO public.messages (role, content, tenant_id) VALUES ('user', 'pharma thread', '{PHARMA}') RETURNING id::text"),
    );
    let platform_source = one_id(
        &mut dba,
        &format!("INSERT INTO public.knowledge_sources (title, domain, tenant_id) VALUES ('Shared guideline', 'general_medicine', '{PLATFORM}') RETURNING id::text"),
    );
    let dh_source = one_id(
        &mut dba,
        &format!("INSERT INTO public.knowledge_sources (title, domain, tenant_id) VALUES ('DH notes', 'digital_health', '{DIGITAL}') RETURNING id::text"),
    );
    let mut pgrst = db.connect_as("vt_keys_authenticator");
    let insert_prompt = |name: &str| {
        format!(
            "INSERT INTO public.prompts (name, display_name, description) VALUES ({}, 'x', 'x') ON CONFLICT DO NOTHING RETURNING tenant_id::text",
            literal(name)
        )
    };
    let reply = |parent: &str| {
        format!("INSERT INTO public.messages (role, content, parent_message_id) VALUES ('user', 'reply', '{parent}') RETURNING id")
    };
    let insert_chunk = |source: &str| {
        format!(
            "INSERT INTO public.knowledge_base (source_id, chunk_index, content, content_hash, domain)
             VALUES ('{source}', 0, 'x', 'x', 'digital_health') RETURNING id"
        )
    };

    // Before 007: the hazards are real.
    let r = as_digital_health(&mut pgrst, &insert_prompt(&pharma_prompt)).unwrap();
    assert!(
        r.is_empty(),
        "before 007: ON CONFLICT tells Digital Health that Pharmaceuticals has the name"
    );
    let r = as_digital_health(&mut pgrst, &reply(&pharma_message)).unwrap();
    assert_eq!(
        r.len(),
        1,
        "before 007: a Digital Health reply points at a Pharmaceuticals message"
    );
    let plan: i64 = dba
        .query_one(
            "SELECT count(*) FROM vital_tenancy.tenant_keys_plan() WHERE ddl IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(plan > 0);

    // 007 on the real data.
    let (ok, err) = psql_file(
        &db.name,
        &repo_root().join("sql/migrations/007_tenant_keys.sql"),
    );
    assert!(ok, "007 failed on the real fixture: {err}");
    let left: i64 = dba
        .query_one(
            "SELECT count(*) FROM vital_tenancy.tenant_keys_plan() WHERE ddl IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let key: String = dba
        .query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'public.prompts'::regclass AND conname = 'prompts_name_key'", &[])
        .unwrap()
        .get(0);
    assert_eq!(key, "UNIQUE (tenant_id, name)");

    // After: the name is Digital Health's to use, and unique within it.
    let r = as_digital_health(&mut pgrst, &insert_prompt(&pharma_prompt)).unwrap();
    assert_eq!(
        r,
        vec![vec![Some(DIGITAL.to_string())]],
        "after 007 the name is free for Digital Health"
    );
    let twice = format!(
        "{}; INSERT INTO public.prompts (name, display_name, description) VALUES ({}, 'x', 'x')",
        insert_prompt(&pharma_prompt),
        literal(&pharma_prompt)
    );
    assert_eq!(
        as_digital_health(&mut pgrst, &twice).map_err(|e| e.0),
        Err("23505".into())
    );
    // A reference to another tenant's row fails exactly like one to a row that does not exist.
    let missing = "99999999-9999-4999-8999-999999999999";
    let (code_a, msg_a) = as_digital_health(&mut pgrst, &reply(&pharma_message)).unwrap_err();
    let (code_b, msg_b) = as_digital_health(&mut pgrst, &reply(missing)).unwrap_err();
    assert_eq!((code_a.as_str(), code_b.as_str()), ("23503", "23503"));
    assert_eq!(
        msg_a.replace(&pharma_message, "<key>"),
        msg_b.replace(missing, "<key>"),
        "same error either way"
    );
    // Platform parents still work: a Digital Health chunk of a shared Platform source.
    let r = as_digital_health(&mut pgrst, &insert_chunk(&platform_source));
    assert_eq!(
        r.map(|r| r.len()),
        Ok(1),
        "a Platform parent must be allowed"
    );
    // Its own parents too.
    assert_eq!(
        as_digital_health(&mut pgrst, &insert_chunk(&dh_source))
            .unwrap()
            .len(),
        1
    );

    // 007 again: nothing to do, nothing changed.
    let before = vital_tenancy_e2e::checksums(&mut dba, &[]);
    let (ok, err) = psql_file(
        &db.name,
        &repo_root().join("sql/migrations/007_tenant_keys.sql"),
    );
    assert!(ok, "second 007: {err}");
    assert_eq!(vital_tenancy_e2e::checksums(&mut dba, &[]), before);
    let _ = std::fs::remove_dir_all(&dir);
}
