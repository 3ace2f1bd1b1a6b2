-- OpenTofu (issue 24, docs/agents.md "OpenTofu"). The program a stack's jobs run: `terraform`
-- (every existing stack) or `tofu`. The dispatcher leases a stack's jobs only to agents that
-- reported its tool.
ALTER TABLE stacks ADD COLUMN tool TEXT NOT NULL DEFAULT 'terraform';

-- The tools an agent reported in its last `Hello`, with their versions (a JSON object,
-- `{"terraform": "1.11.4", "tofu": "1.8.0"}`); NULL: an agent older than tool reports.
ALTER TABLE agents ADD COLUMN tools TEXT;
