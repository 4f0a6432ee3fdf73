//! The reference guard of migration 007 (`tenant_reference_check()`) attacked as the
//! outside pass of 0.2.0 did (issue 31), on the migrated real fixture:
//!
//! 1. any role attached the SECURITY DEFINER guard to a temp table of its own, with a
//!    temp view as "parent" calling its own function, which then ran as the superuser;
//! 2. a row claiming another tenant got 42501 when the parent existed there and 23503
//!    when it did not: an existence-and-ownership oracle;
//! 3. a Platform parent was accepted in a table that is not shared.
//!
//! Each replay must fail safely: no escalation, one outcome whatever exists elsewhere,
//! no parent the row's tenant cannot see.

use postgres::Client;
use vital_tenancy_e2e::{postgrest, Failure, FixtureDb, Rows, DIGITAL, PHARMA, PLATFORM};

const MISSING: &str = "99999999-9999-4999-8999-999999999999";

fn migrated(tag: &str) -> (FixtureDb, Client) {
    let (db, dba) = FixtureDb::migrated(tag);
    (db, dba)
}

fn is_superuser(dba: &mut Client, role: &str) -> bool {
    dba.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
        .unwrap()
        .get(0)
}

/// The attacker's set-up: a temp table, a function of its own that would make it a
/// superuser, a temp view calling it, and the guard attached with arguments naming the
/// view as the parent; then a row that fires it.
fn exploit(role: &str) -> String {
    format!(
        "CREATE TEMP TABLE probe (id uuid, tenant_id uuid);
         CREATE FUNCTION pg_temp.escalate() RETURNS uuid LANGUAGE sql AS $f$ ALTER ROLE {role} SUPERUSER; SELECT NULL::uuid $f$;
         CREATE TEMP VIEW parent AS SELECT pg_temp.escalate() AS id, NULL::uuid AS tenant_id;
         CREATE TRIGGER guard BEFORE INSERT ON probe FOR EACH ROW
           EXECUTE FUNCTION vital_tenancy.tenant_reference_check('pg_temp.parent', 'id', 'id', 'tenant_id', 'tenant_id');
         INSERT INTO probe VALUES ('{MISSING}', '{DIGITAL}')"
    )
}

fn code(r: Result<u64, postgres::Error>) -> String {
    vital_tenancy_e2e::sqlstate(r)
}

#[test]
fn no_role_runs_the_reference_guard_as_the_superuser() {
    let (db, mut dba) = migrated("guard_escalation");
    dba.batch_execute(
        "DO $$ BEGIN PERFORM pg_catalog.pg_advisory_xact_lock(74657374); -- roles are cluster-wide: one test at a time creates them
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_rg_attacker') THEN CREATE ROLE vt_rg_attacker LOGIN; END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_rg_authenticator') THEN CREATE ROLE vt_rg_authenticator LOGIN NOINHERIT; END IF;
         END $$;
         ALTER ROLE vt_rg_attacker NOSUPERUSER;
         GRANT anon, authenticated, vital_tenancy_context TO vt_rg_authenticator;",
    )
    .unwrap();

    // An untrusted login, with no tenant context: attaching the guard is refused.
    let mut attacker = db.connect_as("vt_rg_attacker");
    let r = attacker.batch_execute(&format!("BEGIN; {}; COMMIT", exploit("vt_rg_attacker")));
    let e = r.expect_err("the exploit must fail");
    let d = e.as_db_error().expect("a database error");
    assert_eq!(d.code().code(), "42501", "{}", d.message());
    assert!(
        d.message()
            .contains("permission denied for function vital_tenancy.tenant_reference_check"),
        "{}",
        d.message()
    );
    let _ = attacker.batch_execute("ROLLBACK");
    assert!(!is_superuser(&mut dba, "vt_rg_attacker"));

    // anon inside a PostgREST-shaped request: the same.
    let mut pgrst = db.connect_as("vt_rg_authenticator");
    let r = postgrest(
        &mut pgrst,
        "anon",
        "{}",
        "{}",
        false,
        &exploit("vt_rg_attacker"),
    );
    assert_eq!(r.map_err(|e| e.0), Err("42501".into()));
    assert!(!is_superuser(&mut dba, "vt_rg_attacker"));

    // Defence in depth: even a trigger a superuser attached, on a temp table or on a
    // managed table, with arguments that are not a recorded reference, refuses to run
    // (and never reads the "parent").
    let setup = "CREATE TEMP TABLE probe (id uuid, tenant_id uuid);
         CREATE FUNCTION pg_temp.escalate() RETURNS uuid LANGUAGE sql AS $f$ ALTER ROLE vt_rg_attacker SUPERUSER; SELECT NULL::uuid $f$;
         CREATE TEMP VIEW parent AS SELECT pg_temp.escalate() AS id, NULL::uuid AS tenant_id;";
    dba.batch_execute(&format!(
        "BEGIN; {setup}
         CREATE TRIGGER guard BEFORE INSERT ON probe FOR EACH ROW
           EXECUTE FUNCTION vital_tenancy.tenant_reference_check('pg_temp.parent', 'id', 'id', 'tenant_id', 'tenant_id');"
    ))
    .unwrap();
    let r = dba.execute(
        &format!("INSERT INTO probe VALUES ('{MISSING}', '{DIGITAL}')"),
        &[],
    );
    let e = r.expect_err("a guard on a temp table must refuse");
    let d = e.as_db_error().unwrap();
    assert_eq!(d.code().code(), "42501");
    assert!(
        d.message().contains(
            "runs only as the reference guards vital_tenancy creates: trigger \"guard\" on probe is not one"
        ),
        "{}",
        d.message()
    );
    dba.batch_execute("ROLLBACK").unwrap();
    // On a managed table: a second trigger named like a guard but with other arguments,
    // and one named after no foreign key.
    for (name, args) in [
        (
            "vt_tenant_ref_messages_parent_message_id_fkey_x",
            "'public.messages', 'parent_message_id', 'id', 'tenant_id', 'tenant_id'",
        ),
        (
            "vt_tenant_ref_messages_parent_message_id_fkey",
            "'pg_temp.parent', 'parent_message_id', 'id', 'tenant_id', 'tenant_id'",
        ),
    ] {
        dba.batch_execute(&format!(
            "BEGIN; {setup}
             DROP TRIGGER IF EXISTS vt_tenant_ref_messages_parent_message_id_fkey ON public.messages;
             CREATE TRIGGER {name} BEFORE INSERT ON public.messages FOR EACH ROW
               EXECUTE FUNCTION vital_tenancy.tenant_reference_check({args});"
        ))
        .unwrap();
        let r = dba.execute(
            &format!("INSERT INTO public.messages (role, content, tenant_id, parent_message_id) VALUES ('user', 'x', '{DIGITAL}', NULL)"),
            &[],
        );
        assert_eq!(code(r), "42501", "trigger {name} ({args})");
        dba.batch_execute("ROLLBACK").unwrap();
    }
    assert!(!is_superuser(&mut dba, "vt_rg_attacker"));
    // The parent guard's function, fired by any trigger but the one 007 created, refuses
    // too (here on a managed table, under another name).
    dba.batch_execute(
        "BEGIN; CREATE TRIGGER not_the_parent_guard BEFORE DELETE ON public.messages FOR EACH ROW
           EXECUTE FUNCTION vital_tenancy.tenant_parent_check();",
    )
    .unwrap();
    let e = dba
        .execute("DELETE FROM public.messages WHERE true", &[])
        .expect_err("the parent guard's function must refuse another trigger");
    let d = e.as_db_error().unwrap();
    assert_eq!(d.code().code(), "42501");
    assert!(
        d.message().contains(
            "runs only as the parent guard vital_tenancy creates: trigger \"not_the_parent_guard\" on public.messages is not one"
        ),
        "{}",
        d.message()
    );
    dba.batch_execute("ROLLBACK").unwrap();

    // The guards 007 created still work for every role (EXECUTE is checked when a
    // trigger is created, not when it fires): a Digital Health reply to its own message.
    let claims = format!(r#"{{"role": "authenticated", "tenant_id": "{DIGITAL}"}}"#);
    let r = postgrest(
        &mut pgrst,
        "authenticated",
        &claims,
        "{}",
        true,
        "WITH m AS (INSERT INTO public.messages (role, content) VALUES ('user', 'mine') RETURNING id)
         INSERT INTO public.messages (role, content, parent_message_id) SELECT 'user', 'reply', id FROM m RETURNING tenant_id::text",
    );
    assert_eq!(r, Ok(vec![vec![Some(DIGITAL.to_string())]]));
}

/// A request as a Digital Health user through PostgREST's path (with pre_request).
fn as_digital_health(c: &mut Client, sql: &str) -> Result<Rows, Failure> {
    let claims = format!(r#"{{"role": "authenticated", "tenant_id": "{DIGITAL}"}}"#);
    postgrest(c, "authenticated", &claims, "{}", true, sql)
}

#[test]
fn the_guard_answers_only_for_the_tenants_a_request_may_write() {
    let (db, mut dba) = migrated("guard_oracle");
    dba.batch_execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_rg_authenticator') THEN
           CREATE ROLE vt_rg_authenticator LOGIN NOINHERIT; END IF; END $$;
         GRANT anon, authenticated, vital_tenancy_context TO vt_rg_authenticator;",
    )
    .unwrap();
    // A Pharmaceuticals knowledge source: the id the probe asks about.
    let pharma_source: String = dba
        .query_one(
            &format!("INSERT INTO public.knowledge_sources (title, domain, tenant_id) VALUES ('Pharma dossier', 'regulatory', '{PHARMA}') RETURNING id::text"),
            &[],
        )
        .unwrap()
        .get(0);
    let mut pgrst = db.connect_as("vt_rg_authenticator");
    let chunk = |source: &str, tenant: &str| {
        format!(
            "INSERT INTO public.knowledge_base (source_id, chunk_index, content, content_hash, domain, tenant_id)
             VALUES ('{source}', 0, 'probe', 'vt-probe', 'regulatory', '{tenant}')"
        )
    };
    // 2. A row claiming Pharmaceuticals, with Pharmaceuticals' real source and with an
    // id that exists nowhere: the one error of row level security either way.
    let existing = as_digital_health(&mut pgrst, &chunk(&pharma_source, PHARMA));
    let random = as_digital_health(&mut pgrst, &chunk(MISSING, PHARMA));
    assert_eq!(
        existing, random,
        "INSERT: same outcome whether the parent exists in the claimed tenant"
    );
    assert_eq!(
        existing.as_ref().map_err(|e| e.0.as_str()),
        Err("42501"),
        "{existing:?}"
    );
    // The same through an UPDATE of the request's own row (messages: the application's
    // policies let a user update messages), re-pointed at a Pharmaceuticals message.
    let pharma_message: String = dba
        .query_one(
            &format!("INSERT INTO public.messages (role, content, tenant_id) VALUES ('user', 'pharma thread', '{PHARMA}') RETURNING id::text"),
            &[],
        )
        .unwrap()
        .get(0);
    let own = format!(
        "INSERT INTO public.messages (role, content) VALUES ('user', 'vt-probe');
         UPDATE public.messages SET tenant_id = '{PHARMA}', parent_message_id = 'PARENT' WHERE content = 'vt-probe' RETURNING id"
    );
    let existing = as_digital_health(&mut pgrst, &own.replace("PARENT", &pharma_message));
    let random = as_digital_health(&mut pgrst, &own.replace("PARENT", MISSING));
    assert_eq!(
        existing, random,
        "UPDATE: same outcome whether the parent exists in the claimed tenant"
    );
    assert_eq!(
        existing.as_ref().map_err(|e| e.0.as_str()),
        Err("42501"),
        "{existing:?}"
    );
    // Its own tenant with the other tenant's parent: 23503, as for a missing one.
    let a = as_digital_health(&mut pgrst, &chunk(&pharma_source, DIGITAL)).unwrap_err();
    let b = as_digital_health(&mut pgrst, &chunk(MISSING, DIGITAL)).unwrap_err();
    assert_eq!((a.0.as_str(), b.0.as_str()), ("23503", "23503"));
    assert_eq!(
        a.1.replace(&pharma_source, "<key>"),
        b.1.replace(MISSING, "<key>")
    );

    // 3. messages is not shared: a Platform message is no parent for a Digital Health
    // reply (the tenant cannot see it), and so never blocks the admin's delete of it.
    let shared: bool = dba
        .query_one(
            "SELECT shared FROM vital_tenancy.rls_tables WHERE tbl = 'public.messages'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        !shared,
        "the fixture's messages table is migrated as not shared"
    );
    let platform_message: String = dba
        .query_one(
            &format!("INSERT INTO public.messages (role, content, tenant_id) VALUES ('system', 'platform notice', '{PLATFORM}') RETURNING id::text"),
            &[],
        )
        .unwrap()
        .get(0);
    let reply = |parent: &str| {
        format!("INSERT INTO public.messages (role, content, parent_message_id) VALUES ('user', 'reply', '{parent}')")
    };
    let a = as_digital_health(&mut pgrst, &reply(&platform_message)).unwrap_err();
    let b = as_digital_health(&mut pgrst, &reply(MISSING)).unwrap_err();
    assert_eq!((a.0.as_str(), b.0.as_str()), ("23503", "23503"), "{a:?}");
    assert_eq!(
        a.1.replace(&platform_message, "<key>"),
        b.1.replace(MISSING, "<key>")
    );
    assert!(!a.1.contains("or Platform"), "{}", a.1);
    // Where the parent table is shared, a Platform parent still is one.
    let platform_source: String = dba
        .query_one(
            &format!("INSERT INTO public.knowledge_sources (title, domain, tenant_id) VALUES ('Shared guideline', 'general_medicine', '{PLATFORM}') RETURNING id::text"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        as_digital_health(&mut pgrst, &chunk(&platform_source, DIGITAL)).map(|r| r.len()),
        Ok(0)
    );
    // Even the owner (outside row level security) cannot put a Digital Health reply under it.
    let r = dba.execute(
        &format!("INSERT INTO public.messages (role, content, tenant_id, parent_message_id) VALUES ('user', 'reply', '{DIGITAL}', '{platform_message}')"),
        &[],
    );
    assert_eq!(code(r), "23503");
    let deleted = dba
        .execute(
            &format!("DELETE FROM public.messages WHERE id = '{platform_message}'"),
            &[],
        )
        .unwrap();
    assert_eq!(deleted, 1);
}

fn count(dba: &mut Client, sql: &str) -> i64 {
    dba.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Finding 4: after a platform admin re-assigned a shared tool to Pharmaceuticals (0.2.0 let
/// it), Pharmaceuticals deleting "its" tool cascaded into Digital Health's assignments,
/// and `delete_tenant(Pharmaceuticals)` took every tenant's assignments of it. Now the
/// re-assignment is refused while other tenants' rows reference the tool; a database
/// already in that state (made here with the triggers off, as 0.2.0 left it) has its
/// deletion plan refused and no delete reaches another tenant's rows.
#[test]
fn a_referenced_row_keeps_its_tenant_and_no_delete_reaches_another_tenant() {
    let (db, mut dba) = migrated("guard_cascade");
    dba.batch_execute(
        "DO $$ BEGIN PERFORM pg_catalog.pg_advisory_xact_lock(74657374); -- roles are cluster-wide: one test at a time creates them
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_rg_admin') THEN CREATE ROLE vt_rg_admin LOGIN; END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_rg_authenticator') THEN CREATE ROLE vt_rg_authenticator LOGIN NOINHERIT; END IF;
         END $$;
         GRANT vital_tenancy_admin, authenticated TO vt_rg_admin;
         GRANT anon, authenticated, vital_tenancy_service, vital_tenancy_context TO vt_rg_authenticator;",
    )
    .unwrap();
    let parent_guards = count(
        &mut dba,
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'vt_tenant_parent_guard'",
    );
    assert!(
        parent_guards >= 5,
        "007 guards every referenced tenant table ({parent_guards})"
    );
    // A shared Platform tool that Digital Health's assignments use.
    let tool: String = dba
        .query_one(
            &format!(
                "SELECT t.id::text FROM public.tools t JOIN public.agent_tool_assignments a ON a.tool_id = t.id
                  WHERE t.tenant_id = '{PLATFORM}' AND a.tenant_id = '{DIGITAL}' GROUP BY t.id ORDER BY count(*) DESC, 1 LIMIT 1"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    let assignments = |dba: &mut Client| {
        count(
            dba,
            &format!("SELECT count(*) FROM public.agent_tool_assignments WHERE tool_id = '{tool}'"),
        )
    };
    let before = assignments(&mut dba);
    let dh_before = count(
        &mut dba,
        &format!(
            "SELECT count(*) FROM public.agent_tool_assignments WHERE tenant_id = '{DIGITAL}'"
        ),
    );
    assert!(before > 1);
    // The re-assignment, as a platform admin and as the owner: refused.
    let mut admin = db.connect_as("vt_rg_admin");
    let move_tool = format!("UPDATE public.tools SET tenant_id = '{PHARMA}' WHERE id = '{tool}'");
    let e = admin
        .execute(&move_tool, &[])
        .expect_err("the admin's move must be refused");
    let d = e.as_db_error().unwrap();
    assert_eq!(d.code().code(), "23503", "{}", d.message());
    assert!(
        d.message().contains("would move a row to another tenant"),
        "{}",
        d.message()
    );
    assert_eq!(code(dba.execute(&move_tool, &[])), "23503");
    // Deleting the shared tool would cascade into the tenants' assignments: refused.
    let delete_tool = format!("DELETE FROM public.tools WHERE id = '{tool}'");
    let e = dba
        .execute(&delete_tool, &[])
        .expect_err("the cascade must be refused");
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("would delete rows of another tenant in table public.agent_tool_assignments"),
        "{e}"
    );
    assert_eq!(assignments(&mut dba), before);
    // Moving a row nobody else references still works (a Platform tool without
    // assignments, as the admin); and back.
    let lone: Option<String> = dba
        .query_opt(
            &format!("SELECT id::text FROM public.tools t WHERE tenant_id = '{PLATFORM}' AND NOT EXISTS (SELECT 1 FROM public.agent_tool_assignments a WHERE a.tool_id = t.id) LIMIT 1"),
            &[],
        )
        .unwrap()
        .map(|r| r.get(0));
    if let Some(lone) = lone {
        let n = admin
            .execute(
                &format!("UPDATE public.tools SET tenant_id = '{PHARMA}' WHERE id = '{lone}'"),
                &[],
            )
            .unwrap();
        assert_eq!(n, 1);
        admin
            .execute(
                &format!("UPDATE public.tools SET tenant_id = '{PLATFORM}' WHERE id = '{lone}'"),
                &[],
            )
            .unwrap();
    }

    // A referenced row of a shared table may become Platform's (its tenant's rows may
    // reference Platform there), and come back: a Digital Health source with its chunks.
    let source: String = dba
        .query_one(
            &format!("SELECT s.id::text FROM public.knowledge_sources s WHERE s.tenant_id = '{DIGITAL}'
                       AND EXISTS (SELECT 1 FROM public.knowledge_base b WHERE b.source_id = s.id) LIMIT 1"),
            &[],
        )
        .unwrap()
        .get(0);
    for to in [PLATFORM, DIGITAL] {
        let n = admin
            .execute(
                &format!(
                    "UPDATE public.knowledge_sources SET tenant_id = '{to}' WHERE id = '{source}'"
                ),
                &[],
            )
            .unwrap();
        assert_eq!(n, 1, "moved to {to}");
    }

    // The state 0.2.0 let an admin create: the tool moved with the triggers off.
    dba.batch_execute(&format!(
        "SET session_replication_role = replica; {move_tool}; RESET session_replication_role"
    ))
    .unwrap();
    // The deletion plan names what it would reach in other tenants, and is refused.
    let e = dba
        .query(
            &format!("SELECT * FROM vital_tenancy.tenant_deletion_plan('{PHARMA}')"),
            &[],
        )
        .expect_err("the plan must be refused");
    let d = e.as_db_error().unwrap();
    assert_eq!(d.code().code(), "23503");
    assert!(
        d.message().contains("public.agent_tool_assignments through agent_tool_assignments_tool_id_fkey (ON DELETE CASCADE)"),
        "{}",
        d.message()
    );
    let r = dba.batch_execute(&format!(
        "CALL vital_tenancy.delete_tenant('{PHARMA}', dry_run => false)"
    ));
    assert_eq!(
        r.map_err(|e| e.code().map(|c| c.code().to_string())),
        Err(Some("23503".into()))
    );
    // Pharmaceuticals deleting "its" tool through the API routes' server role.
    let mut pgrst = db.connect_as("vt_rg_authenticator");
    let service = vital_tenancy_e2e::simple_rows(
        &mut pgrst,
        &format!(
            "BEGIN; SELECT set_config('role', 'vital_tenancy_service', true), set_config('request.headers', '{{\"x-tenant-id\": \"{PHARMA}\"}}', true);
             SELECT vital_tenancy.pre_request(); {delete_tool}"
        ),
    );
    let _ = pgrst.batch_execute("ROLLBACK");
    let e = service.expect_err("the cascade through the API must be refused");
    assert_eq!(e.code().map(|c| c.code()), Some("23503"), "{e}");
    // Nothing of any tenant went.
    assert_eq!(assignments(&mut dba), before);
    assert_eq!(
        count(
            &mut dba,
            &format!(
                "SELECT count(*) FROM public.agent_tool_assignments WHERE tenant_id = '{DIGITAL}'"
            )
        ),
        dh_before
    );
    assert_eq!(
        count(
            &mut dba,
            &format!("SELECT count(*) FROM public.tools WHERE id = '{tool}'")
        ),
        1
    );
}
