# What a plan may do, judged on `terraform show -json` output.
package keyward.plan

settings := data.keyward.settings

changes := [rc |
	some rc in object.get(object.get(input, "plan", {}), "resource_changes", [])
	rc.change.actions != ["no-op"]
]

# Never destroy stateful resources from a pipeline.
deny contains msg if {
	some rc in changes
	"delete" in rc.change.actions
	rc.type in settings.protected_resource_types
	msg := sprintf("plan deletes protected resource %s (%s)", [rc.address, rc.type])
}

warn contains msg if {
	count(changes) > settings.plan_change_warning_threshold
	msg := sprintf("plan changes %d resources; review it carefully", [count(changes)])
}
