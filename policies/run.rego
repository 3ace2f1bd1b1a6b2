# Which runs may be submitted. If it isn't checked in, it doesn't run.
package keyward.run

run := object.get(input, "run", {})

deny contains "a run must name a commit (commit_sha)" if {
	object.get(run, "commit_sha", "") == ""
}

deny contains "a run must come from a branch (refs/heads/...); this run names no ref" if {
	not run.ref
}

deny contains msg if {
	not startswith(run.ref, "refs/heads/")
	msg := sprintf("a run must come from a branch (refs/heads/...); got '%s'", [run.ref])
}
