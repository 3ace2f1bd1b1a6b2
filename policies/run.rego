# Which runs may be submitted. If it isn't checked in, it doesn't run.
#
# Positive evidence, as in credentials.rego: `allow` holds only when the run names a commit on a
# branch; a field that is missing or of the wrong type leaves it false. `deny` only explains.
package keyward.run

default allow := false

allow if {
	names_a_commit
	on_a_branch
}

names_a_commit if {
	is_string(input.run.commit_sha)
	input.run.commit_sha != ""
}

on_a_branch if startswith(input.run.ref, "refs/heads/")

deny contains "a run must name a commit (commit_sha)" if not names_a_commit

deny contains "a run must come from a branch (refs/heads/...); this run names no ref" if not input.run.ref

deny contains msg if {
	not on_a_branch
	msg := sprintf("a run must come from a branch (refs/heads/...); got '%s'", [input.run.ref])
}
