# What a plan job's security scan must show before `init` (docs/scans.md).
#
# Two modes, chosen per stack by its `scan` label:
# - warn-only, the default: failed checks are warnings on the run, never a refusal, so a team can
#   turn scanning on without breaking its pipelines and fix what it finds first;
# - enforce, for stacks labelled `scan=enforce`: any failed check refuses the run before `init`,
#   naming the checks; so do files the scanner could not parse (they were not checked).
# Checks in data.json's `settings.scan_ignored_checks` are neither warned about nor enforced.
#
# Positive evidence, as in credentials.rego: `allow` holds only when every report has the shape
# the broker sends; `deny` explains (and refuses).
package keyward.scan

default allow := false

allow if {
	is_object(input.scans)
	count(input.scans) > 0
	every _, report in input.scans {
		well_formed(report)
	}
	is_array(ignored_checks)
}

well_formed(report) if {
	is_number(report.failed)
	is_number(report.parsing_errors)
	is_array(report.failed_checks)
}

ignored_checks := object.get(data.keyward.settings, "scan_ignored_checks", [])

enforcing if input.stack.labels.scan == "enforce"

# The reports; none when `input.scans` is not an object.
scans := input.scans if is_object(input.scans)

else := {}

# "CKV_AWS_145 on aws_s3_bucket.logs (/storage/bucket.tf:1)", per scanner, sorted. (Messages join
# them with concat, not sprintf's %s: rego-cpp, the cross-check engine, quotes a joined string.)
failures(report) := sort([line |
	some check in report.failed_checks
	not check.id in ignored_checks
	line := sprintf("%s on %s (%s:%d)", [check.id, check.resource, check.file, check.lines[0]])
])

# Failed checks the report counts but does not list (it lists at most 500).
unlisted(report) := report.failed - count(report.failed_checks)

deny contains msg if {
	enforcing
	some name, report in scans
	found := failures(report)
	count(found) > 0
	msg := concat("", [sprintf("%s: %d failed check(s), and stacks labelled scan=enforce may have none: ", [name, count(found)]), concat("; ", found)])
}

deny contains msg if {
	enforcing
	some name, report in scans
	unlisted(report) > 0
	msg := sprintf("%s: %d more failed check(s) not listed in the report", [name, unlisted(report)])
}

deny contains msg if {
	enforcing
	some name, report in scans
	report.parsing_errors > 0
	msg := sprintf("%s could not parse %d file(s), so did not check them (scan=enforce)", [name, report.parsing_errors])
}

deny contains "no scan report: a scanned stack's plan job must send one" if not allow_shape

allow_shape if {
	is_object(input.scans)
	count(input.scans) > 0
}

warn contains msg if {
	not enforcing
	some name, report in scans
	found := failures(report)
	count(found) > 0
	msg := concat("", [sprintf("%s: %d failed check(s) (warn-only; label the stack scan=enforce to refuse them): ", [name, count(found)]), concat("; ", found)])
}

warn contains msg if {
	not enforcing
	some name, report in scans
	report.parsing_errors > 0
	msg := sprintf("%s could not parse %d file(s), so did not check them", [name, report.parsing_errors])
}
