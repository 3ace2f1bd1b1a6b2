-- Saved plans rest sealed under the KEK and their JSON without sensitive values (security review
-- L2, DESIGN.md §8.11). A row written before this migration holds the plan file and its JSON in
-- the clear, and SQL cannot seal: both are emptied. An apply of such a run fails, saying the plan
-- is not sealed; submitting the run again plans afresh. The digest, the verdict and the
-- `plan.evaluated` entry stay on record. `secure_delete` zeroes the pages the old bytes leave, so
-- they do not linger in the file's free list; it is set back for the connection afterwards.
PRAGMA secure_delete = ON;
UPDATE plans SET plan_file = X'', plan_json = '{}';
PRAGMA secure_delete = OFF;
