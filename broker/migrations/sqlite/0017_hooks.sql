-- Lifecycle hooks per stack (issue 20, docs/runs.md "Lifecycle hooks"): a JSON object of
-- point (`before_init`, `before_plan`, `after_plan`, `before_apply`, `after_apply`) → the shell
-- commands the agent runs there, in order. Existing stacks have none.
ALTER TABLE stacks ADD COLUMN hooks TEXT NOT NULL DEFAULT '{}';
