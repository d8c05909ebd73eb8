{{/* The selector: fixed, as tenant etcd NetworkPolicies admit the operator's pods by it. */}}
{{- define "kok.selectorLabels" -}}
app.kubernetes.io/name: kok-operator
{{- end }}

{{/* Standard labels on every object of the chart. */}}
{{- define "kok.labels" -}}
{{ include "kok.selectorLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kok
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "kok.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The claim mounted as the backups directory. */}}
{{- define "kok.backupsClaim" -}}
{{- .Values.backups.persistentVolumeClaim.existingClaim | default "kok-backups" -}}
{{- end }}
