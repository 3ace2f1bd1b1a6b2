-- What an agent reports when it opens a work stream (`Hello`): its Terraform version and how its
-- jobs are isolated. Operators see them; the runner issue records the isolation on each run.
ALTER TABLE agents ADD COLUMN terraform_version TEXT;
ALTER TABLE agents ADD COLUMN isolation TEXT;
