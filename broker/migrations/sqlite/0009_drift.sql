-- Drift checks (docs/runs.md): a run's kind is `deploy` (plan, review, apply) or `drift` (a
-- plan-phase job running `terraform plan -detailed-exitcode`, never applied), and a drift run
-- records what it found. Every run before this migration was a deploy.
ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'deploy';
ALTER TABLE runs ADD COLUMN drift BIGINT;   -- drift runs: 1 drifted, 0 in sync, NULL not known yet

-- The isolation layers the sandbox applied to a job's processes (JSON array, in order), as its
-- agent reported them with the job's end; `isolation` is what the agent announced at lease time.
ALTER TABLE jobs ADD COLUMN layers TEXT;
