-- Contexts and stack variables (issue 20, docs/contexts.md): environment variables a stack's jobs
-- get, kept by the broker instead of the repository.
--
-- A context is a named set of variables, attached to stacks by name or by label (autoattach),
-- applied in priority order; a stack's own variables override them. A secret value is sealed
-- under the KEK (bound to its owner, key and version) and never leaves the broker except to the
-- lease holder of one of its stacks' jobs; a plain value is kept as given.
CREATE TABLE contexts (
    name         TEXT    PRIMARY KEY,
    description  TEXT    NOT NULL,
    -- JSON object of label -> value; a stack with all of them gets the context ('{}': none).
    autoattach   TEXT    NOT NULL,
    -- Lower first: a later context's variable overrides an earlier one's.
    priority     BIGINT  NOT NULL,
    created_at   BIGINT  NOT NULL,
    created_by   TEXT    NOT NULL
);

-- owner: 'context:<name>' or 'stack:<name>'.
CREATE TABLE variables (
    owner       TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    secret      BIGINT  NOT NULL,
    version     BIGINT  NOT NULL,
    value       BLOB    NOT NULL,
    sha256      BLOB    NOT NULL,
    set_by      TEXT    NOT NULL,
    set_at      BIGINT  NOT NULL,
    PRIMARY KEY (owner, name)
);

CREATE TABLE context_attachments (
    context     TEXT    NOT NULL REFERENCES contexts (name),
    stack       TEXT    NOT NULL REFERENCES stacks (name),
    attached_at BIGINT  NOT NULL,
    attached_by TEXT    NOT NULL,
    PRIMARY KEY (context, stack)
);
