-- Spaces and roles (issue 21, docs/access.md "Spaces and roles"). Spaces form a tree under
-- `root`, which always exists. Stacks and pools belong to one space; existing ones to `root`.
CREATE TABLE spaces (
    name        TEXT    PRIMARY KEY,
    parent      TEXT    REFERENCES spaces (name),   -- NULL only for `root`
    created_at  BIGINT  NOT NULL,
    created_by  TEXT    NOT NULL
);
INSERT INTO spaces (name, parent, created_at, created_by) VALUES ('root', NULL, 0, 'keyward');

-- A role in a space (and every space under it) for an identity provider's group or subject.
-- Exactly one of `group_name` and `subject` is set.
CREATE TABLE role_bindings (
    id          TEXT    PRIMARY KEY,
    space       TEXT    NOT NULL REFERENCES spaces (name),
    role        TEXT    NOT NULL CHECK (role IN ('viewer', 'submitter', 'reviewer', 'admin')),
    group_name  TEXT,
    subject     TEXT,
    created_at  BIGINT  NOT NULL,
    created_by  TEXT    NOT NULL,
    CHECK ((group_name IS NULL) <> (subject IS NULL))
);
CREATE UNIQUE INDEX role_bindings_unique ON role_bindings (space, role, COALESCE(group_name, ''), COALESCE(subject, ''));

ALTER TABLE stacks ADD COLUMN space TEXT NOT NULL DEFAULT 'root' REFERENCES spaces (name);
ALTER TABLE pools ADD COLUMN space TEXT NOT NULL DEFAULT 'root' REFERENCES spaces (name);

-- An API token is a machine identity with one role in one space. Tokens made before spaces keep
-- their `scope` and have no space or role: their scope maps to a role on `root` (access.rs).
ALTER TABLE api_tokens ADD COLUMN space TEXT REFERENCES spaces (name);
ALTER TABLE api_tokens ADD COLUMN role TEXT CHECK (role IN ('viewer', 'submitter', 'reviewer', 'admin'));
