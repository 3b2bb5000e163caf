{{- define "granite-runtime.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "granite-runtime.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "granite-runtime.selectorLabels" -}}
app.kubernetes.io/name: {{ include "granite-runtime.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "granite-runtime.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "granite-runtime.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: granite-ops-kit
{{- end -}}

{{- define "granite-runtime.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end -}}

{{- define "granite-runtime.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "granite-runtime.fullname" .) .Values.serviceAccount.name }}
{{- else -}}
{{ default "default" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{- define "granite-runtime.claimName" -}}
{{- if .Values.model.pvc.existingClaim -}}
{{ .Values.model.pvc.existingClaim }}
{{- else -}}
{{ include "granite-runtime.fullname" . }}-model
{{- end -}}
{{- end -}}

{{/* Security settings shared by every container: restricted Pod Security Standard. */}}
{{- define "granite-runtime.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  capabilities:
    drop: [ALL]
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* HOME, caches and the audit log on writable emptyDirs (the root filesystem is read-only). */}}
{{- define "granite-runtime.env" -}}
- name: HOME
  value: /home/gkit
- name: XDG_CACHE_HOME
  value: /home/gkit/.cache
- name: HF_HOME
  value: /home/gkit/.cache/huggingface
- name: TMPDIR
  value: /tmp
- name: GKIT_ACTOR
  value: {{ printf "k8s:%s/%s" .Release.Namespace (include "granite-runtime.fullname" .) | quote }}
{{- if .Values.audit.databaseUrlSecret.name }}
- name: GKIT_AUDIT_DB
  valueFrom:
    secretKeyRef:
      name: {{ .Values.audit.databaseUrlSecret.name }}
      key: {{ .Values.audit.databaseUrlSecret.key }}
{{- else }}
- name: GKIT_AUDIT_DB
  value: sqlite:////home/gkit/audit.db
{{- end }}
{{- end -}}

{{- define "granite-runtime.baseMounts" -}}
- name: home
  mountPath: /home/gkit
- name: tmp
  mountPath: /tmp
{{- if ne .Values.model.source "baked" }}
- name: model
  mountPath: {{ dir .Values.model.path }}
  readOnly: true
  {{- if and (eq .Values.model.source "pvc") .Values.model.pvc.subPath }}
  subPath: {{ .Values.model.pvc.subPath }}
  {{- end }}
{{- end }}
{{- if include "granite-runtime.trustConfigMap" . }}
- name: trust
  mountPath: /etc/gkit/trust
  readOnly: true
{{- end }}
{{- end -}}

{{/* The ConfigMap mounted at /etc/gkit/trust: one named by the user, or the release's own. */}}
{{- define "granite-runtime.trustConfigMap" -}}
{{- if .Values.verify.trustConfigMap -}}
{{ .Values.verify.trustConfigMap }}
{{- else if .Values.verify.trustFiles -}}
{{ include "granite-runtime.fullname" . }}-trust
{{- end -}}
{{- end }}
