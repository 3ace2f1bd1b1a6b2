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
	is_array(data.keyward.settings.allowed_module_sources)
	every source in module_sources {
		allowed_module(source)
	}
	not too_deep
}

# Every module the configuration calls, three levels deep (`configuration.root_module.module_calls`
# and each called module's own `module_calls`).
root_calls := object.get(object.get(object.get(input.plan, "configuration", {}), "root_module", {}), "module_calls", {})

calls_of(call) := object.get(object.get(call, "module", {}), "module_calls", {})

module_sources contains call.source if {
	some call in root_calls
	is_string(call.source)
}

module_sources contains inner.source if {
	some call in root_calls
	some inner in calls_of(call)
	is_string(inner.source)
}

module_sources contains deepest.source if {
	some call in root_calls
	some inner in calls_of(call)
	some deepest in calls_of(inner)
	is_string(deepest.source)
}

# Deeper calls are not read, so a plan that has them is not shown to be safe.
too_deep if {
	some call in root_calls
	some inner in calls_of(call)
	some deepest in calls_of(inner)
	count(calls_of(deepest)) > 0
}

# Modules in the repository itself are always allowed.
allowed_module(source) if startswith(source, "./")

allowed_module(source) if startswith(source, "../")

# Anything else must start with one of `allowed_module_sources`, compared with the registry's
# short form (`NAMESPACE/NAME/PROVIDER`) written out as `registry.terraform.io/NAMESPACE/…`.
allowed_module(source) if {
	some prefix in data.keyward.settings.allowed_module_sources
	is_string(prefix)
	prefix != ""
	startswith(module_address(source), prefix)
}

module_address(source) := concat("", ["registry.terraform.io/", source]) if {
	count(split(source, "/")) == 3
	not contains(source, ":")
	not startswith(source, ".")
} else := source

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

deny contains msg if {
	some source in module_sources
	not allowed_module(source)
	msg := sprintf("module source %s is not on the allow-list (settings.allowed_module_sources)", [source])
}

deny contains "modules nested more than three levels deep cannot be checked against the allow-list" if too_deep

deny contains "data.json: settings.allowed_module_sources must be a list of module source prefixes" if {
	not is_array(data.keyward.settings.allowed_module_sources)
}

warn contains msg if {
	count(changes) > data.keyward.settings.plan_change_warning_threshold
	msg := sprintf("plan changes %d resources; review it carefully", [count(changes)])
}
