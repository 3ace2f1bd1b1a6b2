-- Stack trigger globs (issue 22, docs/stacks.md): which changed files of a pull request or push
-- concern a stack (a JSON array of globs relative to the repository root). Existing stacks have
-- none: a change concerns them when it touches a file under their `path`.
ALTER TABLE stacks ADD COLUMN triggers TEXT NOT NULL DEFAULT '[]';
