{{/* The chart's name, or nameOverride. */}}
{{- define "mini-kubelet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object's name: fullnameOverride, or <release>-<name> (the release name
when it already contains the name). */}}
{{- define "mini-kubelet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "mini-kubelet.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mini-kubelet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mini-kubelet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mini-kubelet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mini-kubelet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: node-agent
{{- end }}

{{- define "mini-kubelet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mini-kubelet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mini-kubelet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret holding the (bootstrap) kubeconfig. */}}
{{- define "mini-kubelet.credentialsSecret" -}}
{{- default (printf "%s-credentials" (include "mini-kubelet.fullname" .)) .Values.credentials.existingSecret }}
{{- end }}

{{/* Whether the chart makes the credentials Secret: no existingSecret, and the inline values of the
mode are given (all of them, or none: a partial set fails). */}}
{{- define "mini-kubelet.makesCredentialsSecret" -}}
{{- $c := .Values.credentials }}
{{- if not $c.existingSecret }}
{{- if eq $c.mode "kubeconfig" }}
{{- if $c.kubeconfig }}true{{ end }}
{{- else if eq $c.mode "bootstrapToken" }}
{{- $given := compact (list $c.apiServer $c.caCert $c.bootstrapToken) }}
{{- if eq (len $given) 3 }}true
{{- else if gt (len $given) 0 }}
{{- fail "credentials.mode bootstrapToken: give all of credentials.apiServer, credentials.caCert and credentials.bootstrapToken (or none of them and a Secret of your own)" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* A unix:// endpoint's socket path. */}}
{{- define "mini-kubelet.socketPath" -}}
{{- if not (hasPrefix "unix:///" .) }}
{{- fail (printf "runtime endpoints must be unix:///path sockets on the host, got %q" .) }}
{{- end }}
{{- trimPrefix "unix://" . }}
{{- end }}

{{/* The KubeletConfiguration the agent reads with --config, as JSON (which the agent reads as it
reads YAML). */}}
{{- define "mini-kubelet.kubeletConfig" -}}
{{- $fixed := dict "apiVersion" "kubelet.config.k8s.io/v1beta1" "kind" "KubeletConfiguration" "staticPodPath" .Values.staticPodPath }}
{{- if eq .Values.runtime.kind "remote" }}
{{- $_ := set $fixed "containerRuntimeEndpoint" .Values.runtime.endpoint }}
{{- end }}
{{- toPrettyJson (merge $fixed (deepCopy .Values.kubeletConfig)) }}
{{- end }}

{{- define "mini-kubelet.podLogsDir" -}}
{{- default "/var/log/pods" .Values.kubeletConfig.podLogsDir }}
{{- end }}

{{/* Where the agent's (bootstrap) kubeconfig is mounted in the container. */}}
{{- define "mini-kubelet.credentialsDir" -}}/etc/mini-kubelet/credentials{{- end }}
