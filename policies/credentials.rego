# Who may obtain cloud and Vault credentials (DESIGN.md §3).
#
# Deny by default: `allow` holds only when a known target was named and no `deny` rule fired. Every
# field is read with object.get and a default, because in Rego a comparison against a missing field
# is undefined, and an undefined `deny` body silently allows.
package keyward.credentials

settings := data.keyward.settings

run := object.get(input, "run", {})

target := object.get(input, "target", {})

labels := object.get(target, "labels", {})

default allow := false

allow if {
	object.get(target, "name", "") != ""
	count(deny) == 0
}

# A plan only reads. The broker enforces this in code as well; saying it here puts the reason in
# the audit log and lets `keyward policy test` show it.
deny contains msg if {
	object.get(run, "phase", "") != "apply"
	object.get(target, "access", "write") != "read"
	msg := sprintf("target '%s' grants write access; only apply-phase runs may use it", [target.name])
}

# Write credentials go to jobs of runs the broker tracked: their approvals are reviews it recorded.
# A CI system's token or an admin-minted run token carries no recorded review, so a write target
# serves them only when its configuration opts in (`write_subjects = ["ci"]`).
deny contains msg if {
	object.get(target, "access", "write") == "write"
	subject_kind := object.get(object.get(input, "subject", {}), "kind", "")
	allowed_kinds := object.get(target, "write_subjects", ["job"])
	not subject_kind in allowed_kinds
	msg := sprintf(
		"write target '%s' serves only the subject kinds its write_subjects lists (by default only jobs of tracked runs), not a '%s' subject; set write_subjects on the target to opt in",
		[target.name, subject_kind],
	)
}

# Apply only what has been merged: write targets need a commit on the default branch.
deny contains msg if {
	object.get(target, "access", "write") == "write"
	not run.ref
	msg := sprintf("write target '%s' needs a commit on %s; this run names no ref", [target.name, settings.default_branch_ref])
}

deny contains msg if {
	object.get(target, "access", "write") == "write"
	run.ref != settings.default_branch_ref
	msg := sprintf("write target '%s' needs a commit on %s; this run is on '%s'", [target.name, settings.default_branch_ref, run.ref])
}

# Write targets need independent approvals, none from the person who triggered the run: as many
# as `required_approvals` says for the target's `env` label, and `default_required_approvals`
# (one) for a label it does not list or no label at all. Only an explicit entry (dev: 0) waives it.
deny contains msg if {
	env := object.get(labels, "env", "")
	required := object.get(settings.required_approvals, env, object.get(settings, "default_required_approvals", 1))
	object.get(target, "access", "write") == "write"
	count(independent_approvers) < required
	msg := sprintf(
		"target '%s' (env=%s) needs %d approvals from someone other than '%s'; it has %d",
		[target.name, env_shown, required, object.get(run, "triggered_by", "(unknown)"), count(independent_approvers)],
	)
}

# How an absent `env` label reads in a reason.
env_shown := object.get(labels, "env", "none") if object.get(labels, "env", "") != ""

else := "none"

independent_approvers contains who if {
	some who in object.get(run, "approved_by", [])
	who != object.get(run, "triggered_by", "")
}

# A target labelled `repositories` (space-separated, exact: `acme/network` as a CI token names it,
# `https://github.com/acme/network.git` as a stack does) serves only runs of those repositories,
# whoever the caller is: one repository's pipeline cannot deploy another's infrastructure.
deny contains msg if {
	count(bound_repositories) > 0
	not object.get(run, "repository", "") in bound_repositories
	msg := sprintf(
		"target '%s' serves only runs of the repositories its 'repositories' label lists; this run is of '%s'",
		[target.name, repository_shown],
	)
}

repository_shown := run.repository if run.repository

else := "(no repository)"

bound_repositories := {repository |
	some repository in split(object.get(labels, "repositories", ""), " ")
	repository != ""
}

# Only the organisation's repositories (when a list is configured in data.json).
deny contains msg if {
	prefixes := settings.allowed_repository_prefixes
	count(prefixes) > 0
	not has_prefix(object.get(run, "repository", ""), prefixes)
	msg := repository_message
}

repository_message := sprintf("repository '%s' is not in the allowed list", [run.repository]) if run.repository

else := "the run names no repository, and only listed repositories are allowed"

has_prefix(s, prefixes) if {
	some prefix in prefixes
	startswith(s, prefix)
}

# Lifetimes: an hour for plans and applies (data.json, ttl_caps): shorter would put CI
# credentials inside the 15 minutes in which AWS clients refresh them.
ttl_seconds := settings.ttl_caps[object.get(run, "phase", "plan")]
