-- Saved plans rest sealed under the KEK and their JSON without sensitive values (security review
-- L2, DESIGN.md §8.11). A row written before this migration holds the plan file and its JSON in
-- the clear, and SQL cannot seal: both are emptied. An apply of such a run fails, saying the plan
-- is not sealed; submitting the run again plans afresh. The digest, the verdict and the
-- `plan.evaluated` entry stay on record. (The old row versions are dead tuples until VACUUM.)
UPDATE plans SET plan_file = ''::bytea, plan_json = '{}';
