{{/*
The release's full name: the release name when it contains the chart's name (a release called
defender-operator gives the same object names as the kustomize base), else "<release>-<chart>".
*/}}
{{- define "defender-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "defender-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "defender-operator.labels" -}}
{{ include "defender-operator.selectorLabels" . }}
app.kubernetes.io/part-of: {{ .Chart.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "defender-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "defender-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "defender-operator.leaseName" -}}
{{- default (include "defender-operator.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{- define "defender-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Exactly the verbs the operator uses, no wildcards: the rules of deploy/base/rbac.yaml, held by the
ClusterRole (every namespace) or by a Role in `watchNamespace`.
*/}}
{{- define "defender-operator.rules" -}}
- apiGroups: ["detect.dev"]
  resources: ["defenderpartners", "probefindings"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["detect.dev"]
  resources: ["defenderpartners/status", "probefindings/status"]
  verbs: ["patch"]
# Credentials: read-only. The watch is metadata-only; values are read with get.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Workload identity: a short-lived token of the ServiceAccount a partner names, sent to Entra as
# the client assertion. Creating tokens only; ServiceAccounts are neither read nor changed.
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  verbs: ["create"]
{{- end -}}

{{/*
The ClusterRole's rules beyond those: ClusterDefenderPartners, and the namespaces' labels their
namespaceSelector reads (metadata only). A namespaced install has no cluster-wide partners.
*/}}
{{- define "defender-operator.clusterRules" -}}
- apiGroups: ["detect.dev"]
  resources: ["clusterdefenderpartners"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["detect.dev"]
  resources: ["clusterdefenderpartners/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end -}}
