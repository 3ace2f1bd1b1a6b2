# When a run may apply. Approvals by the person who triggered the run do not count.
package keyward.approval

settings := data.keyward.settings

run := object.get(input, "run", {})

author := object.get(run, "triggered_by", "")

env := object.get(object.get(input, "target_labels", {}), "env", "")

required := object.get(settings.required_approvals, env, 1)

approvers contains who if {
	some review in object.get(input, "approvals", [])
	review.decision == "approve"
	who := review.by
	who != author
}

approve if count(approvers) >= required

reject contains msg if {
	some review in object.get(input, "approvals", [])
	review.decision == "reject"
	msg := sprintf("rejected by %s", [review.by])
}
