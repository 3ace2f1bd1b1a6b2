-- Who reviewed, as verified when they did (issue 21, docs/access.md "Approvals by people"): a JSON
-- object of the reviewer's kind (`person`, `token`, `broker`), display name, `issuer#subject`,
-- groups, `amr`, and the role they held in the stack's space. Reviews recorded before have none.
ALTER TABLE run_reviews ADD COLUMN identity TEXT;
