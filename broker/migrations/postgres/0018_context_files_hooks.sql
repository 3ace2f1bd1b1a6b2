-- Mounted files and context hooks (issue 20, docs/contexts.md).
--
-- A variable with a mount path is not put into the job's environment: the agent writes its value
-- as a file at that path, relative to the stack's configuration directory, before any hook or
-- Terraform runs. NULL: an environment variable (every row before this migration).
ALTER TABLE variables ADD COLUMN mount_path TEXT NULL;

-- A context's lifecycle hooks, as a stack's (0017): a JSON object of point -> commands. A job
-- runs its contexts' hooks at a point (in priority order) before its stack's own.
ALTER TABLE contexts ADD COLUMN hooks TEXT NOT NULL DEFAULT '{}';
