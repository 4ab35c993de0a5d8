{{/* Labels of every CRD: the standard app.kubernetes.io set. */}}
{{- define "sovereign-stack-crds.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: crds
app.kubernetes.io/part-of: sovereign-stack
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
