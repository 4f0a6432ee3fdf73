-- 000: row counts of every application table before the migration (the "no data
-- loss" baseline compared by 005). One transaction. A second run keeps the first
-- snapshot (so re-running changes nothing).
\set ON_ERROR_STOP on
BEGIN;
SELECT table_name, row_count FROM vital_tenancy.snapshot_counts('pre_migration');
COMMIT;
