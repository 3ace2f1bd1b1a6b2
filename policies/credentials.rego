# Who may obtain cloud and Vault credentials (DESIGN.md §3).
#
# Positive evidence: `allow` holds only when every check of one of its two bodies holds. A check
# whose input is missing or of the wrong type, or whose evaluation fails (on any Rego engine, strict
# or not), is undefined, so `allow` stays false. `deny` only explains a refusal; it never permits.
# Settings from data.json are type-checked where a wrong type would compare without failing.
package keyward.credentials

default allow := false

# A read target: a known target, serving this run's repository. Phase, subject kind, branch and
# approvals matter only for writes.
allow if {
	input.target.access == "read"
	input.target.name != ""
	serves_repository(input.target, input.run)
	repository_allowed(input.run)
}

# Any other access counts as write.
allow if {
	input.target.name != ""

	# A plan only reads. The broker enforces this in code as well; saying it here puts the reason
	# in the audit log and lets `keyward policy test` show it.
	input.run.phase == "apply"

	# Write credentials go to jobs of runs the broker tracked: their approvals are reviews it
	# recorded. A CI system's token or an admin-minted run token carries no recorded review, so a
	# write target serves them only when its configuration opts in (`write_subjects = ["ci"]`).
	input.subject.kind in object.get(input.target, "write_subjects", ["job"])

	# Apply only what has been merged: a commit on the default branch.
	input.run.ref == data.keyward.settings.default_branch_ref

	# Independent approvals, none from the person who triggered the run.
	count(independent_approvers(input.run)) >= required_approvals(input.target)

	serves_repository(input.target, input.run)
	repository_allowed(input.run)
}

# As many approvals as `required_approvals` says for the target's `env` label, and
# `default_required_approvals` (one) for a label it does not list or no label at all. Only an
# explicit entry (dev: 0) waives review. Undefined unless the setting is a number.
required_approvals(target) := n if {
	n := object.get(
		data.keyward.settings.required_approvals,
		object.get(target.labels, "env", ""),
		object.get(data.keyward.settings, "default_required_approvals", 1),
	)
	is_number(n)
}

independent_approvers(run) := {who |
	some who in run.approved_by
	who != object.get(run, "triggered_by", "")
}

# A target labelled `repositories` (space-separated, exact: `acme/network` as a CI token names it,
# `https://github.com/acme/network.git` as a stack does) serves only runs of those repositories,
# whoever the caller is: one repository's pipeline cannot deploy another's infrastructure.
# (`else`: when the first body holds, regorus does not evaluate the second; two plain bodies would
# both be evaluated on every decision.)
serves_repository(target, run) if object.get(target.labels, "repositories", "") == ""

else := true if {
	run.repository != ""
	run.repository in split(target.labels.repositories, " ")
}

# Only the organisation's repositories, when a list is configured in data.json.
repository_allowed(run) if count(data.keyward.settings.allowed_repository_prefixes) == 0

else := true if {
	some prefix in data.keyward.settings.allowed_repository_prefixes
	startswith(run.repository, prefix)
}

# Lifetimes: an hour for plans and applies (data.json, ttl_caps): shorter would put CI
# credentials inside the 15 minutes in which AWS clients refresh them. (The broker always sends
# the phase; a phase ttl_caps does not list gets no cap here, only the target's `duration`.)
ttl_seconds := data.keyward.settings.ttl_caps[input.run.phase]

# Why a request was refused, for the audit log, the caller's error and `keyward policy test`: one
# message per check above that does not hold. Evaluated only for refusals; a refusal no message
# explains reads "no rule allowed the request (deny by default)".
deny contains msg if {
	not allow
	some msg in reasons
}

reasons contains msg if {
	not input.target.access == "read"
	not input.run.phase == "apply"
	msg := sprintf("target '%s' grants write access; only apply-phase runs may use it", [input.target.name])
}

reasons contains msg if {
	not input.target.access == "read"
	not input.subject.kind in object.get(input.target, "write_subjects", ["job"])
	msg := sprintf(
		"write target '%s' serves only the subject kinds its write_subjects lists (by default only jobs of tracked runs), not a '%s' subject; set write_subjects on the target to opt in",
		[input.target.name, input.subject.kind],
	)
}

reasons contains msg if {
	not input.target.access == "read"
	not input.run.ref
	msg := sprintf("write target '%s' needs a commit on %s; this run names no ref", [input.target.name, data.keyward.settings.default_branch_ref])
}

reasons contains msg if {
	not input.target.access == "read"
	not input.run.ref == data.keyward.settings.default_branch_ref
	msg := sprintf("write target '%s' needs a commit on %s; this run is on '%s'", [input.target.name, data.keyward.settings.default_branch_ref, input.run.ref])
}

reasons contains msg if {
	not input.target.access == "read"
	required := required_approvals(input.target)
	approvals := count(independent_approvers(input.run))
	approvals < required
	msg := sprintf(
		"target '%s' (env=%s) needs %d approvals from someone other than '%s'; it has %d",
		[input.target.name, env_shown, required, object.get(input.run, "triggered_by", "(unknown)"), approvals],
	)
}

reasons contains msg if {
	not input.target.access == "read"
	not required_approvals(input.target)
	msg := sprintf(
		"target '%s' (env=%s): data.json gives no number of approvals for it (settings.required_approvals, settings.default_required_approvals)",
		[input.target.name, env_shown],
	)
}

# How an absent `env` label reads in a reason.
env_shown := input.target.labels.env if object.get(input.target.labels, "env", "") != ""

else := "none"

reasons contains msg if {
	not serves_repository(input.target, input.run)
	msg := sprintf(
		"target '%s' serves only runs of the repositories its 'repositories' label lists; this run is of '%s'",
		[input.target.name, repository_shown],
	)
}

repository_shown := input.run.repository if input.run.repository

else := "(no repository)"

reasons contains msg if {
	input.run
	not repository_allowed(input.run)
	msg := repository_message
}

repository_message := sprintf("repository '%s' is not in the allowed list", [input.run.repository]) if input.run.repository

else := "the run names no repository, and only listed repositories are allowed"
