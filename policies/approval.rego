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
	may_approve(review)
	who := review.by
	who != author
}

# Who may approve, besides never the author (docs/access.md, "Approvals by people"):
# - where `settings.mfa_required_envs` lists the env (prod by default), only a person who signed in
#   with MFA (`mfa` in the ID token's `amr`) and holds `reviewer` or `admin` in the stack's space;
#   an API token's approval does not count there;
# - elsewhere, a caller that held `reviewer` or `admin` in the stack's space when reviewing.
# Reviews recorded before reviewers' identities were (no `reviewer`) and the broker's in-process
# reviews (kind `broker`) count outside those envs only.
may_approve(review) if {
	not mfa_required
	not is_object(review.reviewer)
}

may_approve(review) if {
	not mfa_required
	review.reviewer.kind == "broker"
}

may_approve(review) if {
	not mfa_required
	review.reviewer.role in {"reviewer", "admin"}
}

may_approve(review) if {
	mfa_required
	review.reviewer.kind == "person"
	review.reviewer.role in {"reviewer", "admin"}
	"mfa" in review.reviewer.amr
}

mfa_required if env in object.get(data.keyward.settings, "mfa_required_envs", ["prod"])

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
	review.by != author
	not may_approve(review)
	mfa_required
	msg := sprintf("%s's approval does not count: env=%s needs a person who signed in with MFA and holds the reviewer role in the stack's space", [review.by, env_name])
}

pending contains msg if {
	not approve
	count(reject) == 0
	some review in object.get(input, "approvals", [])
	review.decision == "approve"
	review.by != author
	not may_approve(review)
	not mfa_required
	msg := sprintf("%s's approval does not count: they did not hold the reviewer role in the stack's space", [review.by])
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
