"""Client-side row-by-row ETL, the plan's TypeScript pipeline in Python: read a row,
classify it in the client (same default prompt rules and normalisation), write it back.
Usage: python3 etl_client.py CONNINFO TABLE LIMIT  -> prints rows/s."""
import re
import sys
import time

import psycopg

PHARMA, DIGITAL, PLATFORM = (
    "f7aa6fd4-0af9-4706-8b31-034f1f7accda",
    "11111111-1111-1111-1111-111111111111",
    "00000000-0000-0000-0000-000000000001",
)


def norm(s):
    return re.sub(r"[\s-]+", "_", s.strip().lower()) if s is not None else None


def classify(name, domain, created_by):
    d = norm(domain)
    if (name and "prism" in name.lower()) or d in ("regulatory_affairs", "clinical_research", "pharmacovigilance"):
        return PHARMA
    if d in ("digital_health", "digital_medicine"):
        return DIGITAL
    if created_by is None:
        return PLATFORM
    return DIGITAL


conninfo, table, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
with psycopg.connect(conninfo) as read, psycopg.connect(conninfo, autocommit=True) as write:
    start = time.monotonic()
    n = 0
    with read.cursor(name="etl") as cur:
        cur.execute(f"SELECT id, name, domain, created_by FROM {table} WHERE tenant_id IS NULL ORDER BY id LIMIT %s", (limit,))
        for id_, name, domain, created_by in cur:
            write.execute(f"UPDATE {table} SET tenant_id = %s WHERE id = %s", (classify(name, domain, created_by), id_))
            n += 1
    elapsed = time.monotonic() - start
    print(f"{n} {elapsed:.3f} {n / elapsed:.0f}")
