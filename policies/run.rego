# Which runs may be submitted. If it isn't checked in, it doesn't run.
package keyward.run

run := object.get(input, "run", {})

deny contains "a run must name a commit (commit_sha)" if {
	object.get(run, "commit_sha", "") == ""
}

deny contains msg if {
	ref := object.get(run, "ref", "")
	not startswith(ref, "refs/heads/")
	msg := sprintf("a run must come from a branch (refs/heads/...); got %q", [ref])
}
