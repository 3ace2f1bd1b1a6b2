# What a plan may do, judged on `terraform show -json` output.
#
# Positive evidence, as in credentials.rego: `allow` holds only when every resource change is
# shown to be safe; a change, or a setting in data.json, of an unexpected shape leaves it false.
# `deny` only explains.
package keyward.plan

default allow := false

allow if {
	is_object(input.plan)
	is_array(data.keyward.settings.protected_resource_types)
	every rc in object.get(input.plan, "resource_changes", []) {
		keeps_protected_resources(rc)
	}
}

# Never destroy stateful resources from a pipeline: a change either deletes nothing, or touches a
# type that is not protected.
keeps_protected_resources(rc) if {
	is_array(rc.change.actions)
	every action in rc.change.actions {
		action != "delete"
	}
}

keeps_protected_resources(rc) if {
	is_string(rc.type)
	every protected in data.keyward.settings.protected_resource_types {
		rc.type != protected
	}
}

changes := [rc |
	some rc in object.get(object.get(input, "plan", {}), "resource_changes", [])
	rc.change.actions != ["no-op"]
]

deny contains msg if {
	some rc in object.get(object.get(input, "plan", {}), "resource_changes", [])
	not keeps_protected_resources(rc)
	msg := sprintf("plan deletes protected resource %s (%s)", [rc.address, rc.type])
}

deny contains "the input's plan is not an object (terraform show -json of the saved plan)" if not is_object(input.plan)

deny contains "data.json: settings.protected_resource_types must be a list of resource types" if {
	not is_array(data.keyward.settings.protected_resource_types)
}

warn contains msg if {
	count(changes) > data.keyward.settings.plan_change_warning_threshold
	msg := sprintf("plan changes %d resources; review it carefully", [count(changes)])
}
