-- The `review` scope (docs/api.md): approving and rejecting runs is a scope of its own, so a CI
-- system's `submit` token can never approve the runs it submits (DESIGN.md §8.8).
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_scope_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_scope_check CHECK (scope IN ('admin', 'submit', 'review', 'audit'));
