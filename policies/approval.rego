# When a run may apply. Approvals by the person who triggered the run never count: the broker
# marks them `counted: false` and leaves them out of `input.run.approved_by`; this policy checks
# the author as well, so a policy edited from it cannot count them by accident.
package keyward.approval

settings := data.keyward.settings

run := object.get(input, "run", {})

author := object.get(run, "triggered_by", "")

env := object.get(object.get(input, "target_labels", {}), "env", "")

required := object.get(settings.required_approvals, env, object.get(settings, "default_required_approvals", 1))

approvers contains who if {
	some review in object.get(input, "approvals", [])
	review.decision == "approve"
	object.get(review, "counted", false) == true
	who := review.by
	who != author
}

approve if count(approvers) >= required

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
	count(reject) == 0
	some review in object.get(input, "approvals", [])
	review.decision == "approve"
	review.by == author
	msg := sprintf("%s's own approval does not count: they submitted the run", [author])
}

env_name := env if env != ""

else := "unset"
