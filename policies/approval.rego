# When a run may apply. Approvals by the person who triggered the run never count: the broker
# marks them `counted: false` and leaves them out of `input.run.approved_by`; this policy checks
# the author as well, so a policy edited from it cannot count them by accident.
#
# Positive evidence, as in credentials.rego: `approve` holds only when enough counted approvals
# are shown and the number required is a number; a setting of the wrong type leaves it false
# (the run waits, and `pending` says why). Any rejection rejects.
package keyward.approval

default approve := false

approve if {
	count(approvers) >= required
	every review in object.get(input, "approvals", []) {
		review.decision != "reject"
	}
}

author := object.get(object.get(input, "run", {}), "triggered_by", "")

env := object.get(object.get(input, "target_labels", {}), "env", "")

the_run := object.get(input, "run", {})

# A remediation: a deploy a drift check queued because the stack drifted (docs/drift.md).
remediation if object.get(the_run, "kind", "") == "remediation"

# Remediations apply without review only when the stack asks for it twice: its
# `drift_remediation` is `apply` and it is labelled `drift-remediation=auto`.
auto_remediation if {
	remediation
	object.get(the_run, "remediation", "") == "apply"
	object.get(object.get(object.get(input, "stack", {}), "labels", {}), "drift-remediation", "") == "auto"
}

# As many approvals as `required_approvals` says for the `env` label, and
# `default_required_approvals` (one) for a label it does not list. Undefined unless a number.
env_required := n if {
	n := object.get(
		data.keyward.settings.required_approvals,
		env,
		object.get(data.keyward.settings, "default_required_approvals", 1),
	)
	is_number(n)
}

# Deploys: the env's number. A remediation nobody asked to auto-apply waits for at least one
# approval whatever its env: nobody submitted it.
required := 0 if {
	auto_remediation
} else := max([1, env_required]) if {
	remediation
} else := env_required

approvers contains who if {
	some review in object.get(input, "approvals", [])
	review.decision == "approve"
	review.counted == true
	who := review.by
	who != author
}

reject contains msg if {
	some review in object.get(input, "approvals", [])
	review.decision == "reject"
	msg := sprintf("rejected by %s", [review.by])
}

# What a run that is neither approved nor rejected waits for; `run show` and `--wait` print it.
pending contains msg if {
	not approve
	count(reject) == 0
	msg := sprintf(
		"needs %d approval(s) from someone other than its author '%s' (env=%s, settings.required_approvals); has %d",
		[required, author, env_name, count(approvers)],
	)
}

pending contains msg if {
	not approve
	not required
	msg := sprintf(
		"data.json gives no number of approvals for env=%s (settings.required_approvals, settings.default_required_approvals)",
		[env_name],
	)
}

pending contains msg if {
	not approve
	count(reject) == 0
	some review in object.get(input, "approvals", [])
	review.decision == "approve"
	review.by == author
	msg := sprintf("%s's own approval does not count: they submitted the run", [author])
}

env_name := env if env != ""

else := "unset"
