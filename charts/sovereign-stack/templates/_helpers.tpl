{{/* The chart name. */}}
{{- define "sovereign-stack.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's object name prefix: the release name, with the chart name unless it already holds it. */}}
{{- define "sovereign-stack.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The name of a component's objects; call with (dict "root" $ "component" "gateway"). */}}
{{- define "sovereign-stack.componentName" -}}
{{- printf "%s-%s" (include "sovereign-stack.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select a component's pods; call with (dict "root" $ "component" "gateway"). */}}
{{- define "sovereign-stack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sovereign-stack.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of every object; call with (dict "root" $ "component" "gateway"). */}}
{{- define "sovereign-stack.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sovereign-stack.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: sovereign-stack
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/* The one image every pod runs, always from the in-country mirror. */}}
{{- define "sovereign-stack.image" -}}
{{- printf "%s/%s:%s" .Values.global.imageRegistry .Values.image.repository .Values.image.tag }}
{{- end }}

{{/* The model registry's in-cluster address; fully qualified, because model servers run in other namespaces. */}}
{{- define "sovereign-stack.registryUri" -}}
{{- printf "http://%s.%s.svc:%d" (include "sovereign-stack.componentName" (dict "root" . "component" "mlflow")) .Release.Namespace (int .Values.mlflow.port) }}
{{- end }}

{{/*
Pod spec fields every pod shares: its ServiceAccount, the pull secrets, the non-root security context and the
residency node labels from the policy, which values can add to but never override.
Call with (dict "root" $ "component" "gateway").
*/}}
{{- define "sovereign-stack.podSpec" -}}
{{- $residency := .root.Files.Get "files/generated/residency-node-labels.yaml" | fromYaml -}}
serviceAccountName: {{ include "sovereign-stack.componentName" . }}
{{- with .root.Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .root.Values.podSecurityContext.runAsUser }}
  runAsGroup: {{ .root.Values.podSecurityContext.runAsGroup }}
  fsGroup: {{ .root.Values.podSecurityContext.fsGroup }}
  seccompProfile:
    type: RuntimeDefault
nodeSelector:
  {{- merge $residency .root.Values.nodeSelector | toYaml | nindent 2 }}
{{- with .root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The container fields every container shares: image, hardened security context. Call with the root. */}}
{{- define "sovereign-stack.container" -}}
image: {{ include "sovereign-stack.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  runAsNonRoot: true
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities:
    drop: ["ALL"]
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{/* OpenBao: the address, and the Kubernetes auth role the pod logs in as. Call with (dict "root" $ "role" "..."). */}}
{{- define "sovereign-stack.openbaoEnv" -}}
- name: VAULT_ADDR
  value: {{ .root.Values.openbao.address | quote }}
- name: VAULT_K8S_ROLE
  value: {{ .role | quote }}
- name: VAULT_K8S_MOUNT
  value: {{ .root.Values.openbao.kubernetesAuth.mountPath | quote }}
{{- end }}

{{/* A component's ServiceAccount; call with (dict "root" $ "component" "gateway"). */}}
{{- define "sovereign-stack.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "sovereign-stack.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "sovereign-stack.labels" . | nindent 4 }}
{{- end }}

{{/*
A ClusterIP Service in front of a component's pods, named after the component plus an optional "nameSuffix".
Call with (dict "root" $ "component" "gateway" "port" 8000 "portName" "http").
*/}}
{{- define "sovereign-stack.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ printf "%s%s" (include "sovereign-stack.componentName" .) (.nameSuffix | default "") | trunc 63 }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "sovereign-stack.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "sovereign-stack.selectorLabels" . | nindent 4 }}
  ports:
    - name: {{ .portName }}
      port: {{ .port }}
      targetPort: {{ .portName }}
      protocol: TCP
{{- end }}

{{/*
Objects generated from the policy (files/generated/NAME), each with the release's labels added.
Call with (dict "root" $ "component" "network-policy" "file" "network-policies.yaml" "namespaced" true).
*/}}
{{- define "sovereign-stack.generatedObjects" -}}
{{- $labels := include "sovereign-stack.labels" . | fromYaml }}
{{- range (printf "files/generated/%s" .file | .root.Files.Get | fromYamlArray) }}
{{- $_ := set .metadata "labels" (merge (dict) $labels (.metadata.labels | default dict)) }}
{{- if $.namespaced }}
{{- $_ := set .metadata "namespace" $.root.Release.Namespace }}
{{- end }}
---
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Writable scratch space; every root filesystem is read-only. */}}
{{- define "sovereign-stack.tmpVolume" -}}
- name: tmp
  emptyDir: {}
{{- end }}
