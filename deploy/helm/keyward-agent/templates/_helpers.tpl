{{/* Names and labels shared by the agent chart's templates. */}}
{{- define "keyward-agent.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "keyward-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "keyward-agent.labels" -}}
{{ include "keyward-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The container securityContext each isolation needs (values.yaml `isolation`). */}}
{{- define "keyward-agent.securityContext" -}}
{{- if eq .Values.isolation "sandbox" -}}
# The agent builds each job's sandbox itself: user, mount, PID and network namespaces, a
# writable cgroup filesystem for the job's limits, an unmasked /proc to mount inside it, and
# uids of its own per job. A container gets these only privileged; jobs drop every capability.
runAsUser: 0
runAsNonRoot: false
privileged: true
allowPrivilegeEscalation: true
{{- else if eq .Values.isolation "process" -}}
runAsUser: 65532
runAsGroup: 65532
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- else -}}
{{- fail "isolation must be sandbox or process" -}}
{{- end -}}
{{- end -}}

{{/* Enrolling needs no privilege: the agent's own user (root with the sandbox, which owns the
volume's files), without capabilities. */}}
{{- define "keyward-agent.joinSecurityContext" -}}
{{- if eq .Values.isolation "sandbox" -}}
runAsUser: 0
runAsNonRoot: false
{{- else -}}
runAsUser: 65532
runAsGroup: 65532
runAsNonRoot: true
{{- end }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
