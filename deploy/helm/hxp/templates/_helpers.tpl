{{/* The chart's name. */}}
{{- define "hxp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart> (or fullnameOverride), the prefix of every object's name. */}}
{{- define "hxp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's object name: <fullname>-<component> as a DNS label (dots of model names become dashes). */}}
{{- define "hxp.componentName" -}}
{{- printf "%s-%s" (include "hxp.fullname" .root) (.name | replace "." "-") | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The labels of every object. */}}
{{- define "hxp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "hxp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hxp
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The labels that select the chart's pods. */}}
{{- define "hxp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hxp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The labels selecting one engine's pods. */}}
{{- define "hxp.engineSelectorLabels" -}}
{{ include "hxp.selectorLabels" .root }}
app.kubernetes.io/component: engine
hxp/engine: {{ .name | quote }}
{{- end -}}

{{/* The labels selecting the gateway's pods. */}}
{{- define "hxp.gatewaySelectorLabels" -}}
{{ include "hxp.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end -}}

{{/* The ServiceAccount the pods run as. */}}
{{- define "hxp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "hxp.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret with the gateway's settings that are secrets. */}}
{{- define "hxp.gatewaySecretName" -}}
{{- default (include "hxp.componentName" (dict "root" . "name" "gateway")) .Values.gateway.existingSecret -}}
{{- end -}}

{{/* The Secret with the in-chart stores' passwords. */}}
{{- define "hxp.storesSecretName" -}}
{{- include "hxp.componentName" (dict "root" . "name" "stores") -}}
{{- end -}}

{{/* A container security context without privileges (the stores' and the gateway's). */}}
{{- define "hxp.restrictedContainer" -}}
allowPrivilegeEscalation: false
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* The JSON {model: [engine base URL]} the gateway reads as HXP_BACKENDS. */}}
{{- define "hxp.backends" -}}
{{- $backends := dict -}}
{{- range $key, $engine := .Values.engines -}}
{{- $url := printf "http://%s:%v/v1" (include "hxp.componentName" (dict "root" $ "name" $key)) $engine.port -}}
{{- range $engine.models -}}
{{- if $.Values.inferencePool.enabled -}}
{{- $_ := set $backends . (list (printf "%s%s/%s/v1" (trimSuffix "/" $.Values.inferencePool.gatewayUrl) $.Values.inferencePool.pathPrefix .)) -}}
{{- else -}}
{{- $_ := set $backends . (list $url) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $backends -}}
{{- end -}}
