# What a pull request or push does to a stack it touches (docs/vcs.md): `propose` a plan of the
# pull request's head (read-only targets, never applied), `track` the stack's branch with a normal
# run, or neither (ignored). `reasons` says why, whichever it is: users read it on the pull request.
#
# - propose: a pull request `opened`, `synchronize`d (pushed to), `reopened` or `ready_for_review`
#   whose base is the stack's branch and that is not a draft. Not from a fork, unless data.json's
#   `settings.propose_forks` is true: a fork's code would run with the stack's credentials (the
#   broker refuses fork proposals anyway; this reason is what users see).
# - track: a push to `refs/heads/<stack branch>` that does not delete it, unless the stack is
#   labelled `autodeploy=false`.
# - anything else is ignored, with a reason naming the event and action.
#
# Positive evidence, as in credentials.rego: `propose` and `track` hold only when each check holds
# on values of the types the broker sends, so a missing field or one of the wrong type ignores.
package keyward.push

default propose := false

default track := false

proposing_actions := {"opened", "synchronize", "reopened", "ready_for_review"}

# The pull request, when the input has one.
pr := input.pull_request if is_object(input.pull_request)

# "pull_request opened", "push". (Messages use it through concat, not sprintf's %s: rego-cpp, the
# cross-check engine, quotes a joined string there.)
event := concat(" ", [input.event, input.action]) if {
	is_string(input.event)
	is_string(input.action)
} else := input.event if is_string(input.event)

else := "an event of unknown type"

propose if {
	input.event == "pull_request"
	input.action in proposing_actions
	pr.base == input.stack.branch
	pr.draft == false
	fork_allowed
}

fork_allowed if pr.fork == false

fork_allowed if {
	pr.fork == true
	data.keyward.settings.propose_forks == true
}

branch_ref := concat("", ["refs/heads/", input.stack.branch]) if is_string(input.stack.branch)

track if {
	input.event == "push"
	input.push.deleted == false
	input.push.ref == branch_ref
	not autodeploy_off
}

autodeploy_off if input.stack.labels.autodeploy == "false"

reasons contains msg if {
	propose
	msg := sprintf("pull request #%d (%s) into %s: proposed plan of %s", [pr.number, input.action, pr.base, pr.head_sha])
}

reasons contains msg if {
	track
	msg := sprintf("push to %s: tracked run of %s", [input.push.ref, input.push.after])
}

reasons contains msg if {
	not propose
	not track
	some msg in ignored
}

reasons contains msg if {
	not propose
	not track
	count(ignored) == 0
	msg := concat("", [event, ": nothing to do for this stack"])
}

# Why a change is ignored.
ignored contains msg if {
	input.event == "pull_request"
	not input.action in proposing_actions
	msg := concat("", [event, ": only opened, synchronize, reopened and ready_for_review pull requests are planned"])
}

ignored contains msg if {
	input.event == "pull_request"
	input.action in proposing_actions
	pr.base != input.stack.branch
	msg := sprintf("pull request #%d is into %s, not the stack's branch %s", [pr.number, pr.base, input.stack.branch])
}

ignored contains msg if {
	input.event == "pull_request"
	input.action in proposing_actions
	pr.draft == true
	msg := sprintf("pull request #%d is a draft: mark it ready for review to plan it", [pr.number])
}

ignored contains "pull requests from forks are not planned: their code would run with the stack's credentials" if {
	input.event == "pull_request"
	input.action in proposing_actions
	not fork_allowed
}

ignored contains msg if {
	input.event == "push"
	input.push.deleted == true
	msg := sprintf("push deleted %s: nothing to run", [input.push.ref])
}

ignored contains msg if {
	input.event == "push"
	input.push.deleted == false
	input.push.ref != branch_ref
	msg := sprintf("push to %s: not the stack's branch %s", [input.push.ref, input.stack.branch])
}

ignored contains msg if {
	input.event == "push"
	input.push.deleted == false
	input.push.ref == branch_ref
	autodeploy_off
	msg := sprintf("push to %s: the stack is labelled autodeploy=false, so pushes are not run", [input.push.ref])
}
